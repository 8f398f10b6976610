"""Small hand-made models and statistics shared by the bias-algorithm tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from torchpqt.algorithms.layers import layer_of
from torchpqt.graph.capture import capture

GOLDEN = json.loads((Path(__file__).parents[1] / "data" / "golden_ranges.json").read_text())["end_to_end_tiny_cnn"]


def spec_tiny_cnn():
    """Spec §13.3's end-to-end recipe (golden_ranges.json, end_to_end_tiny_cnn): Conv3x3(pad 1) -> ReLU ->
    Conv1x1, and its 10 calibration samples."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((4, 3, 3, 3)) * 0.5).astype(np.float32)
    b1 = (rng.standard_normal((1, 4, 1, 1)) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((2, 4, 1, 1)) * 0.5).astype(np.float32)
    b2 = (rng.standard_normal((1, 2, 1, 1)) * 0.1).astype(np.float32)
    samples = [(rng.standard_normal((3, 8, 8)) * 2 + 0.3).astype(np.float32) for _ in range(10)]
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        for conv, w, b in ((model[0], w1, b1), (model[2], w2, b2)):
            conv.weight.copy_(torch.from_numpy(w))
            conv.bias.copy_(torch.from_numpy(b).flatten())
    return model.eval(), [torch.from_numpy(s)[None] for s in samples]


def channel_means(t: torch.Tensor, axis: int = 1) -> np.ndarray:
    """Mean over samples of the per-sample channel means (POT mean_per_channel + mean), in float64."""
    t = t.detach().double().movedim(axis % t.dim(), 1)
    return t.reshape(t.shape[0], t.shape[1], -1).mean(2).mean(0).numpy()


def layers(gm) -> list:
    return [layer for n in gm.graph.nodes if (layer := layer_of(gm, n)) is not None]


def captured(model: nn.Module, x: torch.Tensor):
    """The captured graph and its bias layers, in graph order."""
    gm = capture(model, x)
    return gm, layers(gm)


def min_max_only(model: nn.Module, data, config=None):
    """``torchpqt.quantize`` with MinMaxQuantization alone (no channel alignment, no bias correction): the
    converted model the bias algorithms start from, for testing them one at a time."""
    from unittest import mock

    import torchpqt
    from torchpqt.algorithms import min_max, pipeline

    with mock.patch.object(pipeline, "PIPELINE", (min_max.ALGORITHM,)):
        return torchpqt.quantize(model, data, config, progress=False)
