"""OverflowCorrection (spec §10.4), GNA targets only: keep a weighted op's integer accumulator inside int32.

POT: algorithms/quantization/overflow_correction/{algorithm,utils}.py. For every Convolution / MatMul (and
the other weighted types) whose weights are quantized with more than 255 levels:

* ``out_max`` = max over samples of the per-sample abs-max of the op's FP32 output (after the bias),
* ``w_scale`` = max over channels of ``(oh - ol) / (L - 1)`` of its weight FakeQuantize,
* ``in_scale`` = the largest such scale among the activation FakeQuantize found walking up its inputs;

if ``int(out_max / (in_scale * w_scale)) > 2**31 - 1``, with ``r`` = that ratio / (2**31 - 1), the
stored weights become ``W / r`` and the weight FakeQuantize's ``ol``, ``oh`` are multiplied by ``r``.

As a pipeline step (:data:`ALGORITHM`, GNA targets only): it asks for ``out_max`` of each candidate op
(a probe on the op's output, in MinMaxQuantization's pass) and corrects the FakeQuantize MinMaxQuantization
installed.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch
from torch import fx

from torchpqt.algorithms.base import Algorithm
from torchpqt.algorithms.min_max import broadcast_shape
from torchpqt.constants import GNA_DEVICES
from torchpqt.graph.ops import WEIGHTED_TYPES
from torchpqt.graph.view import const_value
from torchpqt.observer import StatisticRequest
from torchpqt.quant.fake_quantize import FakeQuantize
from torchpqt.quant.params import FQParams
from torchpqt.statistics.estimators import StatSpec

logger = logging.getLogger("torchpqt")

DEVICES = GNA_DEVICES
# POT: statistics/functions/activations.py::abs_max_per_tensor, reduced with np.max over all batches.
OUTPUT_STAT = StatSpec(side="max", type="abs_max", aggregator="max", granularity="pertensor")
_INT32_MAX = np.iinfo(np.int32).max
_WEIGHTED = WEIGHTED_TYPES


def candidates(points, config) -> list:
    """Weight points OverflowCorrection looks at (more than 255 levels, on a weighted op)."""
    if config.target_device not in DEVICES:
        return []
    return [p for p in points if p.group == "weights" and p.spec.levels > np.iinfo(np.uint8).max
            and p.site.consumer_types[0] in _WEIGHTED]


def _scale(params: FQParams) -> float:
    # POT: utils.py::compute_scale, on the output range
    return float(np.max((params.output_high - params.output_low) / (params.levels - 1)))


def input_points(op: fx.Node, points) -> list:
    """POT get_propagated_input_fq: the activation FakeQuantize reached walking up the op's non-constant
    inputs (through any op) until one is found on each path."""
    by_edge = {(e.producer, e.consumer): p for p in points if p.group != "weights" for e in p.site.edges}
    weights = {p.site.tensor for p in points if p.group == "weights"}
    found, stack, seen = [], [op], set()
    while stack:
        node = stack.pop()
        for parent in node.all_input_nodes:
            if parent.op == "call_module" and parent.args:  # an observer prepare() inserted
                parent = parent.args[0]
            if parent in weights or parent.op == "get_attr" or (parent, node) in seen:
                continue
            seen.add((parent, node))
            point = by_edge.get((parent, node))
            if point is not None:
                found.append(point)
            elif parent.op == "call_function":
                stack.append(parent)
    return list({id(p): p for p in found}.values())


def rescale(weight: FQParams, inputs: list[FQParams], out_max: float) -> float | None:
    """The factor ``r`` (or None when the int32 accumulator does not overflow / nothing is known)."""
    if not inputs:
        return None
    in_scale = max(_scale(p) for p in inputs)
    ratio = int(out_max / (in_scale * _scale(weight)))
    return ratio / _INT32_MAX if ratio > _INT32_MAX else None


def apply(weight: FQParams, r: float) -> FQParams:
    """The weight FakeQuantize after correction (the caller stores ``W / r``)."""
    return replace(weight, output_low=weight.output_low * r, output_high=weight.output_high * r)


# ---------------------------------------------------------------- the pipeline step


def _output_point(p) -> str:
    return f"{p.name} output"


def statistic_points(plan, config) -> tuple[StatisticRequest, ...]:
    """``out_max`` of every candidate op: a probe on its output (nothing reads it)."""
    return tuple(StatisticRequest(_output_point(p), p.site.edges[0].consumer.name, (OUTPUT_STAT,),
                                  f"{p.module_name}__overflow_stats") for p in candidates(plan.points, config))


def _store_scaled_weight(model: fx.GraphModule, p, r: float) -> torch.Tensor:
    """Feed the weight FakeQuantize ``W / r`` (a new parameter) instead of ``W``; returns ``W``."""
    fq_node = next(n for n in model.graph.nodes if n.op == "call_module" and n.target == p.module_name)
    src = fq_node.args[0]
    weight = const_value(model, src)
    name = f"{p.module_name}_scaled_weight"
    model.register_parameter(name, torch.nn.Parameter((weight / r).contiguous(), requires_grad=False))
    with model.graph.inserting_before(fq_node):
        scaled = model.graph.get_attr(name)
    fq_node.replace_input_with(src, scaled)
    if not src.users:
        model.graph.erase_node(src)
    return weight


def run(model: fx.GraphModule, plan, statistics, config, *, data=None) -> fx.GraphModule:
    """Correct the weight FakeQuantize (and stored weights) of every op whose int32 accumulator overflows."""
    params = model.torchpqt_fq_params
    for p in candidates(plan.points, config):
        out_max = float(np.max(statistics.result(_output_point(p), OUTPUT_STAT)))
        inputs = input_points(p.site.edges[0].consumer, plan.points)
        r = rescale(params[p.name], [params[q.name] for q in inputs], out_max)
        if r is None:
            continue
        params[p.name] = apply(params[p.name], r)
        logger.info("OverflowCorrection: %s weights divided by %.4g", p.name, r)
        weight = _store_scaled_weight(model, p, r)
        model.add_submodule(p.module_name,
                            FakeQuantize.from_params(params[p.name], broadcast_shape(p, params[p.name], weight.dim())))
    return model


ALGORITHM = Algorithm("OverflowCorrection", enabled=lambda config: config.target_device in DEVICES,
                      statistic_points=statistic_points, apply=run)
