"""torchpqt.distributed without spawning: the opt-in/opt-out switch, and the helpers on a group of one."""

from __future__ import annotations

import models
import pytest
import torch
import torch.distributed as dist

import torchpqt
from torchpqt import distributed as tdist


def test_distributed_true_without_a_group_is_a_clear_error():
    assert not dist.is_initialized()
    assert tdist.enabled(None) is False and tdist.enabled(False) is False
    with pytest.raises(torchpqt.TorchPQTError, match="init_process_group"):
        torchpqt.quantize(models.build("tiny_cnn"), models.calibration_data("tiny_cnn", 2), distributed=True)


def test_shard_sizes_count_samples():
    two_rows = [torch.zeros(2, 3), torch.zeros(1, 3)]
    assert tdist.shard_size(two_rows) == 3
    assert tdist.shard_size(two_rows, items=True) == 2
    loader = torch.utils.data.DataLoader(torch.zeros(10, 3), batch_size=4, drop_last=True)
    assert tdist.shard_size(loader) == 8
    assert tdist.shard_size(loader, items=True) is None  # not indexable: no shuffle_data over it
    assert tdist.shard_size(iter(two_rows)) is None


def test_a_group_of_one_is_a_single_process(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        assert tdist.enabled(None) is False  # one rank: nothing to shard
        data = models.calibration_data("tiny_cnn", 3)
        prepared = torchpqt.prepare(models.build("tiny_cnn"), data[0])
        with torch.no_grad():
            for x in data:
                prepared(x)
        store = torchpqt.collect_statistics(prepared)
        merged = tdist.all_gather_statistics(store)
        assert merged.keys() == store.keys()
        for key in store:
            for name, value in store[key].items():
                assert torch.equal(value, merged[key][name]) if isinstance(value, torch.Tensor) else \
                    value == merged[key][name]
        a = torchpqt.convert(prepared, distributed=True)
        b = torchpqt.convert(prepared, distributed=False)
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    finally:
        dist.destroy_process_group()
