"""Pure math of the export check: where a FakeQuantize input sits on its grid, which level it got,
and how two runs of one FakeQuantize differ. No OpenVINO, no torch modules here.

A FakeQuantize with ``L`` levels maps its input ``x`` to the position
``u = (clip(x, il, ih) - il) / (ih - il) * (L - 1)`` in ``[0, L-1]`` and outputs level
``round(u)``. Positions are comparable across two graphs even where the converter rewrote the
ranges (a constant Multiply or Add folded into them), so the check compares positions and levels,
never raw values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FQStats", "Tolerances", "compare_fake_quantize", "levels_of", "max_relative_difference", "positions",
           "sqnr_db"]

# a FakeQuantize's own f32 arithmetic (two roundings of x * (L-1) / (ih - il)) moves a position by ~3e-5 steps
_TIE_MARGIN = 1e-3


@dataclass(frozen=True)
class Tolerances:
    """What the export check allows between the IR (FakeQuantize simulated in f32) and torch.

    Attributes:
        max_input_deviation: largest difference of a FakeQuantize's input position between the IR and
            torch fed the IR's upstream levels, in quantization steps, beyond the float allowance. Only
            accumulation order differs there (1e-4..5e-3 steps measured); a wrong weight, bias or range
            moves it by whole steps.
        float_allowance: float32 rounding the input may carry, as a multiple of float32's epsilon times
            the tensor's largest magnitude; it matters only where a channel's range is tiny next to its
            tensor's values (cancellation in a near-dead channel).
        max_level_difference: largest level difference of one element (a rounding tie that flips moves
            one level).
        max_flip_fraction: largest share of a FakeQuantize's elements whose level differs although
            torch's input is farther from a rounding tie than the two inputs differ (plus the float
            allowance and 1e-3 steps). Flips at a tie are expected: the CPU plugin breaks exact ties
            differently in some kernels (e.g. a mean over 2x2 positions of quantized values lands on ties).
        output_rtol: largest difference of a model output from torch fed the IR's last levels, relative
            to the output's largest magnitude (outputs not behind a FakeQuantize are compared this way).
    """

    max_input_deviation: float = 0.05
    float_allowance: float = 64.0
    max_level_difference: int = 1
    max_flip_fraction: float = 0.01
    output_rtol: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("max_input_deviation", "float_allowance", "max_flip_fraction", "output_rtol"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"Tolerances.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_level_difference < 0:
            raise ValueError(f"Tolerances.max_level_difference must be >= 0, got {self.max_level_difference!r}")


@dataclass(frozen=True)
class FQStats:
    """One activation FakeQuantize, IR against torch fed the IR's upstream levels.

    Attributes:
        name: the torch module path of the FakeQuantize (the IR node's name).
        levels: its number of levels.
        elements: how many elements it quantized on the example inputs.
        input_deviation: max |position in the IR - position in torch|, in steps.
        excess_deviation: the same beyond the float allowance (what the check judges).
        flips: elements whose level differs.
        unexplained_flips: those whose torch input is not within the inputs' difference of a rounding tie
            (what the check judges).
        max_level_difference: the largest level difference.
        level_outliers: elements whose level differs by more than ``max_level_difference`` plus their
            float allowance (what the check judges).
        ranges_rewritten: the IR's ranges differ from torch's (a converter fusion, or an export bug:
            the positions tell which).
    """

    name: str
    levels: int
    elements: int
    input_deviation: float
    excess_deviation: float
    flips: int
    unexplained_flips: int
    max_level_difference: int
    level_outliers: int
    ranges_rewritten: bool = False

    @property
    def flip_fraction(self) -> float:
        return self.flips / self.elements if self.elements else 0.0

    @property
    def unexplained_flip_fraction(self) -> float:
        return self.unexplained_flips / self.elements if self.elements else 0.0

    def violations(self, tol: Tolerances) -> list[str]:
        """What exceeds ``tol``, in words (empty when the FakeQuantize agrees)."""
        why = []
        if self.excess_deviation > tol.max_input_deviation:
            why.append(f"input off by {self.input_deviation:.3g} steps (max {tol.max_input_deviation:g} beyond "
                       "float rounding)")
        if self.level_outliers:
            why.append(f"{self.level_outliers} levels off by up to {self.max_level_difference} "
                       f"(max {tol.max_level_difference})")
        if self.unexplained_flip_fraction > tol.max_flip_fraction:
            why.append(f"{self.unexplained_flip_fraction:.2%} of levels differ away from a rounding tie "
                       f"(max {tol.max_flip_fraction:.2%})")
        return why


def _f64(*arrays) -> list[np.ndarray]:
    return [np.asarray(a, dtype=np.float64) for a in arrays]


def _steps_per_unit(low, high, levels: int) -> np.ndarray:
    """(L-1) / |high - low|, 0 for an empty range."""
    width = np.abs(np.asarray(high, dtype=np.float64) - np.asarray(low, dtype=np.float64))
    return np.divide(levels - 1, width, out=np.zeros_like(width), where=width != 0)


def positions(x, il, ih, levels: int) -> np.ndarray:
    """Position of every element of ``x`` on the grid of ``[il, ih]`` with ``levels`` levels, in [0, L-1].

    Ranges broadcast against ``x``; a channel with ``ih == il`` has position 0.
    """
    x, il, ih = _f64(x, il, ih)
    with np.errstate(invalid="ignore", over="ignore"):  # an infinite range or a NaN input: NaN, compared as such
        u = np.abs(np.clip(x, np.minimum(il, ih), np.maximum(il, ih)) - il) * _steps_per_unit(il, ih, levels)
        return np.minimum(u, levels - 1)


def levels_of(y, ol, oh, levels: int) -> np.ndarray:
    """The integer level (int64, in [0, L-1]) of every FakeQuantize output ``y`` with output range ``[ol, oh]``."""
    y, ol, oh = _f64(y, ol, oh)
    with np.errstate(invalid="ignore", over="ignore"):
        width = oh - ol
        scale = np.divide(levels - 1, width, out=np.zeros_like(width), where=width != 0)
        return np.clip(np.nan_to_num(np.rint((y - ol) * scale)), 0, levels - 1).astype(np.int64)  # NaN: level 0


def compare_fake_quantize(name: str, levels: int, ir: tuple, torch_side: tuple, tol: Tolerances
                          ) -> tuple[FQStats, np.ndarray]:
    """Compares one FakeQuantize between the IR and torch.

    Args:
        name: for the report.
        levels: the FakeQuantize's levels (the same on both sides).
        ir, torch_side: ``(x, y, il, ih, ol, oh)`` each: the input, the output and the four ranges.
        tol: gives the float allowance and the level difference allowed.

    Returns:
        The stats, and the IR's levels (int64, the shape of ``y``) for feeding torch downstream.
    """
    x_ir, y_ir, *r_ir = ir
    x_t, y_t, *r_t = torch_side
    u_ir, u_t = positions(x_ir, r_ir[0], r_ir[1], levels), positions(x_t, r_t[0], r_t[1], levels)
    q_ir, q_t = levels_of(y_ir, r_ir[2], r_ir[3], levels), levels_of(y_t, r_t[2], r_t[3], levels)
    deviation, diff = _nan_aware(u_ir, u_t), np.abs(q_ir - q_t)
    # float32 rounding of the input, in steps of each element's channel
    magnitude = float(np.abs(np.nan_to_num(np.asarray(x_t, dtype=np.float64), posinf=0.0, neginf=0.0)).max(initial=0.0))
    allowance = tol.float_allowance * float(np.finfo(np.float32).eps) * magnitude * _steps_per_unit(
        r_t[0], r_t[1], levels)
    margin = np.broadcast_to(deviation + allowance + _TIE_MARGIN, diff.shape)
    tie_distance = np.broadcast_to(np.abs(u_t - np.floor(u_t) - 0.5), diff.shape)
    flipped = diff != 0
    stats = FQStats(name=name, levels=levels, elements=int(diff.size),
                    input_deviation=float(deviation.max(initial=0.0)),
                    excess_deviation=float(np.maximum(deviation - allowance, 0.0).max(initial=0.0)),
                    flips=int(np.count_nonzero(flipped)),
                    unexplained_flips=int(np.count_nonzero(flipped & ~(tie_distance <= margin))),
                    max_level_difference=int(diff.max(initial=0)),
                    level_outliers=int(np.count_nonzero(diff > tol.max_level_difference + allowance)),
                    ranges_rewritten=not all(_same(a, b) for a, b in zip(r_ir, r_t)))
    return stats, q_ir


def _nan_aware(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b|, 0 where both are NaN, inf where only one is."""
    both = np.isnan(a) & np.isnan(b)
    return np.where(both, 0.0, np.nan_to_num(np.abs(a - b), nan=np.inf))


def max_relative_difference(output, reference) -> float:
    """max |output - reference| / max |reference| (NaN where only one side is NaN counts as infinite)."""
    out, ref = _f64(output, reference)
    scale = float(np.abs(np.nan_to_num(ref)).max(initial=0.0))
    return float(_nan_aware(out, ref).max(initial=0.0)) / max(scale, 1e-12)


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        return False
    return bool(np.array_equal(np.broadcast_to(a, shape), np.broadcast_to(b, shape)))


def sqnr_db(output, reference) -> float:
    """Signal-to-quantization-noise ratio of ``output`` against ``reference`` in dB (inf when identical)."""
    out, ref = _f64(output, reference)
    noise = float(np.square(out - ref).sum())
    signal = float(np.square(ref).sum())
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(signal / noise) if signal > 0 else float("-inf")
