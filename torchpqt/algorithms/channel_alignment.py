"""ActivationChannelAlignment (spec §10.3): equalize the per-channel ranges of a tensor that runs linearly
from one conv into the next, without changing the FP32 function.

POT: algorithms/quantization/channel_alignment/algorithm.py. A pair ``(producer, consumer)`` qualifies when

* the consumer is a Convolution with groups 1, all pads 0, strides 1 and dilations 1 (POT does not ask for a
  1x1 kernel: any kernel without padding qualifies, see check_conv_node), with a constant weight;
* its input comes straight from a Convolution (grouped and depthwise too: POT's graph types them
  Convolution) with a constant weight (its bias, if any, is part of the producer here: the captured graph
  fuses it into the op), and
* that tensor has exactly one consumer.

Statistics (pass 1, on the FP32 model): per sample, the per-channel 1e-4 and 1-1e-4 quantiles of the
producer's output (after its bias), aggregated with the median over samples (:data:`RANGE_MIN`,
:data:`RANGE_MAX`). With ``scale = amax - amin`` and ``mean = (amin + amax) / 2``:

* mean alignment, only where both biases exist (a Convolution always has one for POT, which inserts zero
  biases, spec §7.1; a MatMul producer may not): ``b_in -= mean``,
  ``b_out += (sum over the kernel of W_out) @ mean``;
* scale alignment, if some ``scale > 0``: ``sf = clip(scale / median(scale[scale > 0]), 0.01, 100)``
  (1 where ``scale <= 0``), ``W_in /= sf`` along its output channels, ``b_in /= sf``, ``W_out *= sf``
  along its input channels (axis 1). POT skips this step when ``W_in``'s output-channel count differs from
  the statistic's channel count.

POT also accepts a MatMul producer. Its statistics are on axis 1 (the conv's channels) while a MatMul's
channels are its last axis, so POT then crashes on the bias shapes or changes the FP32 function; torchpqt
leaves such pairs alone (a deliberate difference).

The consumer is flagged ``need_rescale``: the driver adds it to the saturation fix (spec §4.6). Pairs are
aligned in the order of the consumer's name (POT sorts by IR node name); results do not depend on it.
Each step rounds to float32, as POT stores each intermediate constant.

Driver interface (pass 1, on the FP32 captured graph, before FakeQuantize placement)::

    pairs = find_pairs(gm)
    # collect RANGE_MIN and RANGE_MAX (channel axis 1) at each pair.producer.node over the subset
    rescale = apply(gm, pairs, {p.producer.name: (amin, amax) for p in pairs}, transforms)
    # the saturation fix also covers the convs named in `rescale`; the later statistics are those of the
    # aligned gm: POT's second pass on it (``alignment_pass: "separate"``), or by default taken in pass 1 with
    # the aligned tensors' statistics derived from `transforms` (torchpqt.statistics.affine)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import fx

from torchpqt.algorithms.base import Algorithm
from torchpqt.algorithms.layers import CONVOLUTION, Layer, drop_unused_constants, layer_of, set_layer_tensor
from torchpqt.observer import Observer, StatisticRequest
from torchpqt.statistics.estimators import StatSpec

__all__ = ["ALGORITHM", "RANGE_MAX", "RANGE_MIN", "Alignment", "AlignmentPair", "align", "align_pair", "apply", "find_pairs"]

logger = logging.getLogger("torchpqt")

# POT: TensorStatistic(asf.quantile_per_channel, q=1e-4 / 1-1e-4), aggregated with agf.median.
RANGE_MIN = StatSpec(side="min", type="quantile", aggregator="median", granularity="perchannel",
                     outlier_prob=1e-4)
RANGE_MAX = StatSpec(side="max", type="quantile", aggregator="median", granularity="perchannel",
                     outlier_prob=1e-4)


@dataclass(frozen=True)
class AlignmentPair:
    """A producer whose output feeds only the consumer conv. Statistics go on ``producer.node``'s output
    (channel axis 1)."""

    producer: Layer
    consumer: Layer


@dataclass(frozen=True)
class Alignment:
    """New tensors for one pair (float32); a bias of None stays as it was (absent).

    ``a`` and ``b`` (float64 ``[C]``) say what the alignment does to the producer's output ``y``, channel by
    channel along axis 1: it becomes ``a * y + b`` in real arithmetic (the new constants round to float32).
    ``a = 1 / sf > 0`` (1 where scales are not aligned), ``b = -mean / sf`` where means are aligned, else 0.
    Every other tensor of the model keeps its value."""

    w_in: torch.Tensor
    b_in: torch.Tensor | None
    w_out: torch.Tensor
    b_out: torch.Tensor | None
    mean_aligned: bool
    scale_aligned: bool
    a: np.ndarray
    b: np.ndarray


def _flat(node: fx.Node) -> list:
    out = []
    fx.node.map_arg((node.args, node.kwargs), out.append)
    return out


def _observed_source(gm: fx.GraphModule, node: fx.Node) -> tuple[fx.Node, list[fx.Node]]:
    """The tensor an argument reads, seen through the inline observers a one-pass calibration left in the graph
    (they return their input), and those observers."""
    hops = []
    while (isinstance(node, fx.Node) and node.op == "call_module"
           and isinstance(gm.get_submodule(node.target), Observer)):
        hops.append(node)
        node = node.args[0]
    return node, hops


def find_pairs(gm: fx.GraphModule) -> list[AlignmentPair]:
    """The qualifying (producer, consumer) pairs of an FP32 captured graph, sorted by consumer name. Inline
    observers between the two (convert()'s working copy after a one-pass calibration) are looked through."""
    pairs = []
    for node in gm.graph.nodes:
        consumer = layer_of(gm, node)
        if consumer is None or consumer.type != CONVOLUTION or not consumer.pointwise_input:
            continue
        read = node.args[0]
        src, hops = _observed_source(gm, read)
        if not isinstance(src, fx.Node):
            continue
        producer = layer_of(gm, src)
        if producer is None or producer.type != CONVOLUTION:
            continue
        if any(len(n.users) != 1 for n in (src, *hops)) or sum(a is read for a in _flat(node)) != 1:
            logger.debug("channel alignment: %s has a producer that feeds many nodes", node.name)
            continue
        pairs.append(AlignmentPair(producer, consumer))
    return sorted(pairs, key=lambda p: p.consumer.name)


def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def align_pair(w_in: torch.Tensor, b_in: torch.Tensor | None, w_out: torch.Tensor, b_out: torch.Tensor | None,
               amin, amax, *, w_in_axis: int = 0) -> Alignment:
    """POT align_ranges for one pair: mean, then scale alignment.

    Args:
        w_in: producer weight (output channels on ``w_in_axis``); b_in: its bias ``[C]`` or None.
        w_out: consumer conv weight ``[Cout, C, *k]``; b_out: its bias ``[Cout]`` or None.
        amin, amax: the aggregated per-channel ranges ``[C]`` of the producer's output.
    """
    amin = np.asarray(amin, dtype=np.float64).reshape(-1)
    amax = np.asarray(amax, dtype=np.float64).reshape(-1)
    ascale, amean = amax - amin, (amin + amax) * 0.5
    wi = w_in.detach().cpu().numpy().astype(np.float32)
    wo = w_out.detach().cpu().numpy().astype(np.float32)
    bi = None if b_in is None else b_in.detach().cpu().numpy().astype(np.float32).reshape(-1)
    bo = None if b_out is None else b_out.detach().cpu().numpy().astype(np.float32).reshape(-1)
    mean_aligned = bi is not None and bo is not None
    sf = np.ones_like(ascale)
    if mean_aligned:
        # POT align_means: shift the producer's channels to zero mean, the consumer's bias takes it back
        bi = _f32(bi - amean)
        summed = wo.sum(axis=tuple(range(2, wo.ndim))) if wo.ndim > 2 else wo
        bo = _f32(bo + summed.astype(np.float64) @ amean)
    scale_aligned = bool(np.any(ascale > 0)) and wi.shape[w_in_axis] == ascale.shape[0]
    if scale_aligned:
        # POT align_scales
        sf = ascale / np.median(ascale[ascale > 0])
        sf[ascale <= 0] = 1
        sf = np.clip(sf, 1e-2, 1e2)
        view = [1] * wi.ndim
        view[w_in_axis] = -1
        wi = _f32(wi / sf.reshape(view))
        if bi is not None:
            bi = _f32(bi / sf)
        view = [1] * wo.ndim
        view[1] = -1
        wo = _f32(wo * sf.reshape(view))
    as_t = (lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a)))
    a = 1.0 / sf  # y' = (y - mean) / sf: the producer's weight and bias are divided by sf, its bias shifted first
    b = -amean * a if mean_aligned else np.zeros_like(amean)
    return Alignment(as_t(wi), as_t(bi), as_t(wo), as_t(bo), mean_aligned, scale_aligned, a, b)


def align(pair: AlignmentPair, amin, amax) -> Alignment:
    """:func:`align_pair` on a pair's current tensors. A Convolution without bias counts as a zero bias
    (POT inserted one); a MatMul producer without bias has none, so means are not aligned."""
    p, c = pair.producer, pair.consumer
    b_in = p.bias
    if b_in is None and p.type == CONVOLUTION:
        b_in = torch.zeros(p.out_channels)
    b_out = c.bias if c.bias is not None else torch.zeros(c.out_channels)
    return align_pair(p.weight, b_in, c.weight, b_out, amin, amax, w_in_axis=p.out_axis % p.weight.dim())


def apply(gm: fx.GraphModule, pairs: list[AlignmentPair], ranges: dict[str, tuple],
          transforms: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> set[str]:
    """Align every pair of ``gm`` in place (new constants; the old ones are left untouched).

    Args:
        gm: the FP32 captured graph ``pairs`` were found in (before any FakeQuantize).
        pairs: :func:`find_pairs` (their tensors are re-read, so chained pairs compose).
        ranges: producer node name -> ``(amin, amax)``, the :data:`RANGE_MIN` / :data:`RANGE_MAX` results.
        transforms: filled with producer node name -> ``(a, b)`` (:class:`Alignment`): its output becomes
            ``a * y + b``. Chained pairs compose: each aligned tensor moves by its own pair's map only.

    Returns:
        The consumer node names, for the saturation fix (POT ``need_rescale``).
    """
    rescale = set()
    for pair in pairs:
        producer = layer_of(gm, pair.producer.node)
        consumer = layer_of(gm, pair.consumer.node)
        amin, amax = ranges[producer.name]
        new = align(AlignmentPair(producer, consumer), amin, amax)
        set_layer_tensor(gm, producer, "weight", new.w_in.to(producer.weight.dtype))
        if new.b_in is not None:
            set_layer_tensor(gm, producer, "bias", new.b_in)
        set_layer_tensor(gm, consumer, "weight", new.w_out.to(consumer.weight.dtype))
        if new.b_out is not None:
            set_layer_tensor(gm, consumer, "bias", new.b_out)
        rescale.add(consumer.name)
        if transforms is not None:
            transforms[producer.name] = (new.a, new.b)
        logger.debug("channel alignment: %s -> %s (means %s, scales %s)", producer.name, consumer.name,
                     new.mean_aligned, new.scale_aligned)
    drop_unused_constants(gm)
    return rescale


# ---------------------------------------------------------------- the pipeline step


def captured_graph(plan) -> fx.GraphModule | None:
    """The captured graph a plan's points refer to (what ``prepare()`` planned on), or None for an empty plan."""
    for p in plan.points:
        return p.site.tensor.graph.owning_module
    return None


def _stats_point(producer: str) -> str:
    return f"{producer} (channel alignment)"


def statistic_points(plan, config) -> tuple[StatisticRequest, ...]:
    """Per-channel quantiles of every qualifying producer's output, on the FP32 model (POT's pass 1); none
    where no pair qualifies, so such models get no extra pass."""
    gm = captured_graph(plan)
    if gm is None:
        return ()
    return tuple(StatisticRequest(_stats_point(p.producer.name), p.producer.name, (RANGE_MIN, RANGE_MAX),
                                  f"{p.producer.name}__alignment_stats", channel_axis=1)
                 for p in find_pairs(gm))


def saturation_fix_active(config) -> bool:
    """POT set_rescaling_factors: need_rescale counts where the saturation fix runs (CPU/ANY, not ``no``)."""
    return config.target_device in ("CPU", "ANY") and config.saturation_fix in ("first_layer", "all")


def retarget_weights(model: fx.GraphModule, plan, rescale: set[str], config):
    """The plan after alignment: weight points read the new constants, and the aligned consumers get the
    saturation fix (POT need_rescale)."""
    nodes = {n.name: n for n in model.graph.nodes}
    active = saturation_fix_active(config)
    points = []
    for p in plan.points:
        if p.group == "weights":
            edge = p.site.edges[0]
            consumer = nodes[edge.consumer.name]
            current = consumer.args[edge.arg] if edge.sub is None else consumer.args[edge.arg][edge.sub]
            if isinstance(current, fx.Node) and current.name != p.site.tensor.name and len(p.site.edges) == 1:
                site = replace(p.site, tensor=current, edges=[replace(edge, producer=current, consumer=consumer)])
                p = replace(p, site=site)
            if active and consumer.name in rescale and p.output_scale == 1.0:
                p = replace(p, output_scale=2.0)
        points.append(p)
    return replace(plan, points=tuple(points))


def aligned_tensors(plan, config) -> tuple[str, ...]:
    """The tensors alignment changes (every qualifying producer's output), each by a per-channel increasing
    affine map along axis 1; every other tensor keeps its value."""
    gm = captured_graph(plan)
    return () if gm is None else tuple(p.producer.name for p in find_pairs(gm))


def run(model: fx.GraphModule, plan, statistics, config, *, data=None) -> fx.GraphModule:
    """Align every qualifying pair of the FP32 working copy; the plan follows the new weights and marks the
    consumers for the saturation fix. ``model.torchpqt_affine`` maps each aligned tensor to its ``(a, b)``."""
    pairs = find_pairs(model)
    if not pairs:
        return model
    ranges = {p.producer.name: (statistics.result(_stats_point(p.producer.name), RANGE_MIN),
                                statistics.result(_stats_point(p.producer.name), RANGE_MAX)) for p in pairs}
    transforms: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rescale = apply(model, pairs, ranges, transforms)
    model.torchpqt_affine = {**getattr(model, "torchpqt_affine", {}), **transforms}
    model.torchpqt_plan = retarget_weights(model, plan, rescale, config)
    logger.info("channel alignment: %d pair(s) aligned", len(pairs))
    return model


ALGORITHM = Algorithm("ActivationChannelAlignment", enabled=lambda config: True, statistic_points=statistic_points,
                      apply=run, new_pass_after=True, affine_tensors=aligned_tensors)
