"""MinMaxQuantization (spec §2 step 4): pick a config per FakeQuantize, name its statistics, and turn
statistics into FakeQuantize ranges (with the saturation fix and scale unification).

As a pipeline step (:data:`ALGORITHM`): it asks for the range statistics of every activation FakeQuantize,
observed inline where the FakeQuantize will sit, then computes every range (weights from the constants
themselves), unifies scales and installs the FakeQuantize modules.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch
from torch import fx

from torchpqt.algorithms.base import Algorithm
from torchpqt.errors import TorchPQTError
from torchpqt.graph.ops import CONV_TYPES
from torchpqt.graph.placement import FQSite, Placement
from torchpqt.graph.view import GraphView, const_value
from torchpqt.hardware import (
    HardwareConfig,
    consumer_candidates,
    resolve_spec,
    select_by_preset,
    select_unified,
    transformer_matmul_qconfig,
)
from torchpqt.observer import StatisticRequest
from torchpqt.plan import QuantizationPlan, QuantizationPoint
from torchpqt.quant.fake_quantize import FakeQuantize
from torchpqt.quant.params import FQParams, fake_quantize_params, unify_params
from torchpqt.statistics.estimators import StatSpec, range_estimator
from torchpqt.statistics.reducers import weight_stat
from torchpqt.statistics.store import StatisticsStore

logger = logging.getLogger("torchpqt")

__all__ = ["ALGORITHM", "rescaled_ops", "resolve_points", "run", "statistic_points", "unify", "weight_params"]


def _section(config, group: str):
    """(the user's weights/activations section, the range estimator that applies to it), as the config's
    own dataclasses."""
    # POT reads an `outputs` section for GNA output FQs; torchpqt's config has none, so they take the
    # hardware configs and the global range estimator only.
    section = getattr(config, group, None) if group != "outputs" else None
    estimator = section.range_estimator if section is not None else None
    if estimator is None:
        estimator = getattr(config, "range_estimator", None)
    return section, estimator


def _point(site: FQSite, qconfig, config, estimator, unify_group: int | None = None) -> QuantizationPoint:
    min_s, max_s = range_estimator(site.group, qconfig.mode, qconfig.granularity, estimator)
    if site.group == "activations" and config.model_type == "transformer" and site.act_matmul:
        # POT: the estimator was chosen for the original mode before the transformer switch (§5.4, §8).
        qconfig = transformer_matmul_qconfig(qconfig, config.target_device)
    return QuantizationPoint(site.name, site, resolve_spec(qconfig, site.group), min_s, max_s, unify_group)


def resolve_points(placement: Placement, hw: HardwareConfig, config) -> list[QuantizationPoint]:
    """Choose the config, grid and statistics of every placed FakeQuantize (spec §3, §5.1, §5.4, §8)."""
    points: list[QuantizationPoint | None] = [None] * len(placement.sites)
    sections = {g: _section(config, g) for g in ("weights", "activations", "outputs")}
    for gi, members in enumerate(placement.unify_groups):
        user, estimator = sections["activations"]
        lists = [consumer_candidates(hw, placement.sites[i].consumer_types, "activations", user=user)
                 for i in members]
        qconfig = select_unified(lists, config.preset, True, primary_bitwidth=hw.primary_bitwidth)
        for i in members:
            points[i] = _point(placement.sites[i], qconfig, config, estimator, unify_group=gi)
    for i, site in enumerate(placement.sites):
        if points[i] is not None:
            continue
        user, estimator = sections[site.group]
        candidates = consumer_candidates(hw, site.consumer_types, site.group, user=user)
        points[i] = _point(site, select_by_preset(candidates, config.preset, site.group), config, estimator)
    return points


def rescaled_ops(view: GraphView, config) -> set[fx.Node]:
    """Ops whose weights get the saturation fix (spec §4.6, POT set_rescaling_factors)."""
    if config.target_device not in ("CPU", "ANY") or config.saturation_fix not in ("first_layer", "all"):
        return set()
    if not any(info.type in CONV_TYPES for info in view.ops.values()):
        return set()
    if config.saturation_fix == "all":
        return {n for n, i in view.ops.items()
                if i.type in (*CONV_TYPES, "ConvolutionBackpropData", "MatMul") and i.weight_arg is not None}
    # first_layer: every Convolution reachable from a network input without crossing another one.
    found, seen = set(), set()
    queue = [n for n in view.nodes if n.op == "placeholder"]
    while queue:
        node = queue.pop(0)
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            info = view.ops.get(user)
            if info is not None and info.type in CONV_TYPES:
                found.add(user)
            else:
                queue.append(user)
    return found


def weight_params(weight: torch.Tensor, point: QuantizationPoint) -> FQParams:
    """FakeQuantize ranges of a weight, from the constant itself (spec §4.5)."""
    w = weight.float()
    if w.dim() == 0:
        w = w.reshape(1)  # a scalar constant operand (the IR's 0-d Const)
    axis = point.site.weight_axis % max(w.dim(), 1)

    def stat(spec: StatSpec | None):
        if spec is None:
            return None
        return weight_stat(w, spec.type, spec.granularity, axis=axis, q=spec.q)

    mn, mx = stat(point.stat_min), stat(point.stat_max)
    return fake_quantize_params(mn, mx, point.spec, clip_min=_clip(point.stat_min),
                                clip_max=_clip(point.stat_max), output_scale=point.output_scale)


def activation_params(point: QuantizationPoint, statistics: StatisticsStore) -> FQParams:
    """FakeQuantize ranges of an activation from its collected statistics (POT fill_fq_range)."""
    mn = statistics.result(point.name, point.stat_min) if point.stat_min is not None else None
    mx = statistics.result(point.name, point.stat_max)
    return fake_quantize_params(mn, mx, point.spec, clip_min=_clip(point.stat_min),
                                clip_max=_clip(point.stat_max))


def _clip(spec: StatSpec | None) -> float | None:
    return None if spec is None else spec.clipping_value


def unify(points: list[QuantizationPoint], params: dict[str, FQParams]) -> None:
    """Scale unification (spec §4.7), in place on ``params``."""
    groups: dict[int, list[QuantizationPoint]] = {}
    for p in points:
        if p.unify_group is not None:
            groups.setdefault(p.unify_group, []).append(p)
    for members in groups.values():
        for p, new in zip(members, unify_params([params[m.name] for m in members])):
            params[p.name] = new


def broadcast_shape(point: QuantizationPoint, params: FQParams, rank: int) -> tuple[int, ...]:
    """Shape of the range tensors: 0-d per tensor; the channel axis of the weight / axis 1 of an
    activation per channel (POT broadcast_fq_values)."""
    size = int(np.asarray(params.input_low).size)
    if rank == 0 or np.asarray(params.input_low).ndim == 0 or (point.spec.granularity == "pertensor" and size == 1):
        return ()
    if point.group == "weights":  # the weight's own rank: a 1-D weight (a per-channel scale) keeps shape (C,)
        shape = [1] * rank
        axis = point.site.weight_axis % rank
    else:
        shape = [1] * max(rank, 2)
        axis = 1
    shape[axis] = size
    return tuple(shape)


# ---------------------------------------------------------------- the pipeline step


def statistic_points(plan: QuantizationPlan, config) -> tuple[StatisticRequest, ...]:
    """The range statistics of every activation FakeQuantize, observed where it will sit."""
    return tuple(
        StatisticRequest(p.name, p.site.tensor.name, tuple(s for s in (p.stat_min, p.stat_max) if s is not None),
                         p.module_name, tuple((e.consumer.name, e.arg, e.sub, e.port) for e in p.site.edges),
                         channel_axis=1, inplace=config.inplace_statistics)
        for p in plan.points if p.group != "weights")


def _install_weight_fq(qm: fx.GraphModule, nodes: dict[str, fx.Node], p: QuantizationPoint, weight: torch.Tensor,
                       fq: FakeQuantize, divisor: float = 1.0) -> None:
    edge = p.site.edges[0]
    consumer, tensor = nodes[edge.consumer.name], nodes[p.site.tensor.name]
    qm.add_submodule(p.module_name, fq)
    with qm.graph.inserting_before(consumer):
        src = tensor
        divisor = divisor * p.output_scale
        if divisor != 1.0:
            # POT: the saturation fix stores W/2 and doubles the FQ output range (spec §4.6);
            # OverflowCorrection stores W/r and multiplies it by r (spec §10.4).
            name = f"{p.module_name}_scaled_weight"
            scaled = weight / divisor
            qm.register_parameter(name, torch.nn.Parameter(scaled.contiguous(), requires_grad=False))
            src = qm.graph.get_attr(name)
        node = qm.graph.call_module(p.module_name, (src,))
    type(edge)(tensor, consumer, edge.arg, edge.sub, edge.port).rewire(node)
    if not tensor.users:
        qm.graph.erase_node(tensor)


def run(model: fx.GraphModule, plan: QuantizationPlan, statistics: StatisticsStore, config, *, data=None
        ) -> fx.GraphModule:
    """Compute every FakeQuantize's range, unify scales and install the FakeQuantize modules."""
    nodes = {n.name: n for n in model.graph.nodes}
    weights = {p.name: const_value(model, nodes[p.site.tensor.name]) for p in plan.points if p.group == "weights"}
    params = {}
    for p in plan.points:
        if p.group != "weights":
            params[p.name] = activation_params(p, statistics)
        else:
            params[p.name] = weight_params(weights[p.name], p)
    plan = _drop_unrepresentable(model, plan, params)
    unify(plan.points, params)
    for p in plan.points:
        fq_params = params[p.name]
        if p.group != "weights":
            shape = broadcast_shape(p, fq_params, statistics.rank(p.name) or 2)
            # replaces the inline observer of the pass that measured it: the FakeQuantize sits where it did
            model.add_submodule(p.module_name, FakeQuantize.from_params(fq_params, shape))
        else:
            w = weights[p.name]
            fq = FakeQuantize.from_params(fq_params, broadcast_shape(p, fq_params, w.dim()))
            _install_weight_fq(model, nodes, p, w, fq)
    model.torchpqt_fq_params = params
    model.torchpqt_plan = plan
    return model


_F32_MAX = float(np.finfo(np.float32).max)


def _representable(params: FQParams) -> bool:
    """Whether OpenVINO's FakeQuantize arithmetic, ``(x - il) / (ih - il)`` in float32, can hold the range."""
    il, ih = np.asarray(params.input_low, np.float64), np.asarray(params.input_high, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(il).all() and np.isfinite(ih).all() and (np.abs(ih - il) <= _F32_MAX).all())


def _drop_unrepresentable(model: fx.GraphModule, plan: QuantizationPlan, params: dict) -> QuantizationPlan:
    """Activation FakeQuantize whose range overflows float32 are not installed (the tensor stays float).

    Attention masks filled with ``finfo(float32).min`` (or -inf) reach an activation FakeQuantize on the
    Add of the scores where POT's transformer patterns are off (``model_type`` unset): its range becomes
    about ±3.4e38, ``ih - il`` overflows to inf, OpenVINO computes NaN and an 8-bit grid over it would
    collapse every real score to one level anyway. POT 2023.3 quantized it and produced a NaN IR."""
    dropped = {p.name for p in plan.points if p.group != "weights" and not _representable(params[p.name])}
    if not dropped:
        return plan
    skipped = dict(plan.skipped)
    for p in plan.points:
        if p.name not in dropped:
            continue
        if p.unify_group is not None:
            raise TorchPQTError(f"FakeQuantize {p.name!r}: its range [{float(np.min(params[p.name].input_low)):.3g}, "
                                f"{float(np.max(params[p.name].input_high)):.3g}] overflows float32 and it is unified "
                                "with others; add its consumer to ignored.scope")
        for node in [n for n in model.graph.nodes if n.op == "call_module" and n.target == p.module_name]:
            node.replace_all_uses_with(node.args[0])
            model.graph.erase_node(node)
        if hasattr(model, p.module_name):
            delattr(model, p.module_name)
        fq = params.pop(p.name)
        why = (f"no FakeQuantize: its calibrated range [{float(np.min(fq.input_low)):.3g}, "
               f"{float(np.max(fq.input_high)):.3g}] overflows float32 (an attention mask's finfo.min / -inf fill "
               "value reaches it); the tensor stays float")
        skipped[p.name] = why
        logger.info("%s: %s", p.name, why)
    model.graph.lint()
    model.recompile()
    return replace(plan, points=tuple(p for p in plan.points if p.name not in dropped), skipped=skipped)


ALGORITHM = Algorithm("MinMaxQuantization", enabled=lambda config: True, statistic_points=statistic_points,
                      apply=run)
