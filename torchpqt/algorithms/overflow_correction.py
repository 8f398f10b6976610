"""OverflowCorrection (spec §10.4), GNA targets only: keep a weighted op's integer accumulator inside int32.

POT: algorithms/quantization/overflow_correction/{algorithm,utils}.py. For every Convolution / MatMul (and
the other weighted types) whose weights are quantized with more than 255 levels:

* ``out_max`` = max over samples of the per-sample abs-max of the op's FP32 output (after the bias),
* ``w_scale`` = max over channels of ``(oh - ol) / (L - 1)`` of its weight FakeQuantize,
* ``in_scale`` = the largest such scale among the activation FakeQuantize found walking up its inputs;

if ``int(out_max / (in_scale * w_scale)) > 2**31 - 1``, with ``r`` = that ratio / (2**31 - 1), the
stored weights become ``W / r`` and the weight FakeQuantize's ``ol``, ``oh`` are multiplied by ``r``.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
from torch import fx

from torchpqt.quant.params import FQParams
from torchpqt.statistics.estimators import StatSpec

logger = logging.getLogger("torchpqt")

DEVICES = ("GNA", "GNA3", "GNA3.5")
# POT: statistics/functions/activations.py::abs_max_per_tensor, reduced with np.max over all batches.
OUTPUT_STAT = StatSpec(side="max", type="abs_max", aggregator="max", granularity="pertensor")
_INT32_MAX = np.iinfo(np.int32).max
_WEIGHTED = ("Convolution", "DepthWiseConvolution", "GroupConvolution", "ConvolutionBackpropData",
             "GroupConvolutionBackpropData", "MatMul")


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
