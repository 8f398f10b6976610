"""Model inputs: one normalization for capture, calibration, export and the CLI; both positional and keyword
inputs at once; the progress bar's total in samples."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchpqt
from torchpqt.calibration import calibration_batches, expected_samples
from torchpqt.config import load_config
from torchpqt.errors import ExportError
from torchpqt.inputs import ModelInputs, split_inputs


def test_split_inputs():
    x, y = torch.ones(1), torch.zeros(1)
    assert split_inputs(x) == ((x,), {})
    assert split_inputs([x, y]) == ((x, y), {})
    assert split_inputs({"a": x}) == ((), {"a": x})
    assert split_inputs(ModelInputs((x,), {"a": y})) == ((x,), {"a": y})
    with pytest.raises(ExportError, match="example_inputs must be a tensor"):
        split_inputs("x", error=ExportError, where="example_inputs")


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x, *, scale):
        return self.conv(x) * scale


def test_positional_and_keyword_inputs_together():
    model = Scaled().eval()
    g = torch.Generator().manual_seed(0)
    items = [ModelInputs((torch.randn(2, 3, 6, 6, generator=g),), {"scale": torch.rand(2, 1, 1, 1, generator=g)})
             for _ in range(3)]
    batches = list(calibration_batches(items, load_config({"stat_batch_size": 3})))
    assert [args[0].shape[0] for args, kwargs in batches] == [3, 3]
    assert all(kwargs["scale"].shape[0] == 3 for _, kwargs in batches)
    # the first batch is the example: its keyword input is kept, so capture sees forward(x, scale=...)
    q = torchpqt.quantize(model, items, {"stat_batch_size": 3}, progress=False)
    assert len([n for n in q.graph.nodes if n.op == "placeholder"]) == 2
    x, s = items[0].args[0], items[0].kwargs["scale"] / 4  # inside the scale's FakeQuantize range
    with torch.no_grad():
        want, got = model(x, scale=s), q(x, scale=s)
        assert not torch.equal(q(x, scale=s / 2), got)
    assert (got - want).abs().mean() < 0.1 * want.abs().mean()


def test_progress_total_counts_samples_not_items():
    samples = TensorDataset(torch.randn(10, 3))
    cfg, capped = load_config({}), load_config({"stat_subset_size": 6})
    assert expected_samples(DataLoader(samples, batch_size=4), cfg) == 10  # 3 batches, 10 samples
    assert expected_samples(DataLoader(samples, batch_size=4), capped) == 6
    assert expected_samples([torch.randn(4, 3)] * 3, cfg) == 12
    assert expected_samples([(torch.randn(2, 3), 0)] * 3, cfg, transform_fn=lambda item: item[0]) == 6
    assert expected_samples(iter([torch.randn(4, 3)]), cfg) is None
    assert expected_samples(iter([torch.randn(4, 3)]), capped) == 6
