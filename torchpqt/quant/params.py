"""Statistics + spec -> FakeQuantize parameters (spec §4.2-§4.7).

Pure NumPy float64 functions, no torch modules, reproducing POT's
``algorithms/quantization/fake_quantize.py`` and ``minmax/algorithm.py::fill_fq_range``.
Shapes: a per-tensor FakeQuantize has 0-d parameters, a per-channel one ``(C,)``; the caller
reshapes them for broadcasting (channel axis 0, 1 for ConvTranspose weights, 1 for activations).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ..errors import ConfigError
from .spec import QuantSpec

__all__ = [
    "FQParams",
    "asymmetric_range",
    "fake_quantize_params",
    "fix_zero_filters_asymmetric",
    "fix_zero_filters_symmetric",
    "symmetric_range",
    "tune_range",
    "unify_params",
]

# POT: fix_zero_filters_symmetric floor, and fix_zero_filters_asymmetric's `8 * 10e-5`.
_SYM_FLOOR = 8e-5
_SYM_RELATIVE = 0.01
_ASYM_MIN_RANGE = 8 * 10e-5


@dataclass(frozen=True, eq=False)
class FQParams:
    """Parameters of one OpenVINO FakeQuantize.

    Attributes:
        levels: number of quantization levels L.
        input_low, input_high, output_low, output_high: float64 arrays of shape ``()`` (per
            tensor) or ``(C,)`` (per channel).
    """

    levels: int
    input_low: np.ndarray
    input_high: np.ndarray
    output_low: np.ndarray
    output_high: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", int(self.levels))
        names = ("input_low", "input_high", "output_low", "output_high")
        for name in names:
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        shapes = {getattr(self, n).shape for n in names}
        if len(shapes) != 1 or len(next(iter(shapes))) > 1:
            raise ValueError(f"FQParams ranges must share one shape, () or (C,); got {sorted(shapes)}")

    def __repr__(self) -> str:
        return (
            f"FQParams(levels={self.levels}, input_low={self.input_low}, input_high={self.input_high}, "
            f"output_low={self.output_low}, output_high={self.output_high})"
        )


def _f64(x: ArrayLike) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def fix_zero_filters_symmetric(max_stat: ArrayLike) -> np.ndarray:
    """Floor each channel's range at ``max(8e-5, 1% of the largest channel)``.

    POT: fake_quantize.py::fix_zero_filters_symmetric.
    """
    m = _f64(max_stat)
    return np.maximum(np.maximum(_SYM_FLOOR, _SYM_RELATIVE * np.max(m)), m)


def fix_zero_filters_asymmetric(min_stat: ArrayLike, max_stat: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Widen ranges of at most 8e-4 by 8e-4 on both sides; scalars become shape ``(1,)``.

    POT: fake_quantize.py::fix_zero_filters_asymmetric (its eps=1e-8 branch is a no-op for
    positive ranges, so it is left out). Note POT's argument order is (max, min).

    Returns:
        ``(min, max)``.
    """
    mn, mx = _f64(min_stat), _f64(max_stat)
    ranges = np.atleast_1d(mx - mn)
    # `not (r > t)` rather than `r <= t`: POT widens NaN ranges too.
    corrections = np.where(ranges > _ASYM_MIN_RANGE, 0.0, _ASYM_MIN_RANGE)
    return mn - corrections, mx + corrections


def tune_range(a: ArrayLike, b: ArrayLike, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Move one border of ``[a, b]`` (``a <= 0 <= b``) so that zero falls on an integer code.

    The zero point is rounded half to even (``np.round``) and the wider of the two candidate
    ranges is kept, so ``[a, b]`` is always contained in the result.
    POT: fake_quantize.py::tune_range; it uses ``2**bits - 1`` steps, not ``levels - 1``.
    """
    a, b = _f64(a), _f64(b)
    level_high = 2.0**bits - 1
    # Both branches are evaluated by np.where; a zero-width range gives NaN and is kept as is.
    with np.errstate(invalid="ignore", divide="ignore"):
        zero_code = np.round(-a * (level_high / (b - a)))
        ra = np.where(zero_code < level_high, zero_code / (zero_code - level_high) * b, a)
        rb = np.where(zero_code > 0.0, (zero_code - level_high) / zero_code * a, b)
    keep_b = (b - ra) > (rb - a)
    return np.where(keep_b, ra, a), np.where(keep_b, b, rb)


def symmetric_range(
    min_stat: ArrayLike | None, max_stat: ArrayLike, spec: QuantSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric ``(input_low, input_high)`` (spec §4.3). POT: fake_quantize.py::symmetric_range.

    Weights: ``[-M, M]``. Activations: unsigned ``[0, M]`` when every ``min_stat >= 0`` and the
    spec is not ``signed``, otherwise ``[-M * L/(L-2), M]`` (the int8 grid ``[-128, 127] * M/127``
    for L=256). ``M`` is ``max_stat`` after :func:`fix_zero_filters_symmetric`; ``min_stat`` is
    only used for the sign decision and may be ``None`` for weights.
    """
    m = fix_zero_filters_symmetric(max_stat)
    if spec.group == "weights":
        return -m, m
    if min_stat is None:
        raise ConfigError(f"symmetric {spec.group} FakeQuantize needs a min statistic for its sign decision")
    if np.all(_f64(min_stat) >= 0) and not spec.signed:
        return np.zeros(m.shape), m
    return -m * spec.levels / (spec.levels - 2), m


def asymmetric_range(
    min_stat: ArrayLike, max_stat: ArrayLike, spec: QuantSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric ``(input_low, input_high)``: widen tiny ranges, include zero, align zero.

    POT: fake_quantize.py::asymmetric_range with unify_zp=False (DefaultQuantization's case).
    """
    mn, mx = fix_zero_filters_asymmetric(min_stat, max_stat)
    # np.where rather than np.minimum: like POT, a NaN statistic becomes 0 here.
    mn = np.where(mn < 0.0, mn, 0.0)
    mx = np.where(mx > 0.0, mx, 0.0)
    return tune_range(mn, mx, spec.bits)


def _shape_for(x: np.ndarray, spec: QuantSpec) -> np.ndarray:
    if spec.granularity == "pertensor" and x.size == 1:
        return x.reshape(())
    return x.reshape(-1)


def fake_quantize_params(
    min_stat: ArrayLike | None,
    max_stat: ArrayLike,
    spec: QuantSpec,
    *,
    clip_min: float | None = None,
    clip_max: float | None = None,
    output_scale: float = 1.0,
) -> FQParams:
    """FakeQuantize parameters from aggregated statistics, in POT's order (spec §4.2).

    Args:
        min_stat: aggregated min statistic (``None`` for symmetric weights).
        max_stat: aggregated max statistic.
        spec: the FQ's resolved grid.
        clip_min, clip_max: ``range_estimator.{min,max}.clipping_value`` (§4.4), applied after the
            range formulas, with no re-alignment (POT: fill_fq_range::clip_stat).
        output_scale: 2.0 for a saturation-fixed weight (§4.6): ``ol, oh = 2 * il, 2 * ih``;
            the caller stores ``W / 2``.

    Returns:
        The parameters, 0-d per tensor or ``(C,)`` per channel.
    """
    if spec.mode == "symmetric":
        il, ih = symmetric_range(min_stat, max_stat, spec)
    else:
        if min_stat is None:
            raise ConfigError(f"asymmetric {spec.group} FakeQuantize needs a min statistic")
        il, ih = asymmetric_range(min_stat, max_stat, spec)
    if clip_min is not None:
        il = np.maximum(il, clip_min)
    if clip_max is not None:
        ih = np.minimum(ih, clip_max)
    il, ih = np.broadcast_arrays(il, ih)
    il, ih = _shape_for(_f64(il), spec), _shape_for(_f64(ih), spec)
    return FQParams(spec.levels, il, ih, il * output_scale, ih * output_scale)


def unify_params(params: Sequence[FQParams]) -> list[FQParams]:
    """Give every FakeQuantize of a group the same range: ``[min(il_i), max(ih_i)]`` (spec §4.7).

    POT: fake_quantize.py::unify_fq_scales. Output ranges are reset to the input ranges, as POT
    does. Members of equal shape are unified channel by channel (POT); when shapes differ (POT
    crashes there) the group gets one scalar range, broadcast to each member's own shape.
    """
    if not params:
        return []
    shapes = {p.input_low.shape for p in params}
    if len(shapes) == 1:
        low = np.min(np.stack([p.input_low for p in params]), axis=0)
        high = np.max(np.stack([p.input_high for p in params]), axis=0)
    else:
        low = np.min([p.input_low.min() for p in params])
        high = np.max([p.input_high.max() for p in params])
    out = []
    for p in params:
        il = np.broadcast_to(low, p.input_low.shape).copy()
        ih = np.broadcast_to(high, p.input_high.shape).copy()
        out.append(FQParams(p.levels, il, ih, il, ih))
    return out
