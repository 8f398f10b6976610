"""Numbers the tests derive from FakeQuantize parameters to compare with POT's recorded ones."""

from __future__ import annotations

import numpy as np

from torchpqt.quant.params import FQParams


def scale_zero_point(p: FQParams) -> tuple[np.ndarray, np.ndarray]:
    """Input-side ``scale = (ih - il) / (L - 1)`` and ``zero_point = -il / scale`` (float64)."""
    scale = (p.input_high - p.input_low) / (p.levels - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        zero_point = -p.input_low / scale
    return scale, zero_point
