"""Trainable FakeQuantize ranges: the one parameterization QAT and layerwise tuning share.

**The parameterization.** A trainable :class:`~torchpqt.FakeQuantize` keeps its four range
buffers as *anchors* (the ranges when training started) and gets the parameter ``log_scale``
(``s``, one per channel of the range) and, with ``train_min``, ``min_shift`` (``m``)::

    e  = exp(s)                         s in [-ln 1024, ln 1024]
    il = il0 * e + m'                   ih = ih0 * e + m'
    ol = ol0 * e + a * m'               oh = oh0 * e + a * m',   a = (oh0 - ol0) / (ih0 - il0)

with ``m' = m + snap``, ``snap`` the gradient-free nudge (less than half a level) that puts zero
on an integer level once a channel's range has shifted (below).

This is POT's layerwise-tuning parameterization (spec §11: ``scale = log(ih - il)`` and ``min =
il``, ``min`` trainable only with ``asymmetric``), written relative to the starting point
(``s = scale - log(ih0 - il0)``) and with the width scaled about zero instead of about ``il``
(below). The gradient of ``m`` is POT's gradient of ``min``; the gradient of ``s`` is POT's of
``scale`` plus ``il0 * e`` times that of ``min`` (the same for a range starting at 0), of the
same magnitude, so POT's learning rates (1e-6) carry over. Why it and not LSQ's step size:

* *Well-conditioned.* A step on ``s`` changes the width by a relative amount, the same for a
  range of 1e-3 and one of 1e3; an additive step size (LSQ) needs its gradient rescaled by
  ``1/sqrt(N * Qp)`` to behave, and one learning rate cannot suit ranges of different magnitudes
  (per-channel weight ranges differ by up to 100x after POT's 1 % floor).
* *Regularized toward calibration.* ``s = 0, m = 0`` is the calibrated range, so weight decay
  (Adam's ``weight_decay``, AdamW) pulls a range back toward it; on a step size it pulls the
  range toward zero width.
* *Never collapses or inverts.* The width is ``(ih0 - il0) * exp(s) > 0`` for every ``s``; a
  step-size parameter crosses zero on one large step. The parameters are also *projected* into
  their bounds, in place and without gradient, each time the ranges are derived (forward,
  :func:`freeze_ranges`, ``state_dict``): ``s`` to ``±ln 1024`` (the width changes at most 1024x
  from where training started: exp stays finite) and ``m`` as below, so even a huge learning-rate
  step leaves a valid range and, unlike a clamp inside the graph, no gradient is cut.
* *Symmetric stays symmetric exactly.* Without ``min_shift`` the range scales about zero:
  ``il0 = -ih0`` gives ``il = -ih`` bit for bit (rounding is sign-symmetric), the signed
  activation grid ``il = -ih * L/(L-2)`` keeps its ratio (to float32 rounding), so the zero point
  ``-il/(ih-il)*(L-1)`` stays on its integer, and an unsigned range (``il0 = 0``) keeps ``il = 0``
  exactly. **Difference from POT:** POT keeps ``il`` fixed and moves only ``ih``; for ``il0 = 0``
  that is the same thing, but for a signed range it breaks the symmetry and moves the zero off
  the grid.
* *Output range follows.* ``ol/oh`` move with the same factor and shift, scaled by their ratio
  ``a`` to the input range: when ``ol0 = il0, oh0 = ih0`` the output ranges *are* the input
  ranges (the same tensors); the saturation fix's doubled output (``a = 2``), GNA's overflow
  correction and any other fixed ratio are kept.
* *Zero and signedness kept valid with* ``train_min`` (POT's ``asymmetric: true``, or QAT of an
  asymmetric FakeQuantize): ``m`` keeps zero inside the range when it was inside at the start
  (POT's asymmetric ranges always include zero), never moves a range further from zero, and is 0
  on channels with an edge at exactly zero: a ReLU output range ``[0, M]`` stays at 0, so its zeros
  stay exact and no level is spent on values that never occur. (POT with ``asymmetric`` would also
  shift those.) Once a channel has shifted, its zero point is snapped to the nearest integer
  level in every forward, straight through, as NNCF's asymmetric quantizer does (POT's tuning
  left it fractional): compressed int8 weights and QDQ need an integer zero point (without the
  snap, the IR check of a test CNN with shifted weight ranges failed at 2.7-4.1 quantization
  steps; with it, 0.3-1.4).
  ``train_min`` is meant for asymmetric FakeQuantize: on symmetric weights it makes them
  asymmetric, which OpenVINO's CPU plugin runs partly in f32.
* *Per channel.* ``s`` and ``m`` have the shape of the range (``[C,1,1,1]``, ``[1,C,1,1]``, or 0-d),
  so per-channel ranges train per channel. ``levels`` never changes.
* *Bitwise at the start.* ``s = 0`` and ``m = -0.0`` reproduce every anchor bit for bit, so
  switching to trainable and back, or saving and loading, changes nothing.

Gradients reach ``s`` and ``m`` through the straight-through estimator of
``torch.ops.torchpqt.fake_quantize`` (derivatives for all four ranges; inside the range ``round``
counts as the identity, which gives LSQ's rounding-error term for ``ih``/``il`` when ``ol/oh``
are ``il/ih``).

**State.** ``state_dict`` of a trainable module has the same four keys as a frozen one, holding
the effective ranges, so it loads into a frozen or a trainable module bitwise; loading into a
trainable one makes the loaded values the new anchors and puts the parameters back to zero, in
place (an optimizer keeps its references; its moments stay meaningful because a shift of the
anchor is a shift of ``s``). ``torch.save`` of the whole module works in either mode.

**Export** sees one opaque ``torchpqt::fake_quantize`` op with constant ranges only for frozen
modules: call :func:`freeze_ranges` after training. Exporting a trainable module raises
:class:`~torchpqt.errors.ExportError` instead of tracing the range arithmetic.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from typing import Literal

from torch import nn

from torchpqt.errors import ConfigError
from torchpqt.quant.fake_quantize import FakeQuantize
from torchpqt.quant.range_param import MAX_LOG_SCALE

__all__ = ["MAX_LOG_SCALE", "freeze_ranges", "frozen_copy", "named_trainable_ranges", "train_ranges", "trainable_ranges"]

Which = Literal["all", "scale", "min"]
_NAMES = {"all": ("log_scale", "min_shift"), "scale": ("log_scale",), "min": ("min_shift",)}


def _fake_quantizes(module: nn.Module) -> Iterator[tuple[str, FakeQuantize]]:
    if isinstance(module, FakeQuantize):
        yield "", module
        return
    for name, sub in module.named_modules():
        if isinstance(sub, FakeQuantize):
            yield name, sub


def train_ranges(module: nn.Module, enabled: bool = True, *,
                 train_min: bool | Callable[[str, FakeQuantize], bool] = False) -> list[nn.Parameter]:
    """Makes the range of every FakeQuantize in ``module`` trainable (in place).

    Args:
        module: a FakeQuantize or a model holding some (e.g. the output of ``torchpqt.convert``).
        enabled: False freezes them instead (see :func:`freeze_ranges`).
        train_min: also train the shift of the range (POT's ``asymmetric`` layerwise-tuning key):
            a bool for all, or ``f(module_name, fq) -> bool`` to decide per FakeQuantize, e.g.
            true for the asymmetric ones only.

    Returns:
        The range parameters, as :func:`trainable_ranges` lists them (empty when freezing).

    Raises:
        ConfigError: a FakeQuantize's ranges cannot be trained (see ``FakeQuantize.train_ranges``).
    """
    if not enabled:
        freeze_ranges(module)
        return []
    for name, fq in _fake_quantizes(module):
        fq.train_ranges(True, train_min=bool(train_min(name, fq) if callable(train_min) else train_min))
    return trainable_ranges(module)


def freeze_ranges(module: nn.Module) -> nn.Module:
    """Writes every trained range back into its buffers and drops the range parameters (in place).

    Returns ``module``; afterwards it exports with constant ranges, as before training.
    """
    for _, fq in _fake_quantizes(module):
        fq.freeze()
    return module


def named_trainable_ranges(module: nn.Module, which: Which = "all") -> list[tuple[str, nn.Parameter]]:
    """``(qualified name, parameter)`` of the trainable range parameters, in module order.

    Args:
        module: a FakeQuantize or a model holding some.
        which: ``"scale"`` (the ``log_scale`` parameters), ``"min"`` (``min_shift``) or ``"all"``.
    """
    if which not in _NAMES:
        raise ConfigError(f"torchpqt.quant.trainable: which must be 'all', 'scale' or 'min', got {which!r}")
    found = []
    for name, fq in _fake_quantizes(module):
        for pname in _NAMES[which]:
            p = fq._parameters.get(pname)
            if p is not None:
                found.append((f"{name}.{pname}" if name else pname, p))
    return found


def trainable_ranges(module: nn.Module, which: Which = "all") -> list[nn.Parameter]:
    """The trainable range parameters of ``module``, e.g. for optimizer groups.

    Example (POT's separate learning rates for the scale and the min)::

        train_ranges(qmodel, train_min=True)
        opt = torch.optim.Adam([{"params": trainable_ranges(qmodel, "scale"), "lr": 1e-6},
                                {"params": trainable_ranges(qmodel, "min"), "lr": 1e-6}])
    """
    return [p for _, p in named_trainable_ranges(module, which)]


def frozen_copy(module: nn.Module) -> nn.Module:
    """``module`` itself when no FakeQuantize in it has trainable ranges, else a deep copy with every
    range frozen (what the exporters trace: ``module`` is never changed)."""
    if not any(fq.ranges_trainable for _, fq in _fake_quantizes(module)):
        return module
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's pytree spec deprecation noise on copy
        copied = copy.deepcopy(module)
    for name, value in vars(module).items():  # a GraphModule's deepcopy drops torchpqt_config, torchpqt_plan
        if name.startswith("torchpqt_") and not hasattr(copied, name):
            setattr(copied, name, value)
    return freeze_ranges(copied)
