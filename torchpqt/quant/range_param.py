"""The trainable parameterization of a FakeQuantize range, as pure tensor functions.

Why this parameterization: see :mod:`torchpqt.quant.trainable`. In short, with the anchors
``il0, ih0, ol0, oh0`` (the ranges when training started) and the parameters ``log_scale``
(``s``) and, optionally, ``min_shift`` (``m``)::

    e  = exp(s)                      # the width factor, s in [-ln 2**10, ln 2**10]
    il = il0 * e + m'                ih = ih0 * e + m'
    ol = ol0 * e + a * m'            oh = oh0 * e + a * m'     a = (oh0 - ol0) / (ih0 - il0)

where ``m'`` is ``m`` plus the (gradient-free) nudge that puts zero on an integer level once the
range has shifted. So the width is ``(ih0 - il0) * e`` (never zero, never negative), the output
range keeps its ratio to the input range, and a range edge at exactly zero stays there. At
``s = 0, m = -0.0`` every value is its anchor bit for bit (``x * 1.0 == x`` and ``x + -0.0 == x``
in IEEE 754).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from torchpqt.errors import ConfigError

__all__ = ["MAX_LOG_SCALE", "check_anchors", "derive", "outputs_follow", "project_"]

#: The width may shrink or grow by at most this factor (as a log) from where training started.
MAX_LOG_SCALE = math.log(2.0**10)

Ranges = tuple[Tensor, Tensor, Tensor, Tensor]


def check_anchors(il: Tensor, ih: Tensor, ol: Tensor, oh: Tensor, name: str = "FakeQuantize") -> None:
    """Raises ConfigError unless the four ranges share one shape, are finite and ``ih > il``."""
    shapes = {tuple(t.shape) for t in (il, ih, ol, oh)}
    if len(shapes) != 1:
        raise ConfigError(f"{name}: trainable ranges need input_low, input_high, output_low and "
                          f"output_high of one shape, got {sorted(shapes)}; build the FakeQuantize with "
                          "ranges of the same shape, e.g. [C,1,1,1]")
    if not all(bool(torch.isfinite(t).all()) for t in (il, ih, ol, oh)):
        raise ConfigError(f"{name}: a range holds inf or NaN; only finite ranges can be trained")
    if not bool((ih > il).all()):
        raise ConfigError(f"{name}: trainable ranges need input_high > input_low on every channel "
                          f"(min width {float((ih - il).min()):.6g}); widen the range before training it")


def _anchored(il0: Tensor, ih0: Tensor) -> Tensor:
    """Channels with an edge at exactly zero (ReLU outputs, POT's include-zero rule): never shifted."""
    return (il0 == 0) | (ih0 == 0)


def _same(a: Tensor, b: Tensor) -> bool:
    """Bitwise equality of finite tensors: equal values and equal sign bits (-0.0 is not 0.0)."""
    return a.shape == b.shape and torch.equal(a, b) and torch.equal(torch.signbit(a), torch.signbit(b))


@torch.no_grad()
def project_(log_scale: Tensor, min_shift: Tensor | None, il0: Tensor, ih0: Tensor) -> None:
    """Moves the parameters, in place, back into their bounds (a no-op inside them).

    ``log_scale`` is clamped to ``[-MAX_LOG_SCALE, MAX_LOG_SCALE]``. ``min_shift`` keeps zero inside
    the range when it was inside at the start (POT's asymmetric ranges always contain zero), never
    moves a range further from zero than it started, and is 0 on channels with an edge at zero.
    So ``|il|, |ih| <= (|il0| + |ih0|) * exp(s)`` while the width is ``(ih0 - il0) * exp(s)``: their
    ratio is bounded by the starting one and ``ih - il`` never rounds to zero.
    """
    log_scale.clamp_(-MAX_LOG_SCALE, MAX_LOG_SCALE)
    if min_shift is None:
        return
    e = log_scale.exp()
    zero = torch.zeros_like(il0)
    lo = torch.where(_anchored(il0, ih0), zero, torch.minimum(zero, -ih0) * e)
    hi = torch.where(_anchored(il0, ih0), zero, torch.maximum(zero, -il0) * e)
    out = (min_shift < lo) | (min_shift > hi)  # where(), not clamp: keeps an in-bounds -0.0 as it is
    min_shift.copy_(torch.where(out, torch.minimum(torch.maximum(min_shift, lo), hi), min_shift))


def outputs_follow(anchors: Ranges) -> bool:
    """True when the output range is the input range bit for bit (then it stays the same tensors)."""
    il0, ih0, ol0, oh0 = anchors
    return _same(ol0, il0) and _same(oh0, ih0)


@torch.no_grad()
def _zero_snap(il: Tensor, ih: Tensor, moved: Tensor, levels: int) -> Tensor:
    """The shift that puts zero on the nearest integer level of a shifted range (-0.0 elsewhere)."""
    step = (ih - il) / (levels - 1)
    snap = -(-il / step).round().clamp(0, levels - 1) * step - il
    return torch.where(moved, snap, torch.full_like(snap, -0.0))


def derive(anchors: Ranges, log_scale: Tensor, min_shift: Tensor | None, levels: int,
           follow: bool | None = None) -> Ranges:
    """The effective ``(il, ih, ol, oh)`` from the anchors and the parameters (differentiable).

    With ``min_shift``, a channel whose shift is not zero gets its zero point snapped to the
    nearest integer level, straight through (no gradient of the snap), as NNCF's asymmetric
    quantizer aligns its range in every forward: the range stays exportable to an integer grid
    (weights compressed to int8 with an integer zero point, QDQ). ``follow``:
    :func:`outputs_follow` of the anchors, when the caller has it (it syncs a GPU).
    """
    il0, ih0, ol0, oh0 = anchors
    e = log_scale.exp()
    il, ih = il0 * e, ih0 * e
    follow = outputs_follow(anchors) if follow is None else follow
    ol, oh = (il, ih) if follow else (ol0 * e, oh0 * e)
    if min_shift is None:
        return il, ih, ol, oh
    keep = _anchored(il0, ih0)
    moved = (min_shift != 0) & ~keep
    total = min_shift + _zero_snap(il + min_shift, ih + min_shift, moved, levels)
    # a zero point snapped onto an end level leaves that end a rounding error away from 0: keep 0 inside
    il_m = torch.where(keep, il, (il + total).clamp(max=0.0))
    ih_m = torch.where(keep, ih, (ih + total).clamp(min=0.0))
    if follow:
        return il_m, ih_m, il_m, ih_m
    ratio = (oh0 - ol0) / (ih0 - il0)  # POT's saturation fix: exactly 2
    shift = ratio * total
    return (il_m, ih_m, torch.where(keep, ol, (ol + shift).clamp(max=0.0)),
            torch.where(keep, oh, (oh + shift).clamp(min=0.0)))
