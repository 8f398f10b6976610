"""MinMaxQuantization (spec §2 step 4): pick a config per FakeQuantize, name its statistics, and turn
statistics into FakeQuantize ranges (with the saturation fix and scale unification)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import fx

from torchpqt.graph.placement import FQSite, Placement
from torchpqt.graph.view import GraphView
from torchpqt.hardware import (
    HardwareConfig,
    consumer_candidates,
    resolve_spec,
    select_by_preset,
    select_unified,
    transformer_matmul_qconfig,
)
from torchpqt.quant.params import FQParams, fake_quantize_params, unify_params
from torchpqt.quant.spec import QuantSpec
from torchpqt.statistics.estimators import StatSpec, range_estimator
from torchpqt.statistics.reducers import weight_stat

__all__ = ["QuantizationPoint", "rescaled_ops", "resolve_points", "unify", "weight_params"]

_CONV = ("Convolution", "DepthWiseConvolution", "GroupConvolution")


@dataclass
class QuantizationPoint:
    """One FakeQuantize with everything decided except its numbers.

    Attributes:
        name: POT-style name, ``<consumer scope>/fq_input_<port>`` or ``.../fq_weights_<port>``.
        site: where it sits (tensor, consumer edges).
        spec: its grid (bits, mode, granularity, levels, signed).
        stat_min, stat_max: the statistics its range is computed from.
        unify_group: index of its scale-unification group, or None.
        output_scale: 2.0 for a saturation-fixed weight (stored weights become W/2), else 1.0.
    """

    name: str
    site: FQSite
    spec: QuantSpec
    stat_min: StatSpec | None
    stat_max: StatSpec
    unify_group: int | None = None
    output_scale: float = 1.0

    @property
    def group(self) -> str:
        return self.site.group

    module_name: str = ""  # the FakeQuantize's submodule name, unique in the model (set by the planner)

    def __post_init__(self) -> None:
        if not self.module_name:
            self.module_name = self.name.replace(".", "_").replace("/", "__").replace("-", "_") or "fq"


def _section(config, group: str) -> tuple[dict | None, dict | None]:
    """(the user's weights/activations section, the range estimator that applies to it)."""
    # POT reads an `outputs` section for GNA output FQs; torchpqt's config has none, so they take the
    # hardware configs and the global range estimator only.
    section = getattr(config, group, None) if group != "outputs" else None
    user = section.to_dict() if section is not None else None
    estimator = (user or {}).pop("range_estimator", None) if user else None
    if estimator is None and getattr(config, "range_estimator", None) is not None:
        estimator = config.range_estimator.to_dict()
    return user or None, estimator


def _point(site: FQSite, qconfig, config, estimator) -> QuantizationPoint:
    min_s, max_s = range_estimator(site.group, qconfig.mode, qconfig.granularity, estimator)
    if site.group == "activations" and config.model_type == "transformer" and site.act_matmul:
        # POT: the estimator was chosen for the original mode before the transformer switch (§5.4, §8).
        qconfig = transformer_matmul_qconfig(qconfig, config.target_device)
    return QuantizationPoint(site.name, site, resolve_spec(qconfig, site.group), min_s, max_s)


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
            points[i] = _point(placement.sites[i], qconfig, config, estimator)
            points[i].unify_group = gi
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
    if not any(info.type in _CONV for info in view.ops.values()):
        return set()
    if config.saturation_fix == "all":
        return {n for n, i in view.ops.items()
                if i.type in (*_CONV, "ConvolutionBackpropData", "MatMul") and i.weight_arg is not None}
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
            if info is not None and info.type in _CONV:
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


def activation_params(point: QuantizationPoint, stats) -> FQParams:
    """FakeQuantize ranges of an activation from its collected statistics (POT fill_fq_range)."""
    mn = stats.result(point.stat_min) if point.stat_min is not None else None
    mx = stats.result(point.stat_max)
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
    shape = [1] * max(rank, 2)
    axis = point.site.weight_axis % rank if point.group == "weights" else 1
    shape[axis] = size
    return tuple(shape)
