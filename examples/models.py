"""Small example models: fixed, seeded ones for the CLI examples and tests, and the digits CNN that
examples/qat.py trains (the test suite builds the same one).

Use the seeded ones from a config file as ``"model": "../models.py:small_cnn"`` (relative to the config's folder)
or, from the repository root, as ``"examples.models:small_cnn"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SMALL_CNN_INPUT_SHAPE", "DigitsCNN", "small_cnn", "two_input_mlp"]

SMALL_CNN_INPUT_SHAPE = (1, 3, 32, 32)


def _seeded(build, seed: int) -> nn.Module:
    # fork_rng: fixed weights without touching the caller's global RNG state
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):  # non-trivial statistics, so BN folding matters
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.data.uniform_(0.8, 1.2)
                module.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def small_cnn(num_classes: int = 10, seed: int = 0) -> nn.Module:
    """Conv-BN-ReLU, strided conv-ReLU, conv-ReLU, global pooling, linear; input (1, 3, 32, 32)."""
    return _seeded(lambda: nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    ), seed)


class _TwoInputMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(4, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.a(x) + self.b(y)))


def two_input_mlp(seed: int = 0) -> nn.Module:
    """Two inputs ``x`` (1, 8) and ``y`` (1, 4): for .npz data sources with one array per input."""
    return _seeded(_TwoInputMLP, seed)


class DigitsCNN(nn.Module):
    """A CNN for sklearn's 8×8 digits, input (N, 1, 8, 8): conv-BN-ReLU ×2, max pool, depthwise conv with a
    residual add, global pooling, linear to 10 classes. Its weights are torch's default init from the global
    RNG, created in the order conv1, bn1, conv2, bn2, dw, fc (seed before building it for fixed weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.dw(x)) + x
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
