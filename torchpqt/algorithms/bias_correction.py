"""BiasCorrection (spec §10.2, ``use_fast_bias: false``): correct each layer's bias from the outputs of the
weight-quantized network, layer after layer, in topological order.

POT: algorithms/quantization/bias_correction/algorithm.py. It runs on its own subset, the first
``max(int(0.2 * stat_subset_size), 1)`` calibration samples (POT's sampler: seeded when ``shuffle_data``),
fed one by one.

* Layers: Convolution (groups 1) and MatMul with a quantized constant weight and a bias, in graph order
  (a bias-less Convolution counts: POT inserted a zero bias, which then fails the zero-element test).
* FP32 statistics, one pass over the subset (:func:`collect_fp32`): the per-channel mean of every
  layer's output (after its bias), and the FP32 input tensors of the layers a network input reaches first
  (POT ``batch_mean_param_in``).
* Per layer (:func:`plan_steps` decides the tensors), on the graph with every activation FakeQuantize
  removed and every weight FakeQuantize kept: run the part between the stored input tensors and (a) the
  layer's output, (b) the inputs of the next quantized layers below it (its "statistic nodes");
  ``shift = m_fp32 - mean(q_out)``, where ``q_out`` includes the current bias; ``b += shift`` if no
  bias element is 0 and ``max |shift / b| < threshold`` (default 1000); then the statistic nodes are
  recomputed with the new bias and stored as inputs for the layers below.

POT behaviours reproduced (and not obvious from the spec):

* The stored FP32 inputs of the layers a network input reaches first always win over propagated ones:
  a layer whose subgraph starts at such a tensor (e.g. the MLP after a transformer's attention block)
  sees FP32 inputs, not the quantized attention's outputs.
* A layer whose bias is not changed still propagates its weight-quantized outputs (POT meant to remove the
  FakeQuantize there, but passes nodes where names are expected and removes nothing).
* The walk down from a layer stops at a node with several parents when it is reached straight from a
  branching node (a weight FakeQuantize counts as a parent), and does not stop at grouped / depthwise
  convs, which are never corrected.
* ``apply_for_all_nodes`` makes every walk find no statistic node: each layer is then computed from the
  network inputs' FP32 tensors, with nothing propagated.

Memory: only the stored tensors a later layer still reads are kept (the FP32 entry tensors included),
one tensor per sample each.

The extension ``correct_zero_bias`` (default False: POT's skip) tests the threshold on the nonzero bias
elements only and gives a bias-less layer a bias (see :mod:`.fast_bias_correction`).

Driver interface::

    samples = bc_subset                     # list of (args, kwargs), one sample each, POT's 20 % subset
    updates = bias_correction.apply(qm, samples, threshold=cfg.resolved_threshold,
                                    apply_for_all_nodes=cfg.apply_for_all_nodes)

``qm`` is the converted model (FakeQuantize modules in place, biases after channel alignment); it is
modified in place (new bias constants).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx
from tqdm.auto import tqdm

from torchpqt.algorithms.base import Algorithm
from torchpqt.algorithms.fast_bias_correction import BiasUpdate, relative_change
from torchpqt.algorithms.layers import channel_mean, drop_unused_constants, layer_of, set_layer_tensor
from torchpqt.algorithms.subgraph import Evaluator, Topology, placeholder_values

__all__ = ["ALGORITHM", "DEFAULT_THRESHOLD", "FP32Statistics", "Plan", "Step", "apply", "collect_fp32", "correction",
           "plan_steps", "subset_size"]

logger = logging.getLogger("torchpqt")

DEFAULT_THRESHOLD = 1000.0
Sample = tuple[tuple, dict]


def subset_size(stat_subset_size: int) -> int:
    """POT: ``max(int(stat_subset_size * 0.2), 1)`` samples."""
    return max(int(stat_subset_size * 0.2), 1)


@dataclass(frozen=True)
class Step:
    """One layer: the stored tensors its subgraph starts from and the tensors it stores for later."""

    layer: fx.Node
    inputs: tuple[fx.Node, ...]
    stats: tuple[fx.Node, ...]


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    entries: tuple[fx.Node, ...]  # FP32 tensors recorded by collect_fp32 (POT batch_mean_param_in)


@dataclass
class FP32Statistics:
    entries: dict[fx.Node, list[torch.Tensor]]  # per sample
    means: dict[fx.Node, np.ndarray]  # layer -> per-channel mean of its FP32 output


def _main_layers(topo: Topology) -> list[fx.Node]:
    """POT _get_topological_biased_ops (the batch-1 check aside: torchpqt feeds single samples)."""
    out = []
    for node in topo.gm.graph.nodes:
        kind = topo.pot_type(node)
        if kind is None or not topo.quantized_weights(node):
            continue
        layer = layer_of(topo.gm, node)
        if layer is None:
            continue
        if kind == "Convolution" or layer.bias is not None:  # POT: a Convolution always has a bias Add
            out.append(node)
    return out


def _first_reached(topo: Topology) -> dict[fx.Node, fx.Node]:
    """POT _get_biased_after_params: the first Convolution / MatMul on each path from a network input,
    mapped to its input 0."""
    found: dict[fx.Node, fx.Node] = {}
    seen: set[fx.Node] = set()
    todo = [n for n in topo.gm.graph.nodes if n.op == "placeholder"]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        if topo.pot_type(node) is not None:
            found[node] = topo.input0(node)
            continue
        todo += topo.children(node)
    return found


def _subgraph(topo: Topology, main: fx.Node, collected: list[fx.Node], apply_for_all_nodes: bool
              ) -> tuple[list[fx.Node], list[fx.Node]]:
    """POT _get_subgraph_data_for_node: (input nodes, statistic nodes) of one layer; ``collected`` grows."""
    stats: list[fx.Node] = []
    checked: list[fx.Node] = []
    inputs: list[fx.Node] = []
    walked: set[tuple[fx.Node, bool]] = set()

    def down(node: fx.Node, branch: bool) -> None:
        if (node, branch) in walked:
            return
        walked.add((node, branch))
        if topo.pot_type(node) is not None and topo.quantized_weights(node) and not apply_for_all_nodes:
            src = topo.input0(node)
            if src not in stats:
                stats.append(src)
                checked.append(src)
                collected.append(src)
        elif branch and len(topo.parents(node)) > 1:
            return
        else:
            children = topo.children(node)
            for child in children:
                down(child, len(children) > 1)

    def up(node: fx.Node) -> None:
        if node in checked:
            return
        checked.append(node)
        if node in collected:
            if node not in inputs:
                inputs.append(node)
        else:
            for parent in topo.parents(node):
                up(parent)

    # POT walks from the bias Add below the op: the op's consumers are that Add's consumers
    children = topo.children(main)
    for child in children:
        down(child, len(children) > 1)
    for stat in stats or [main]:
        for parent in topo.parents(stat):
            up(parent)
    return inputs, stats


def plan_steps(qm: fx.GraphModule, apply_for_all_nodes: bool = False, topo: Topology | None = None) -> Plan:
    """The layers BiasCorrection corrects, in order, with the tensors each step reads and stores."""
    topo = topo or Topology(qm)
    mains = _main_layers(topo)
    first = _first_reached(topo)
    entries = []
    for node in mains:
        if node in first and first[node] not in entries:
            entries.append(first[node])
    collected = list(entries)
    steps = []
    for node in mains:
        inputs, stats = _subgraph(topo, node, collected, apply_for_all_nodes)
        steps.append(Step(node, tuple(inputs), tuple(stats)))
    return Plan(tuple(steps), tuple(entries))


def _channel_means(y: torch.Tensor, axis: int) -> torch.Tensor:
    return channel_mean(y, axis)


@torch.no_grad()
def collect_fp32(qm: fx.GraphModule, samples: Sequence[Sample], plan: Plan, topo: Topology | None = None
                 ) -> FP32Statistics:
    """One FP32 pass over the subset: the entry tensors (per sample) and each layer's output mean."""
    topo = topo or Topology(qm)
    ev = Evaluator(topo, fp32=True)
    layers = [s.layer for s in plan.steps]
    nodes = ev.needed([*plan.entries, *layers], ())
    axes = {s.layer: layer_of(qm, s.layer).channel_axis for s in plan.steps}
    entries: dict[fx.Node, list[torch.Tensor]] = {e: [] for e in plan.entries}
    sums: dict[fx.Node, torch.Tensor] = {}
    for args, kwargs in samples:
        env = ev.evaluate(nodes, {}, placeholder_values(qm, args, kwargs))
        for e in plan.entries:
            entries[e].append(env[e].detach().clone())
        for node in layers:
            m = _channel_means(env[node], axes[node])
            sums[node] = m if node not in sums else sums[node] + m
    n = max(len(samples), 1)
    return FP32Statistics(entries, {k: (v / n).cpu().numpy() for k, v in sums.items()})


def correction(layer: str, bias: torch.Tensor | None, fp32_mean, q_mean, *, threshold: float = DEFAULT_THRESHOLD,
               correct_zero_bias: bool = False) -> BiasUpdate:
    """The per-layer math: ``shift = m_fp32 - mean(q_out)`` and POT's acceptance test.

    Args:
        layer: the layer's name (for the record).
        bias: the current bias ``[C]`` (None: a bias-less layer, POT's inserted zero bias).
        fp32_mean, q_mean: per-channel means ``[C]`` of the FP32 output and of the weight-quantized
            subgraph's output (which includes ``bias``).
    """
    shift = torch.as_tensor(np.asarray(fp32_mean, dtype=np.float64) - np.asarray(q_mean, dtype=np.float64))
    if bias is not None:
        shift = shift.to(bias.device)
    current = bias.double() if bias is not None else torch.zeros_like(shift)
    if shift.shape != current.shape:
        return BiasUpdate(layer, bias, None, float("inf"), False, "shift and bias shapes differ")
    new = (current + shift).to(torch.float32)
    magnitude = relative_change(current, shift, correct_zero_bias)
    if magnitude < threshold:
        return BiasUpdate(layer, bias, new, magnitude, True)
    reason = "zero bias element" if magnitude == float("inf") else f"threshold ({magnitude:.3g} >= {threshold:g})"
    return BiasUpdate(layer, bias, new, magnitude, False, reason)


def _feed(value: torch.Tensor) -> torch.Tensor:
    # POT _create_feed_dicts: np.mean(stat, axis=0, keepdims=True) of a stored batch
    if value.is_floating_point() and value.dim() > 0 and value.shape[0] > 1:
        return value.mean(0, keepdim=True)
    return value


@torch.no_grad()
def apply(qm: fx.GraphModule, samples: Sequence[Sample], *, threshold: float = DEFAULT_THRESHOLD,
          apply_for_all_nodes: bool = False, correct_zero_bias: bool = False,
          progress: bool | None = None) -> list[BiasUpdate]:
    """Run BiasCorrection on the converted model ``qm`` (modified in place).

    Args:
        qm: the converted model: weight and activation FakeQuantize in place, biases as channel alignment
            left them.
        samples: the BiasCorrection subset (:func:`subset_size` samples), each ``(args, kwargs)``.
        threshold: POT ``threshold`` (default 1000).
        apply_for_all_nodes: POT ``apply_for_all_nodes`` (see the module docstring).
        correct_zero_bias: the torchpqt extension (default: POT's skip).
        progress: a tqdm bar "bias correction" (default: only when stderr is a terminal).

    Returns:
        One :class:`BiasUpdate` per layer, in order.
    """
    samples = list(samples)
    topo = Topology(qm)
    plan = plan_steps(qm, apply_for_all_nodes, topo)
    fp32 = collect_fp32(qm, samples, plan, topo)
    placeholders = [placeholder_values(qm, a, k) for a, k in samples]
    stored: dict[fx.Node, list[torch.Tensor]] = dict(fp32.entries)
    entries = set(plan.entries)
    ev = Evaluator(topo)
    updates = []
    disable = (not sys.stderr.isatty()) if progress is None else not progress
    for k, step in enumerate(tqdm(plan.steps, desc="bias correction", unit="layer", disable=disable)):
        layer = layer_of(qm, step.layer)
        q_out, stat_values = _run_step(ev, step, stored, placeholders, layer.channel_axis)
        update = correction(layer.name, layer.bias, fp32.means[step.layer], q_out, threshold=threshold,
                            correct_zero_bias=correct_zero_bias)
        if update.applied and layer.bias is None and layer.bias_arg < 0:
            update = BiasUpdate(update.layer, None, update.new_bias, update.magnitude, False, "no bias argument")
        if update.applied:
            set_layer_tensor(qm, layer, "bias", update.new_bias)
            topo = Topology(qm)
            ev = Evaluator(topo)
            _, stat_values = _run_step(ev, step, stored, placeholders, layer.channel_axis)
            logger.debug("BiasCorrection: %s bias set, magnitude %.4g", layer.name, update.magnitude)
        else:
            logger.debug("BiasCorrection: %s skipped: %s", layer.name, update.reason)
        updates.append(update)
        for stat in step.stats:
            if stat not in entries:  # POT: the FP32 entry tensors win over propagated ones
                stored[stat] = stat_values[stat]
        later = {n for s in plan.steps[k + 1:] for n in s.inputs}
        for node in step.inputs:
            if node not in later:
                stored.pop(node, None)
    drop_unused_constants(qm)
    return updates


def _run_step(ev: Evaluator, step: Step, stored, placeholders, axis: int):
    """(mean over samples of the layer's per-channel output means, statistic-node values per sample)."""
    targets = [step.layer, *step.stats]
    nodes = ev.needed(targets, step.inputs)
    total = None
    stat_values: dict[fx.Node, list[torch.Tensor]] = {s: [] for s in step.stats}
    for i, ph in enumerate(placeholders):
        seeds = {}
        for node in step.inputs:
            if node not in stored:
                raise RuntimeError(f"BiasCorrection: no stored value for {node.name!r} (internal error)")
            seeds[node] = _feed(stored[node][i])
        env = ev.evaluate(nodes, seeds, ph)
        m = channel_mean(env[step.layer], axis)
        total = m if total is None else total + m
        for s in step.stats:
            stat_values[s].append(env[s].detach())
    return (total / max(len(placeholders), 1)).cpu().numpy(), stat_values


# ---------------------------------------------------------------- the pipeline step


def _subset(data) -> list[Sample]:
    """POT's BiasCorrection subset: ``max(int(0.2 * stat_subset_size), 1)`` samples of the calibration data,
    chosen by POT's sampler for that size, one per batch."""
    total = data.total()
    if total is None:  # an unsized iterable: count a pass
        total = sum(int(args[0].shape[0]) if args and args[0].dim() else 1 for args, _ in data.batches())
    return [tuple(b) for b in data.subset(subset_size(total), batch_size=1).batches()]


def run(model: fx.GraphModule, plan, statistics, config, *, data=None) -> fx.GraphModule:
    """BiasCorrection on the converted model, on its own subset of the calibration data."""
    from torchpqt.calibration import model_device, to_device

    device = model_device(model)
    samples = [to_device(s, device) for s in _subset(data)]
    updates = apply(model, samples, threshold=config.resolved_threshold,
                    apply_for_all_nodes=config.apply_for_all_nodes, correct_zero_bias=config.correct_zero_bias,
                    progress=getattr(data, "progress", None))
    logger.info("BiasCorrection: %d of %d layer(s) corrected on %d sample(s)", sum(u.applied for u in updates),
                len(updates), len(samples))
    return model


ALGORITHM = Algorithm("BiasCorrection", enabled=lambda config: not config.use_fast_bias,
                      statistic_points=lambda plan, config: (), apply=run, needs_data=True)
