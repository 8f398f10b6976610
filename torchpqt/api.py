"""The public workflow: ``prepare`` → calibrate → ``convert``, ``quantize`` in one shot, ``plan`` to see
where FakeQuantize goes."""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx

from torchpqt.algorithms import overflow_correction
from torchpqt.algorithms.min_max import (
    QuantizationPoint,
    activation_params,
    broadcast_shape,
    rescaled_ops,
    resolve_points,
    unify,
    weight_params,
)
from torchpqt.calibration import calibrate, calibration_batches, check_statistics_finite
from torchpqt.config import DefaultQuantizationConfig, load_config
from torchpqt.errors import TorchPQTError
from torchpqt.graph.capture import capture
from torchpqt.graph.placement import place
from torchpqt.graph.view import GraphView, const_value
from torchpqt.hardware import load_hardware_config
from torchpqt.observer import Observer
from torchpqt.quant.fake_quantize import FakeQuantize
from torchpqt.statistics.collector import TensorStatistics

logger = logging.getLogger("torchpqt")
__all__ = ["QuantizationPlan", "convert", "plan", "prepare", "quantize"]

_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message)


def _announce_pending(config: DefaultQuantizationConfig) -> None:
    """Sub-algorithms that later releases add; the config may ask for them: say so, once."""
    if config.use_fast_bias:
        _warn_once("fbc", "use_fast_bias=true: fast bias correction is not implemented yet; this run "
                          "applies MinMaxQuantization only (no bias correction, no activation channel "
                          "alignment)")
    else:
        _warn_once("bc", "use_fast_bias=false: BiasCorrection is not implemented yet; running "
                         "MinMaxQuantization only")
    if config.use_layerwise_tuning:
        _warn_once("lt", "use_layerwise_tuning: layerwise tuning is not implemented yet; running "
                         "MinMaxQuantization only")


@dataclass(frozen=True)
class _SiteRecord:
    group: str
    consumer_types: list


@dataclass(frozen=True)
class _PointRecord:
    """A QuantizationPoint as saved with a model: everything but the graph nodes."""

    name: str
    module_name: str
    spec: object
    output_scale: float
    unify_group: int | None
    site: _SiteRecord

    @property
    def group(self) -> str:
        return self.site.group


@dataclass
class QuantizationPlan:
    """Where each FakeQuantize goes and why other ops got none; ``str()`` prints a table."""

    points: list[QuantizationPoint]
    skipped: dict[str, str]
    ignored: dict[str, str]
    scopes: list[str]
    overflow_probes: dict[str, str] = field(default_factory=dict)  # weight FQ name -> probe module (GNA)

    def __deepcopy__(self, memo):
        # shared between the prepared and the converted model: its points hold the prepared graph's nodes,
        # which convert() maps to the copy by node name
        return self

    def __reduce__(self):
        # torch.save(qmodel): keep what describes the FakeQuantize modules, not the capture-time graph nodes
        records = [_PointRecord(p.name, p.module_name, p.spec, p.output_scale, p.unify_group,
                                _SiteRecord(p.group, list(p.site.consumer_types))) for p in self.points]
        return (QuantizationPlan, (records, self.skipped, self.ignored, self.scopes, self.overflow_probes))

    def __str__(self) -> str:
        rows = [f"{'FakeQuantize':<48} {'group':<11} {'levels':>10} {'mode':<10} {'granularity':<11} consumers"]
        for p in self.points:
            rows.append(f"{p.name:<48} {p.group:<11} {p.spec.levels:>10} {p.spec.mode:<10} "
                        f"{p.spec.granularity:<11} {','.join(p.site.consumer_types)}"
                        + ("  (saturation fix)" if p.output_scale != 1.0 else "")
                        + (f"  (unified #{p.unify_group})" if p.unify_group is not None else ""))
        for title, table in (("skipped", self.skipped), ("ignored", self.ignored)):
            for scope, why in table.items():
                rows.append(f"{title}: {scope}  ({why})")
        return "\n".join(rows)


def _config(config, target_device: str | None) -> DefaultQuantizationConfig:
    cfg = load_config(config)
    if target_device is not None and target_device != cfg.target_device:
        cfg = cfg.replace(target_device=target_device)
    return cfg


def _plan(model: torch.nn.Module, example_inputs, cfg) -> tuple[fx.GraphModule, GraphView, QuantizationPlan]:
    gm = capture(model, example_inputs)
    hw = load_hardware_config(cfg.target_device)
    view = GraphView(gm, frozenset(hw.ops))
    placement = place(view, hw, cfg)
    points = resolve_points(placement, hw, cfg)
    rescale = rescaled_ops(view, cfg)
    taken = set(dict(gm.named_modules())) | set(dict(gm.named_parameters())) | set(dict(gm.named_buffers()))
    for p in points:
        base, i = p.module_name, 1
        while p.module_name in taken:  # sanitized names can collide (`a.b/x` vs `a_b/x`)
            p.module_name, i = f"{base}_{i}", i + 1
        taken.add(p.module_name)
    for p in points:
        if p.group == "weights" and p.site.edges[0].consumer in rescale:
            p.output_scale = 2.0
    scopes = sorted({view.scope_of(n) for n in view.ops if not view.is_const(n)})
    qplan = QuantizationPlan(points, {view.scope_of(n): r for n, r in placement.skipped.items()},
                             {view.scope_of(n): r for n, r in placement.ignored.items()}, scopes)
    return gm, view, qplan


def plan(model: torch.nn.Module, example_inputs, config=None, target_device: str | None = None
         ) -> QuantizationPlan:
    """Show where ``prepare`` would put FakeQuantize, with POT-style names, and the scope names that
    ``ignored.scope`` accepts."""
    return _plan(model, example_inputs, _config(config, target_device))[2]


def _order(gm: fx.GraphModule) -> dict[fx.Node, int]:
    return {n: i for i, n in enumerate(gm.graph.nodes)}


def prepare(model: torch.nn.Module, example_inputs, config=None, target_device: str | None = None
            ) -> fx.GraphModule:
    """Capture ``model`` and insert an observer at every activation FakeQuantize point.

    Args:
        model: the FP32 model; never modified (a copy is captured, in eval mode).
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs.
        config: ``{"name": "DefaultQuantization", "params": {...}}``, the params dict, or a
            :class:`DefaultQuantizationConfig`; None means all defaults.
        target_device: overrides ``config.target_device`` (CPU, ANY, GPU, GNA, GNA3, GNA3.5, CPU_SPR).

    Returns:
        A GraphModule taking the model's inputs. Run calibration data through it (under no_grad),
        then call :func:`convert`.
    """
    cfg = _config(config, target_device)
    _announce_pending(cfg)
    gm, _, qplan = _plan(model, example_inputs, cfg)
    order = _order(gm)
    for p in qplan.points:
        if p.group == "weights":
            continue
        specs = [s for s in (p.stat_min, p.stat_max) if s is not None]
        gm.add_submodule(p.module_name, Observer(p.name, TensorStatistics(specs, channel_axis=1,
                                                                          inplace=cfg.inplace_statistics)))
        first = min((e.consumer for e in p.site.edges), key=order.__getitem__)
        with gm.graph.inserting_before(first):
            obs = gm.graph.call_module(p.module_name, (p.site.tensor,))
        for e in p.site.edges:
            e.rewire(obs)
    _insert_overflow_probes(gm, qplan, cfg)
    gm.graph.lint()
    gm.recompile()
    gm.torchpqt_plan = qplan
    gm.torchpqt_config = cfg
    logger.info("prepared %d FakeQuantize points (%d activations)", len(qplan.points),
                sum(p.group != "weights" for p in qplan.points))
    return gm


def _insert_overflow_probes(gm: fx.GraphModule, qplan: QuantizationPlan, cfg) -> None:
    """GNA: observe the output of each op OverflowCorrection checks (a probe node nobody reads)."""
    for p in overflow_correction.candidates(qplan.points, cfg):
        op = p.site.edges[0].consumer
        name = f"{p.module_name}__overflow_stats"
        gm.add_submodule(name, Observer(f"{p.name} output", TensorStatistics([overflow_correction.OUTPUT_STAT])))
        with gm.graph.inserting_after(op):
            gm.graph.call_module(name, (op,))
        qplan.overflow_probes[p.name] = name


def _overflow_correction(prepared, qplan: QuantizationPlan, params: dict) -> dict[str, float]:
    """Apply OverflowCorrection to ``params`` in place; returns the weight divisor of each corrected FQ."""
    divisors = {}
    points = {p.name: p for p in qplan.points}
    for name, probe in qplan.overflow_probes.items():
        p = points[name]
        out_max = float(np.max(prepared.get_submodule(probe).stats.result(overflow_correction.OUTPUT_STAT)))
        inputs = overflow_correction.input_points(p.site.edges[0].consumer, qplan.points)
        r = overflow_correction.rescale(params[name], [params[q.name] for q in inputs], out_max)
        if r is not None:
            params[name] = overflow_correction.apply(params[name], r)
            divisors[name] = r
            logger.info("OverflowCorrection: %s weights divided by %.4g", name, r)
    return divisors


def _nodes(gm: fx.GraphModule) -> dict[str, fx.Node]:
    return {n.name: n for n in gm.graph.nodes}


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


def convert(prepared: fx.GraphModule) -> fx.GraphModule:
    """Replace observers by :class:`torchpqt.FakeQuantize` modules and quantize the weights.

    Returns:
        A new GraphModule (``prepared`` is left as it is) computing the fake-quantized model, with
        attributes ``torchpqt_config`` (the POT params dict) and ``torchpqt_plan``.
    """
    qplan: QuantizationPlan | None = getattr(prepared, "torchpqt_plan", None)
    if qplan is None:
        raise TorchPQTError("convert() needs a model returned by torchpqt.prepare()")
    for p in qplan.points:
        if p.group != "weights" and prepared.get_submodule(p.module_name).stats.num_batches == 0:
            raise TorchPQTError(f"no calibration data reached {p.name!r}: run calibration batches through the "
                                "prepared model (under torch.no_grad()) before convert()")
    check_statistics_finite(prepared, qplan.points)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's pytree spec deprecation noise on copy
        qm = copy.deepcopy(prepared)
    nodes = _nodes(qm)
    weights = {p.name: const_value(qm, nodes[p.site.tensor.name]) for p in qplan.points if p.group == "weights"}
    params = {}
    for p in qplan.points:
        if p.group != "weights":
            params[p.name] = activation_params(p, prepared.get_submodule(p.module_name).stats)
        else:
            params[p.name] = weight_params(weights[p.name], p)
    unify(qplan.points, params)
    divisors = _overflow_correction(prepared, qplan, params)
    for probe in qplan.overflow_probes.values():  # statistics only: not part of the converted model
        for node in [n for n in qm.graph.nodes if n.op == "call_module" and n.target == probe]:
            qm.graph.erase_node(node)
        delattr(qm, probe)
    for p in qplan.points:
        fq_params = params[p.name]
        if p.group != "weights":
            obs = prepared.get_submodule(p.module_name)
            shape = broadcast_shape(p, fq_params, obs.ndim or 2)
            qm.add_submodule(p.module_name, FakeQuantize.from_params(fq_params, shape))
        else:
            w = weights[p.name]
            fq = FakeQuantize.from_params(fq_params, broadcast_shape(p, fq_params, w.dim()))
            _install_weight_fq(qm, nodes, p, w, fq, divisors.get(p.name, 1.0))
    qm.graph.lint()
    qm.recompile()
    qm.torchpqt_plan = qplan
    qm.torchpqt_config = {"name": "DefaultQuantization",
                          "params": prepared.torchpqt_config.to_dict(full=True)}
    return qm


def quantize(model: torch.nn.Module, calibration_data: Iterable, config=None, *, example_inputs=None,
             target_device: str | None = None, transform_fn: Callable[[Any], Any] | None = None,
             progress: bool | None = None) -> fx.GraphModule:
    """Quantize ``model`` in one call: capture, calibrate on ``calibration_data``, convert.

    Args:
        model: the FP32 model; never modified.
        calibration_data: any iterable (a DataLoader, a Dataset, a list). Each item is a tensor (with a
            batch dimension), a tuple of positional inputs, a dict of keyword inputs, or anything
            ``transform_fn`` maps to those. ``stat_subset_size`` counts samples, not items.
        config: see :func:`prepare`.
        example_inputs: inputs for capture; default: the first calibration batch.
        target_device: overrides ``config.target_device``.
        transform_fn: maps an item to model inputs, e.g. ``lambda item: item[0]`` for ``(x, label)``.
        progress: show a progress bar (default: only when stderr is a terminal).

    Returns:
        The fake-quantized model (see :func:`convert`).
    """
    cfg = _config(config, target_device)
    batches = calibration_batches(calibration_data, cfg, transform_fn)
    first = next(batches, None)
    if first is None:
        raise TorchPQTError("calibration_data yielded no sample; pass a non-empty iterable")
    if example_inputs is None:
        args, kwargs = first
        example_inputs = kwargs if kwargs and not args else args
    prepared = prepare(model, example_inputs, cfg)
    total = len(calibration_data) if hasattr(calibration_data, "__len__") else None  # items, ~samples
    if cfg.stat_subset_size is not None:
        total = cfg.stat_subset_size if total is None else min(total, cfg.stat_subset_size)

    def all_batches():
        yield first
        yield from batches

    calibrate(prepared, all_batches(), total=total, progress=progress)
    return convert(prepared)
