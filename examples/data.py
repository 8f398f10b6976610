"""Deterministic example calibration data: seeded random samples, generated on the fly (no binaries)."""

from __future__ import annotations

import torch

__all__ = ["calibration_data"]


def calibration_data(count: int = 16, shape: tuple[int, ...] = (1, 3, 32, 32), seed: int = 0) -> list[torch.Tensor]:
    """``count`` tensors of ``shape`` (batch 1 each), image-like: smooth positive values in [0, 1).

    A private generator keeps the data identical across runs and independent of the global RNG.
    """
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand((count, *shape), generator=generator)
    # A per-sample brightness makes the activation ranges differ between samples, as real images do.
    gain = torch.rand((count,) + (1,) * len(shape), generator=generator) * 0.5 + 0.5
    return list((base * gain).unbind(0))
