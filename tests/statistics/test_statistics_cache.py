"""The statistics cache: calibrate once, re-quantize other configs from the file, bit for bit, no forward pass."""

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchpqt
from torchpqt import FakeQuantize, TorchPQTError

FORWARDS = [0]


@torch.library.custom_op("torchpqt_cache_test::count", mutates_args=())
def _count(x: torch.Tensor) -> torch.Tensor:
    FORWARDS[0] += 1  # runs once per forward of the captured model: a real count of calibration passes' batches
    return x.clone()


@_count.register_fake
def _(x):
    return torch.empty_like(x)


class Counted(nn.Module):
    """conv 3x3 -> pointwise conv (a channel alignment pair: two passes with alignment_pass separate) -> relu ->
    conv -> relu -> pool -> linear; its first op counts forwards."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.pw = nn.Conv2d(8, 8, 1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.4)

    def forward(self, x):
        x = torch.ops.torchpqt_cache_test.count(x)
        x = F.relu(self.pw(self.c1(x)))
        x = F.relu(self.c2(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _data(seed=0, n=12):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, 8, 8, generator=g) * 2 for _ in range(n)]


BASE = {"stat_subset_size": 12}
OTHERS = [
    {**BASE, "preset": "mixed"},  # asymmetric activations: other min/max reductions, recorded for free
    {**BASE, "activations": {"bits": 7, "range_estimator": {"max": {"aggregator": "max"}}}},
    {**BASE, "weights": {"mode": "asymmetric"}, "ignored": {"scope": ["c2"]}},
]


def _fq_params(qm):
    return {name: (m.levels, *(t.detach().clone() for t in m.ranges()))
            for name, m in qm.named_modules() if isinstance(m, FakeQuantize)}


def _assert_bitwise_equal(a, b):
    fa, fb = _fq_params(a), _fq_params(b)
    assert fa.keys() == fb.keys() and fa
    for name in fa:
        assert fa[name][0] == fb[name][0], name
        for x, y in zip(fa[name][1:], fb[name][1:]):
            assert x.dtype == y.dtype and torch.equal(x, y), name
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert a.torchpqt_run["statistics_hash"] == b.torchpqt_run["statistics_hash"]


@pytest.mark.parametrize("alignment_pass", ["shared", "separate"])
def test_requantize_from_cache_is_bitwise_a_fresh_run_without_a_forward(tmp_path, alignment_pass):
    model, data, path = Counted().eval(), _data(), tmp_path / "stats.pt"
    base = {**BASE, "alignment_pass": alignment_pass}
    passes = 1 if alignment_pass == "shared" else 2  # separate: the second pass (after alignment) is cached too
    schedule = torchpqt.prepare(model, data[0], base).torchpqt_schedule
    assert schedule.passes == passes
    FORWARDS[0] = 0
    first = torchpqt.quantize(model, data, base, statistics_cache=path)
    assert FORWARDS[0] == passes * len(data) and path.exists()
    _assert_bitwise_equal(first, torchpqt.quantize(model, data, base))
    for config in OTHERS:
        config = {**config, "alignment_pass": alignment_pass}
        FORWARDS[0] = 0
        cached = torchpqt.quantize(model, data, config, statistics_cache=path)
        assert FORWARDS[0] == 0, config  # no forward over the calibration data
        fresh = torchpqt.quantize(model, data, config)
        assert FORWARDS[0] > 0
        _assert_bitwise_equal(cached, fresh)
        assert _differs(cached, first), config  # another config: other ranges, not the first model again


def _differs(a, b) -> bool:
    fa, fb = _fq_params(a), _fq_params(b)
    return fa.keys() != fb.keys() or any(x[0] != y[0] or any(not torch.equal(u, v) for u, v in zip(x[1:], y[1:]))
                                         for x, y in zip(fa.values(), fb.values()))


def test_a_new_reduction_observes_only_the_missing_tensors_then_is_cached(tmp_path):
    model, data, path = Counted().eval(), _data(), tmp_path / "stats.pt"
    torchpqt.quantize(model, data, BASE, statistics_cache=path)
    quantile = {**BASE, "activations": {"range_estimator": {"max": {"type": "quantile", "outlier_prob": 0.01}}}}
    FORWARDS[0] = 0
    assert torchpqt.prepare(model, data[0], quantile).torchpqt_schedule.passes == 2  # a per-tensor quantile of
    # the aligned tensor cannot be derived: POT's second pass on the aligned model
    cached = torchpqt.quantize(model, data, quantile, statistics_cache=path)
    assert FORWARDS[0] == len(data)  # one pass: the aligned model's; the alignment pass came from the file
    _assert_bitwise_equal(cached, torchpqt.quantize(model, data, quantile))
    FORWARDS[0] = 0
    again = torchpqt.quantize(model, data, quantile, statistics_cache=path)
    assert FORWARDS[0] == 0
    _assert_bitwise_equal(again, cached)
    FORWARDS[0] = 0
    torchpqt.quantize(model, data, BASE, statistics_cache=path)  # the union: the first config still hits
    assert FORWARDS[0] == 0


@pytest.mark.parametrize("change", ["weights", "data", "batching"])
def test_a_stale_cache_is_not_used_and_says_so_once(tmp_path, caplog, change):
    model, data, path = Counted().eval(), _data(), tmp_path / "stats.pt"
    torchpqt.quantize(model, data, BASE, statistics_cache=path)
    config = BASE
    if change == "weights":
        with torch.no_grad():
            model.c2.weight[0, 0, 0, 0] += 1e-3
    elif change == "data":
        data = data[:-1] + [data[-1] + 1e-4]
    else:
        config = {**BASE, "stat_batch_size": 2}
    FORWARDS[0] = 0
    with caplog.at_level(logging.INFO, logger="torchpqt"):
        cached = torchpqt.quantize(model, data, config, statistics_cache=path)
    assert FORWARDS[0] > 0
    stale = [r for r in caplog.records if "not used" in r.getMessage()]
    assert len(stale) == 1 and r"statistics cache" in stale[0].getMessage()
    _assert_bitwise_equal(cached, torchpqt.quantize(model, data, config))
    FORWARDS[0] = 0
    torchpqt.quantize(model, data, config, statistics_cache=path)  # overwritten: the new run's cache
    assert FORWARDS[0] == 0


def test_a_corrupt_cache_file_is_a_clear_error(tmp_path):
    model, data, path = Counted().eval(), _data(n=4), tmp_path / "stats.pt"
    torchpqt.quantize(model, data, {"stat_subset_size": 4}, statistics_cache=path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(TorchPQTError, match="statistics cache .* cannot be read.*delete it"):
        torchpqt.quantize(model, data, {"stat_subset_size": 4}, statistics_cache=path)
    other = tmp_path / "other.pt"
    torch.save({"something": 1}, other)
    with pytest.raises(TorchPQTError, match="not a torchpqt statistics cache"):
        torchpqt.quantize(model, data, {"stat_subset_size": 4}, statistics_cache=other)


def test_the_cache_needs_data_it_can_read_twice(tmp_path):
    with pytest.raises(TorchPQTError, match="read twice"):
        torchpqt.quantize(Counted().eval(), iter(_data(n=2)), BASE, statistics_cache=tmp_path / "s.pt")


class _Reshuffled(list):
    """Every read gives other values (as a shuffling DataLoader or random augmentation would)."""

    reads = 0

    def __iter__(self):
        type(self).reads += 1
        return iter([x + type(self).reads for x in list.__iter__(self)])


def test_data_that_changes_between_reads_is_refused_not_cached(tmp_path):
    path = tmp_path / "s.pt"
    with pytest.raises(TorchPQTError, match="other samples on this read"):
        torchpqt.quantize(Counted().eval(), _Reshuffled(_data(n=3)), {"stat_subset_size": 3}, statistics_cache=path)
    assert not path.exists()
