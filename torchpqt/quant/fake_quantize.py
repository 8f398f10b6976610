"""The FakeQuantize module: OpenVINO opset1 ``FakeQuantize`` as one torch custom op.

Semantics (spec §4.1): ``x <= min(il, ih) -> ol``; ``x > max(il, ih) -> oh``; otherwise
``round((x - il) / (ih - il) * (L - 1)) / (L - 1) * (oh - ol) + ol`` with round half to even.

The forward reproduces, float32 operation for float32 operation, how OpenVINO's CPU plugin
runs a FakeQuantize on x86 (OpenVINO 2024-2026): the snippets ``FakeQuantizeDecomposition``
constant-folds ``isc = (L-1) / (ih-il)``, ``ish = il * isc``, ``osc = (oh-ol) / (L-1)`` in f32,
then computes ``q = round(min(max(x, il), ih) * isc - ish)`` with two roundings, and
``y = fma(q, osc, ol)``. Measured against the plugin (tests/quant/test_fake_quantize.py): the
quantization level ``q`` is identical on every element, including exact ties; the output is
identical except where the plugin's low-precision pass first rewrites ``ol``/``oh``
(levels 16/255/256 with asymmetric ranges), where it differs by at most one float32 ulp.
The plugin's non-snippets path (a FakeQuantize fused into a convolution, or
``SNIPPETS_MODE=DISABLE``) uses ``fma(x, isc, -il*(L-1)/(ih-il))`` instead, which picks the
neighbouring level on a few elements that sit exactly on a rounding tie.

The op is ``torch.ops.torchpqt.fake_quantize``: ``torch.export`` and the ONNX exporter see one
opaque node (never decomposed, never constant-folded, even on a constant weight), and its
autograd formula is a straight-through estimator with gradients for the four range tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from torchpqt.errors import ConfigError, ExportError
from torchpqt.quant import range_param

__all__ = ["FakeQuantize", "fake_quantize"]

_RANGES = ("input_low", "input_high", "output_low", "output_high")
_PARAMS = ("log_scale", "min_shift")

RangeLike = Any  # float, sequence, numpy array or tensor


def _levels(x: Tensor, il: Tensor, ih: Tensor, levels: int) -> Tensor:
    """The float32 integer level in [0, L-1] of every element, computed as the CPU plugin does."""
    n = torch.tensor(float(levels - 1), dtype=torch.float32, device=x.device)
    isc = n / (ih - il)
    ish = il * isc
    shape = torch.broadcast_shapes(x.shape, il.shape, ih.shape)
    # Maximum then Minimum, as the plugin's decomposition; fmax maps a NaN input to il (level 0)
    # like x86 maxps does. fmax allocates the result, so the in-place steps never touch x.
    q = torch.fmax(x.expand(shape), il)
    q.clamp_(max=ih)
    return q.mul_(isc).sub_(ish).round_()  # two f32 roundings, then half to even


def _dequantize(q: Tensor, ol: Tensor, oh: Tensor, levels: int) -> Tensor:
    """``fma(q, osc, ol)`` rounded once to float32.

    ``q * osc`` is exact in float64 (|q| < 2**17, osc has 24 bits), so one float64 add and one
    rounding to float32 give the hardware FMA result unless |ol / osc| > 2**29.
    """
    n = torch.tensor(float(levels - 1), dtype=torch.float32, device=q.device)
    osc = (oh - ol) / n
    shape = torch.broadcast_shapes(q.shape, ol.shape, oh.shape)
    wide = q.expand(shape).to(torch.float64)  # a new tensor: the in-place ops below are safe
    return wide.mul_(osc.double()).add_(ol.double()).to(torch.float32)


def _forward_f32(x: Tensor, il: Tensor, ih: Tensor, ol: Tensor, oh: Tensor, levels: int) -> Tensor:
    return _dequantize(_levels(x.float(), il.float(), ih.float(), levels), ol.float(), oh.float(), levels)


@torch.library.custom_op("torchpqt::fake_quantize", mutates_args=())
def _fake_quantize_op(
    x: Tensor, input_low: Tensor, input_high: Tensor, output_low: Tensor, output_high: Tensor, levels: int
) -> Tensor:
    return _forward_f32(x, input_low, input_high, output_low, output_high, levels).to(x.dtype)


@_fake_quantize_op.register_fake
def _fake_quantize_meta(x, input_low, input_high, output_low, output_high, levels):
    shape = torch.broadcast_shapes(x.shape, input_low.shape, input_high.shape, output_low.shape,
                                   output_high.shape)
    return x.new_empty(shape)


def _setup_context(ctx, inputs, output) -> None:
    x, il, ih, ol, oh, levels = inputs
    ctx.save_for_backward(x, il, ih, ol, oh)
    ctx.levels = levels


def _sum_to(grad: Tensor, like: Tensor) -> Tensor:
    """Reduces a broadcast gradient back to the shape and dtype of the tensor it belongs to."""
    return grad.sum_to_size(like.shape).to(like.dtype)


def _backward(ctx, grad: Tensor):
    """Straight-through estimator: round() has derivative 1 inside [il, ih], 0 outside.

    With ``y = q/(L-1)*(oh-ol) + ol`` and ``q ~ (x-il)/(ih-il)*(L-1)`` inside the range:
    dy/dx = (oh-ol)/(ih-il), dy/dil = -(oh-ol)(ih-x)/(ih-il)^2, dy/dih = -(oh-ol)(x-il)/(ih-il)^2,
    and everywhere dy/dol = 1 - q/(L-1), dy/doh = q/(L-1) (q = 0 below, L-1 above the range).
    When ol/oh are the same tensors as il/ih the sums give the LSQ-style rounding-error term.
    """
    x, il, ih, ol, oh = ctx.saved_tensors
    levels = ctx.levels
    g = grad.float()
    xf, ilf, ihf, olf, ohf = (t.float() for t in (x, il, ih, ol, oh))
    q = _levels(xf, ilf, ihf, levels)
    inside = (xf > torch.minimum(ilf, ihf)) & (xf <= torch.maximum(ilf, ihf))
    frac = q / float(levels - 1)
    width = ihf - ilf
    g_in = torch.where(inside, g, torch.zeros_like(g))
    slope = (ohf - olf) / width
    grads = [None] * 6
    if ctx.needs_input_grad[0]:
        grads[0] = _sum_to(g_in * slope, x)
    if ctx.needs_input_grad[1]:
        grads[1] = _sum_to(-g_in * slope * (ihf - xf) / width, il)
    if ctx.needs_input_grad[2]:
        grads[2] = _sum_to(-g_in * slope * (xf - ilf) / width, ih)
    if ctx.needs_input_grad[3]:
        grads[3] = _sum_to(g * (1.0 - frac), ol)
    if ctx.needs_input_grad[4]:
        grads[4] = _sum_to(g * frac, oh)
    return tuple(grads)


_fake_quantize_op.register_autograd(_backward, setup_context=_setup_context)


def fake_quantize(
    x: Tensor, input_low: Tensor, input_high: Tensor, output_low: Tensor, output_high: Tensor, levels: int
) -> Tensor:
    """Applies OpenVINO's FakeQuantize (opset1) to ``x``; the functional form of :class:`FakeQuantize`.

    Args:
        x: input tensor (computed in float32, returned in ``x.dtype``).
        input_low, input_high, output_low, output_high: range tensors broadcastable to ``x``.
        levels: number of quantization levels (>= 2).

    Returns:
        The fake-quantized tensor, bit-exact with OpenVINO's CPU plugin (see the module doc).
    """
    return _fake_quantize_op(x, input_low, input_high, output_low, output_high, int(levels))


def _as_range(value: RangeLike, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().to(torch.float32).clone()
    try:
        return torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=torch.float32).clone()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"torchpqt.FakeQuantize: {name} must be a number, array or tensor; "
                          f"got {type(value).__name__}") from exc


def _short(t: Tensor) -> str:
    """A range as a person wants to read it: the value, or min..max and the shape when per-channel."""
    if t.numel() == 1:
        return f"{t.item():.6g}"
    return f"[{t.min().item():.6g}..{t.max().item():.6g}]{tuple(t.shape)}"


class FakeQuantize(nn.Module):
    """OpenVINO ``FakeQuantize`` (opset1) as a module; ranges are float32 buffers.

    The ranges are frozen buffers by default (what export sees); :meth:`train_ranges` makes them
    trainable (see :mod:`torchpqt.quant.trainable`) and :meth:`freeze` writes the trained values
    back into the buffers.

    Args:
        levels: number of quantization levels, e.g. 256 (activations) or 255 (weights).
        input_low, input_high: input range, broadcastable to the input: a 0-d tensor for
            per-tensor, ``[C,1,1,1]`` for convolution weights, ``[1,C,1,1]`` for per-channel
            activations.
        output_low, output_high: output range; default to a copy of the input range.

    Raises:
        ConfigError: ``levels`` is not an integer >= 2 or the ranges do not broadcast together.
    """

    def __init__(self, levels: int, input_low: RangeLike, input_high: RangeLike,
                 output_low: RangeLike | None = None, output_high: RangeLike | None = None) -> None:
        super().__init__()
        try:
            valid = not isinstance(levels, bool) and float(levels).is_integer() and int(levels) >= 2
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise ConfigError(f"torchpqt.FakeQuantize: levels must be an integer >= 2, got {levels!r}")
        self.levels = int(levels)
        ranges = {"input_low": _as_range(input_low, "input_low"),
                  "input_high": _as_range(input_high, "input_high")}
        ranges["output_low"] = (ranges["input_low"].clone() if output_low is None
                                else _as_range(output_low, "output_low"))
        ranges["output_high"] = (ranges["input_high"].clone() if output_high is None
                                 else _as_range(output_high, "output_high"))
        try:
            torch.broadcast_shapes(*(t.shape for t in ranges.values()))
        except RuntimeError as exc:
            shapes = {k: tuple(v.shape) for k, v in ranges.items()}
            raise ConfigError(f"torchpqt.FakeQuantize: range shapes {shapes} do not broadcast together; "
                              "give every range the same shape, e.g. [C,1,1,1]") from exc
        for name, tensor in ranges.items():
            self.register_buffer(name, tensor)

    def forward(self, x: Tensor) -> Tensor:
        if not self.__dict__.get("_enabled", True):
            if torch.compiler.is_exporting() or torch.jit.is_tracing():
                raise ExportError("torchpqt.FakeQuantize: this module is disabled (fq.enabled = False, e.g. "
                                  "inside torchpqt.analysis.fake_quantize_enabled); enable it again before "
                                  "exporting, so the export holds every FakeQuantize")
            return self.bypass(x)
        if self.ranges_trainable and (torch.compiler.is_exporting() or torch.jit.is_tracing()):
            raise ExportError("torchpqt.FakeQuantize: the ranges are trainable parameters, so an export "
                              "would trace their arithmetic instead of constant ranges; call "
                              "torchpqt.quant.trainable.freeze_ranges(model) (or fq.freeze()) before "
                              "exporting")
        return fake_quantize(x, *self.ranges(), self.levels)

    # ------------------------------------------------------------------------ on/off switch

    @property
    def enabled(self) -> bool:
        """False makes the forward :meth:`bypass` (no rounding, no clamping); True by default.

        A plain attribute: not a buffer, so neither ``state_dict`` nor a saved model depends on it, and an
        export of a disabled module raises instead of silently leaving the FakeQuantize out. Sensitivity
        analysis (:func:`torchpqt.analyze`) switches modules off and on through it.
        """
        return self.__dict__.get("_enabled", True)

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self.__dict__["_enabled"] = bool(value)

    def bypass(self, x: Tensor) -> Tensor:
        """What the module computes without quantization: ``x`` when the output range equals the input
        range, else the affine map from the input range onto the output range (a saturation-fixed weight,
        stored halved with a doubled output range, comes out whole)."""
        with torch.no_grad():
            il, ih, ol, oh = (t.detach() for t in self.ranges())
        if ol.shape == il.shape and oh.shape == ih.shape and torch.equal(ol, il) and torch.equal(oh, ih):
            return x
        scale = (oh - ol) / (ih - il)
        return (x.float() * scale + (ol - il * scale)).to(x.dtype)  # offset 0 exactly for a symmetric range

    # ------------------------------------------------------------------------ trainable ranges

    @property
    def ranges_trainable(self) -> bool:
        """True between :meth:`train_ranges` and :meth:`freeze`."""
        return "log_scale" in self._parameters

    def ranges(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The effective ``(input_low, input_high, output_low, output_high)`` the forward uses.

        Frozen: the buffers. Trainable: derived from the buffers (the values when training
        started) and the parameters, differentiable, after projecting the parameters into their
        bounds in place (see :mod:`torchpqt.quant.trainable`).
        """
        anchors = tuple(getattr(self, n) for n in _RANGES)
        if not self.ranges_trainable:
            return anchors
        min_shift = self._parameters.get("min_shift")
        range_param.project_(self.log_scale, min_shift, anchors[0], anchors[1])
        follow = self.__dict__.get("_follow")  # None in modules pickled before it existed: derive decides
        return range_param.derive(anchors, self.log_scale, min_shift, self.levels, follow)

    def train_ranges(self, enabled: bool = True, *, train_min: bool = False) -> FakeQuantize:
        """Makes the ranges trainable (or freezes them when ``enabled`` is False), in place.

        Adds the parameter ``log_scale`` (the log of the width relative to now, POT's ``scale``)
        and, with ``train_min``, ``min_shift`` (a shift of the range, POT's ``min``); both start
        at zero, so the forward is bitwise unchanged. Called on an already trainable module with
        the same ``train_min`` it keeps the existing parameters (an optimizer holding them stays
        valid); with another ``train_min`` it freezes first and makes new ones.

        Raises:
            ConfigError: the four ranges differ in shape, are not finite, or ``input_high <=
                input_low`` somewhere.
        """
        if not enabled:
            return self.freeze()
        if self.ranges_trainable:
            if ("min_shift" in self._parameters) == bool(train_min):
                return self
            self.freeze()
        anchors = tuple(getattr(self, n) for n in _RANGES)
        range_param.check_anchors(*anchors, name="torchpqt.FakeQuantize")
        self._follow = range_param.outputs_follow(anchors)  # decided once: the buffers are the anchors
        self.log_scale = nn.Parameter(torch.zeros_like(anchors[0]))
        if train_min:  # -0.0: adding it is the identity on every float, -0.0 included
            self.min_shift = nn.Parameter(torch.full_like(anchors[0], -0.0))
        return self

    @torch.no_grad()
    def freeze(self) -> FakeQuantize:
        """Writes the effective ranges into the buffers and drops the range parameters (in place)."""
        if self.ranges_trainable:
            self._rebase()
            for name in _PARAMS:
                self._parameters.pop(name, None)
            self.__dict__.pop("_follow", None)
        return self

    @torch.no_grad()
    def _rebase(self) -> None:
        """Buffers := effective ranges, parameters := their zero, in place (the forward is unchanged)."""
        values = [v.detach().clone() for v in self.ranges()]
        for name, value in zip(_RANGES, values):
            getattr(self, name).copy_(value)
        self.log_scale.zero_()
        if "min_shift" in self._parameters:
            self.min_shift.fill_(-0.0)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # Trainable: the same four keys as a frozen module, holding the effective ranges, so a
        # state_dict never depends on the mode and loads into either.
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.ranges_trainable:
            with torch.no_grad():
                values = self.ranges()
            for name in _PARAMS:
                destination.pop(prefix + name, None)
            for name, value in zip(_RANGES, values):
                destination[prefix + name] = value.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        trainable = self.ranges_trainable
        if trainable:  # the loaded ranges become the anchors, with the parameters back at zero
            self._rebase()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if trainable:
            for name in _PARAMS:
                if prefix + name in missing_keys:
                    missing_keys.remove(prefix + name)
            anchors = tuple(getattr(self, n) for n in _RANGES)
            self._follow = range_param.outputs_follow(anchors)
            try:
                range_param.check_anchors(*anchors, name=f"{prefix}FakeQuantize")
            except ConfigError as exc:
                error_msgs.append(str(exc))

    def extra_repr(self) -> str:
        with torch.no_grad():
            il, ih, ol, oh = self.ranges()
        text = f"levels={self.levels}, input_low={_short(il)}, input_high={_short(ih)}"
        same = ol.shape == il.shape and oh.shape == ih.shape and torch.equal(ol, il) and torch.equal(oh, ih)
        if not same:
            text += f", output_low={_short(ol)}, output_high={_short(oh)}"
        if self.ranges_trainable:
            text += ", trainable=" + ("scale+min" if "min_shift" in self._parameters else "scale")
        return text

    @classmethod
    def from_params(cls, p: Any, shape: Sequence[int] | None = None) -> FakeQuantize:
        """Builds a FakeQuantize from computed parameters (e.g. ``torchpqt.quant.params`` output).

        Args:
            p: object with attributes ``levels``, ``input_low``, ``input_high``, ``output_low``,
                ``output_high`` (numpy float64 arrays of shape ``()`` or ``(C,)``; the output
                ones may be None to mean "same as input").
            shape: broadcast shape for per-channel arrays, e.g. ``(C,1,1,1)`` for conv weights
                or ``(1,C,1,1)`` for activations. Shape-``()`` arrays stay 0-d.

        Returns:
            A new FakeQuantize with float32 ranges (float64 rounded to nearest, as POT's IR).

        Raises:
            ConfigError: a per-channel array does not fit ``shape``.
        """
        def reshape(value: Any, name: str) -> Tensor | None:
            if value is None:
                return None
            t = _as_range(value, name)
            if t.dim() == 0 or shape is None:
                return t
            if t.numel() not in (1, math.prod(shape)):
                raise ConfigError(f"torchpqt.FakeQuantize.from_params: {name} has {t.numel()} values but the "
                                  f"broadcast shape {tuple(shape)} holds {math.prod(shape)}; pass the shape "
                                  "with the channel count on the channel axis")
            return t.reshape(tuple(shape)) if t.numel() == math.prod(shape) else t.reshape(())
        names = ("input_low", "input_high", "output_low", "output_high")
        return cls(int(p.levels), *(reshape(getattr(p, n, None), n) for n in names))
