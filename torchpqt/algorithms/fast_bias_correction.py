"""FastBiasCorrection (spec §10.1): compensate the mean output shift that weight quantization causes,
one layer at a time, from two statistics of the FP32 (channel-aligned) model.

POT: algorithms/quantization/fast_bias_correction/algorithm.py. For every Convolution / MatMul with a
quantized constant weight (or every such op with ``apply_for_all_nodes``) and a constant bias:

1. ``m_in[c]``: the ``mean`` aggregate of the per-sample channel means of the op's input (the FP32 tensor
   before its FakeQuantize); ``m_out[c]``: the same for its FP32 output after the bias. Channel axis 1 for
   a conv, -1 for a MatMul.
2. ``q[c]``: a one-layer model, the op with its quantized weights ``Q(W)``, no bias and no activation
   FakeQuantize, fed one tensor of the most frequent input shape (batch 1) whose channel ``c`` holds
   ``m_in[c]``; ``q`` is the per-channel mean of its output (computed in closed form from the taps that read
   the input, without building the tensor: :func:`~torchpqt.algorithms.layers.constant_input_mean`).
3. ``b_new = m_out - q``, accepted only if no bias element is exactly 0 and
   ``max |(b_new - b) / b| < threshold`` (default 2.0); otherwise the layer keeps its bias.

Without padding ``b_new = b + (W - Q(W)) m_in`` (up to the input's spatial variation). Two POT behaviours
are kept by default and can be switched off (config extension keys, added when the pipeline is wired):

* ``correct_zero_bias`` (default False): POT never corrects a layer whose bias has an exactly-zero
  element, nor a bias-less one (for a Convolution POT inserted a zero bias itself, spec §7.1). With True,
  such a layer is corrected with the weight error alone, ``b_new = b + mean(op(W, c)) - mean(op(Q(W), c))``
  on the constant input ``c`` (a zero bias element gives the relative test nothing to bound, so the
  data-dependent ``m_out - q`` is not trusted there: on a 3x3 conv without padding its spatial noise cost
  4 dB of output SQNR in a measurement), the threshold is tested on the nonzero elements only (none:
  accepted), and a missing bias counts as zeros, so the layer gets a bias.
* ``padding_fix`` (default False): in a padded conv the constant input's zero border distorts ``q`` and
  the real input's border distorts ``m_out`` differently, so ``m_out - q`` carries spatial noise that
  fails the threshold (spec §10.1, the first conv of §13.3). With True, a padded conv gets
  ``b_new = b + mean(conv(W, c)) - mean(conv(Q(W), c))`` on the same constant input ``c``, in which the
  border effect cancels; unpadded layers keep POT's formula.

``m_out`` of a layer whose every output position is a linear map of the input at that position (a MatMul, a
1x1 stride-1 unpadded Convolution, grouped or not) is not observed: the mean commutes with the map, so
``m_out = W m_in + b`` exactly in real arithmetic, and ``m_out - q`` is computed as ``b + mean(op(W, c)) -
mean(op(Q(W), c))`` on the same constant input ``c`` (float64). This saves one full pass over each such
layer's output per batch (its per-channel mean), about a third of the observers of a CNN or a transformer;
the result equals POT's up to the float32 rounding of POT's measured mean (tested against POT's recordings).

Driver interface (the min-max statistics' pass, on the FP32 model; where channel alignment changed a tensor, its
statistics are the aligned model's: POT's second pass, or derived from the first)::

    for layer in candidates(qm, cfg.apply_for_all_nodes):          # qm: the converted model
        # collected at Topology(qm).input0(layer.node) (the tensor before its activation FakeQuantize)
        # and at layer.node (the output after the bias), both with MEAN_PER_CHANNEL on
        # layer.channel_axis, plus every input batch's shape
        update = correct_layer(qm, layer, m_in, m_out, most_frequent_shape(shapes),
                               threshold=cfg.resolved_threshold)
        if update.applied:
            set_layer_tensor(qm, layer, "bias", update.new_bias)   # torchpqt.algorithms.layers
    drop_unused_constants(qm)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx

from torchpqt.algorithms.base import Algorithm
from torchpqt.algorithms.layers import (
    Layer,
    constant_input_mean,
    drop_unused_constants,
    float_weight,
    layer_of,
    quantized_weight,
    set_layer_tensor,
)
from torchpqt.observer import StatisticRequest, batch_shapes
from torchpqt.statistics.estimators import StatSpec

__all__ = ["ALGORITHM", "MEAN_PER_CHANNEL", "BiasUpdate", "candidates", "constant_input", "correct_layer", "fast_bias_correction",
           "most_frequent_shape", "output_mean_follows", "relative_change"]

logger = logging.getLogger("torchpqt")

DEFAULT_THRESHOLD = 2.0
# POT: TensorStatisticAxis(type='mean', granularity='perchannel') aggregated with agf.mean. The driver
# collects it at each layer's input (channel axis Layer.channel_axis) and output, with the input shapes.
MEAN_PER_CHANNEL = StatSpec(side="max", type="mean", aggregator="mean", granularity="perchannel")


@dataclass(frozen=True)
class BiasUpdate:
    """What a bias correction decided for one layer.

    Attributes:
        layer: the layer's node name.
        bias: its bias before (``[C]``; None if it had none).
        new_bias: the corrected bias it would get (``[C]``), None where none was computed.
        magnitude: the relative change the threshold was tested on (inf: a zero bias element).
        applied: whether ``new_bias`` replaces ``bias``.
        reason: why not, when not applied ('' otherwise).
    """

    layer: str
    bias: torch.Tensor | None
    new_bias: torch.Tensor | None
    magnitude: float
    applied: bool
    reason: str = ""

    @property
    def shift(self) -> torch.Tensor | None:
        """``new_bias - bias`` (bias None counts as zeros)."""
        if self.new_bias is None:
            return None
        return self.new_bias - (self.bias if self.bias is not None else torch.zeros_like(self.new_bias))


def candidates(gm: fx.GraphModule, apply_for_all_nodes: bool = False) -> list[Layer]:
    """The layers FastBiasCorrection looks at, in graph order: Convolution (grouped and depthwise too) and MatMul with a
    constant weight behind a weight FakeQuantize (any constant weight with ``apply_for_all_nodes``)."""
    out = []
    for node in gm.graph.nodes:
        layer = layer_of(gm, node)
        if layer is None:
            continue
        w = node.args[layer.weight_arg]
        quantized = isinstance(w, fx.Node) and w.op == "call_module"
        if quantized or apply_for_all_nodes:
            out.append(layer)
    return out


def most_frequent_shape(shapes: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """POT get_input_shape_for_bias: ``scipy.stats.mode`` over the recorded shapes, **per dimension**
    (the smallest value on a tie), then batch 1."""
    arr = np.asarray([list(s) for s in shapes], dtype=np.int64)
    if arr.ndim != 2 or len(arr) == 0:
        raise ValueError("most_frequent_shape needs at least one shape, all of the same rank")
    mode = []
    for col in arr.T:
        values, counts = np.unique(col, return_counts=True)
        mode.append(int(values[np.argmax(counts)]))  # np.unique sorts: argmax picks the smallest on ties
    if len(mode) > 1:
        mode[0] = 1
    return tuple(mode)


def constant_input(shape: Sequence[int], channel_means, axis: int) -> torch.Tensor:
    """A float32 tensor of ``shape`` whose channel ``c`` (along ``axis``) holds ``channel_means[c]``
    (POT _calculate_bias_shift's input blob)."""
    means = torch.as_tensor(np.asarray(channel_means, dtype=np.float32))
    view = [1] * len(shape)
    view[axis % len(shape)] = -1
    return means.reshape(view).expand(*shape).contiguous()


def relative_change(bias: torch.Tensor, shift: torch.Tensor, correct_zero_bias: bool = False) -> float:
    """``max |shift / bias|``; inf if a bias element is exactly 0 (POT), or, with ``correct_zero_bias``,
    over the nonzero elements only (0.0 when there are none)."""
    b = bias.double().reshape(-1)
    s = shift.double().reshape(-1)
    nonzero = b != 0
    if not bool(nonzero.all()):
        if not correct_zero_bias:
            return float("inf")
        if not bool(nonzero.any()):
            return 0.0
        b, s = b[nonzero], s[nonzero]
    return float((s / b).abs().max())


def fast_bias_correction(layer: Layer, weight_q: torch.Tensor, input_mean, output_mean,
                         input_shape: Sequence[int], *, threshold: float = DEFAULT_THRESHOLD,
                         correct_zero_bias: bool = False, padding_fix: bool = False,
                         weight: torch.Tensor | None = None) -> BiasUpdate:
    """The corrected bias of one layer.

    Args:
        layer: the layer (:func:`torchpqt.algorithms.layers.layer_of`); ``layer.bias`` is the current bias.
        weight_q: ``Q(W)``, the output of its weight FakeQuantize (:func:`~torchpqt.algorithms.layers.
            quantized_weight`).
        input_mean: ``m_in``, ``[C_in]`` (channel axis ``layer.channel_axis``).
        output_mean: ``m_out``, ``[C_out]``, the FP32 output after the bias; None where it follows from
            ``m_in`` (:func:`output_mean_follows`): then ``b + mean(op(W, c))`` stands for it (needs ``weight``).
        input_shape: the most frequent input shape (:func:`most_frequent_shape`); batch is set to 1.
        threshold: POT ``threshold``.
        correct_zero_bias, padding_fix: the two fixes of the module docstring (default: POT's behaviour).
        weight: the FP32 weight ``W`` (:func:`~torchpqt.algorithms.layers.float_weight`); needed only
            with ``padding_fix`` on a padded conv and ``correct_zero_bias`` on a zero bias.

    Returns:
        A :class:`BiasUpdate`; ``new_bias`` is float32 like the bias.
    """
    bias = layer.bias
    if bias is None and (not correct_zero_bias or layer.bias_arg < 0):
        # POT: a Convolution has the zero bias POT inserted (a zero element); a MatMul has no bias Add
        reason = "zero bias" if layer.type == "Convolution" else "no bias"
        return BiasUpdate(layer.name, None, None, float("inf"), False, reason)
    shape = [int(s) for s in input_shape]
    if len(shape) < 2:
        raise ValueError(f"{layer.name}: invalid input shape {shape} for bias correction")
    shape[0] = 1
    # the constant input of POT's one-layer model holds the float32 means; its output mean in closed form
    means = torch.as_tensor(np.asarray(input_mean, dtype=np.float32)).to(weight_q.device)
    try:
        q = constant_input_mean(layer, shape, means, weight_q)
    except ValueError as exc:  # e.g. a conv fed an unbatched [C, H, W] tensor: no one-layer model to build
        logger.warning("FastBiasCorrection: %s keeps its bias: %s", layer.name, exc)
        return BiasUpdate(layer.name, bias, None, float("inf"), False, str(exc))
    current = bias.double() if bias is not None else torch.zeros(layer.out_channels, dtype=torch.float64,
                                                                   device=q.device)
    has_zero = bool((current == 0).any())
    if output_mean is None or (padding_fix and layer.padded) or (correct_zero_bias and has_zero):
        if weight is None:
            raise ValueError(f"{layer.name}: a derived output mean, padding_fix and correct_zero_bias need the "
                             "FP32 weight")
        fp = constant_input_mean(layer, shape, means, weight)
        new = current + fp - q
    else:
        new = torch.as_tensor(np.asarray(output_mean, dtype=np.float64), device=q.device) - q
    if new.shape != current.shape:
        return BiasUpdate(layer.name, bias, None, float("inf"), False, "shift and bias shapes differ")
    new = new.to(torch.float32)
    magnitude = relative_change(current, new.double() - current, correct_zero_bias)
    if magnitude < threshold:
        logger.debug("FastBiasCorrection: %s bias set, magnitude %.4g", layer.name, magnitude)
        return BiasUpdate(layer.name, bias, new, magnitude, True)
    reason = "zero bias element" if magnitude == float("inf") else f"threshold ({magnitude:.3g} >= {threshold:g})"
    logger.debug("FastBiasCorrection: %s skipped: %s", layer.name, reason)
    return BiasUpdate(layer.name, bias, new, magnitude, False, reason)


def correct_layer(gm: fx.GraphModule, layer: Layer, input_mean, output_mean, input_shape, **options
                  ) -> BiasUpdate:
    """:func:`fast_bias_correction` with ``Q(W)`` and ``W`` read from ``gm`` (a converted model)."""
    return fast_bias_correction(layer, quantized_weight(gm, layer), input_mean, output_mean, input_shape,
                                weight=float_weight(gm, layer), **options)


# ---------------------------------------------------------------- the pipeline step


def _in_point(layer: str) -> str:
    return f"{layer} (fast bias input)"


def _out_point(layer: str) -> str:
    return f"{layer} (fast bias output)"


def output_mean_follows(layer: Layer) -> bool:
    """Whether the layer's output mean is ``W m_in + b`` exactly (in real arithmetic): every output position is
    the linear map of the input at that position only. A MatMul (it contracts the channel axis alone), or a
    Convolution with a 1x1 kernel, strides 1 and no padding (any groups)."""
    if layer.type != "Convolution":
        return True
    return (all(int(k) == 1 for k in layer.weight.shape[2:]) and all(int(s) == 1 for s in layer.stride)
            and not layer.padded)


def _planned_layers(gm: fx.GraphModule, plan, apply_for_all_nodes: bool) -> list[Layer]:
    """:func:`candidates` as they will be after MinMaxQuantization, read from the plan on the captured graph."""
    quantized = {p.site.edges[0].consumer.name for p in plan.points if p.group == "weights"}
    out = []
    for node in gm.graph.nodes:
        layer = layer_of(gm, node)
        if layer is not None and (node.name in quantized or apply_for_all_nodes):
            out.append(layer)
    return out


def statistic_points(plan, config) -> tuple[StatisticRequest, ...]:
    """Per-channel means of every candidate's input (with the batch shapes) and, where it does not follow from
    the input's (:func:`output_mean_follows`), output, in MinMaxQuantization's pass on the (aligned) FP32 model."""
    from torchpqt.algorithms.channel_alignment import captured_graph

    gm = captured_graph(plan)
    if gm is None:
        return ()
    requests = []
    for layer in _planned_layers(gm, plan, config.apply_for_all_nodes):
        x = layer.node.args[0]
        if not isinstance(x, fx.Node):
            continue
        axis = layer.channel_axis
        requests.append(StatisticRequest(_in_point(layer.name), x.name, (MEAN_PER_CHANNEL,),
                                         f"{layer.name}__fbc_input_stats", channel_axis=axis,
                                         inplace=config.inplace_statistics, shapes=True,
                                         after=layer.name))
        if not output_mean_follows(layer):
            requests.append(StatisticRequest(_out_point(layer.name), layer.name, (MEAN_PER_CHANNEL,),
                                             f"{layer.name}__fbc_output_stats", channel_axis=axis,
                                             inplace=config.inplace_statistics))
    return tuple(requests)


def run(model: fx.GraphModule, plan, statistics, config, *, data=None) -> fx.GraphModule:
    """Correct the bias of every candidate layer of the converted model."""
    applied = 0
    layers = candidates(model, config.apply_for_all_nodes)
    for layer in layers:
        if _in_point(layer.name) not in statistics.points():
            continue  # its input is a constant: nothing was observed (POT: not a candidate either)
        m_in = statistics.result(_in_point(layer.name), MEAN_PER_CHANNEL)
        m_out = (statistics.result(_out_point(layer.name), MEAN_PER_CHANNEL)
                 if _out_point(layer.name) in statistics.points() else None)  # None: b + W m_in
        shape = most_frequent_shape(batch_shapes(statistics, _in_point(layer.name)))
        update = correct_layer(model, layer, m_in, m_out, shape, threshold=config.resolved_threshold,
                               correct_zero_bias=config.correct_zero_bias, padding_fix=config.fast_bias_padding_fix)
        if update.applied:
            set_layer_tensor(model, layer, "bias", update.new_bias)
            applied += 1
    drop_unused_constants(model)
    logger.info("FastBiasCorrection: %d of %d layer(s) corrected", applied, len(layers))
    return model


ALGORITHM = Algorithm("FastBiasCorrection", enabled=lambda config: config.use_fast_bias,
                      statistic_points=statistic_points, apply=run)
