"""Where FakeQuantize goes (spec §7): POT's InsertFakeQuantize, FakeQuantizePropagation and
FakeQuantizeOptimization passes, on a captured torch graph seen in OpenVINO terms."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import fx

from torchpqt.graph.ignored import match_ignored
from torchpqt.graph.ops import (
    AGNOSTIC_TYPES,
    MULTI_BRANCH_TYPES,
)
from torchpqt.graph.patterns import skipped_ops
from torchpqt.graph.view import RESULT, Edge, GraphView
from torchpqt.hardware import HardwareConfig

__all__ = ["FQSite", "Placement", "place"]


@dataclass
class FQSite:
    """One FakeQuantize before configs are chosen: the tensor it quantizes and the edges it feeds."""

    group: str  # "weights", "activations" or "outputs" (GNA: an FQ on an op's output)
    tensor: fx.Node
    edges: list[Edge]
    name: str = ""
    consumer_types: list[str] = field(default_factory=list)
    act_matmul: bool = False  # feeds an activation x activation MatMul (transformer rule, §8)
    weight_axis: int = 0


@dataclass
class Placement:
    """The outcome of placement: FQ sites, unification groups, and why other ops got no FQ."""

    sites: list[FQSite]
    unify_groups: list[list[int]]
    skipped: dict[fx.Node, str]
    ignored: dict[fx.Node, str]


def _quantizable(view: GraphView, hw: HardwareConfig, node: fx.Node) -> bool:
    kind = view.type_of(node)
    rule = hw.ops.get(kind)
    return rule is not None and rule.quantizable and kind not in AGNOSTIC_TYPES


def _quantizable_result(hw: HardwareConfig) -> bool:
    rule = hw.ops.get(RESULT)
    return rule is not None and bool(rule.activations)


def _agnostic(view: GraphView, node: fx.Node) -> bool:
    return view.type_of(node) in view.agnostic_types


def _requested_edges(view: GraphView, hw: HardwareConfig, node: fx.Node) -> list[Edge]:
    """POT InsertFakeQuantize: which input ports of a quantizable op get an FQ."""
    info = view.ops[node]
    wanted = set(info.act_args) | ({info.weight_arg} if info.weight_arg is not None else set())
    edges = [e for e in view.inputs(node) if e.arg in wanted]  # ports: graph/ops.py (input-only ops: port 0)
    rule = hw.ops[info.type]
    keep = []
    for e in edges:
        if not view.is_float(e.producer):
            continue  # POT: FQs on int32/int64/bool tensors are removed
        if view.is_shape_derived(e.producer):
            continue  # a constant once shapes are static (position biases, masks built from sizes)
        group = "weights" if view.is_const(e.producer) else "activations"
        if getattr(rule, group):
            keep.append(e)
    return keep


def _initial_sites(view, hw, blocked) -> tuple[list[Edge], list[Edge]]:
    acts, weights = [], []
    for node in view.ops:
        if node in blocked or view.is_const(node) or not _quantizable(view, hw, node):
            continue
        for e in _requested_edges(view, hw, node):
            (weights if view.is_const(e.producer) else acts).append(e)
    if _quantizable_result(hw):  # GNA quantizes the network outputs too
        out = next(n for n in view.gm.graph.nodes if n.op == "output")
        acts += [e for e in view.inputs(out) if view.is_float(e.producer) and not view.is_const(e.producer)]
    return acts, weights


# POT insert_output_fake_quantize: activation-like producers and inputs win a merge over inputs FQs of
# equal priority (fq_config_priority).
_ACTIVATION_PRODUCERS = frozenset({"Power", "Sigmoid", "Tanh", "ReLU", "PReLU", "Clamp", "Log", "Abs", "Exp",
                                   "Sign", "SoftSign", "Parameter"})


def _output_sites(view, hw, blocked) -> dict[fx.Node, list[Edge]]:
    """GNA: FQs on the outputs of ops whose rule has an ``outputs`` config (POT insert_output_fake_quantize);
    for a conv/linear the output already includes the fused bias."""
    out: dict[fx.Node, list[Edge]] = {}
    for node in view.nodes:
        if node.op not in ("placeholder", "call_function") or node in blocked or view.is_const(node):
            continue
        rule = hw.ops.get(view.type_of(node))
        if rule is None or not rule.outputs or not view.is_float(node):
            continue
        edges = [e for e in view.outputs(node) if e.consumer not in blocked and e.consumer.op != "call_module"]
        if edges:
            out[node] = edges
    return out


def _skip_ascent(view: GraphView, fq_edges: set, blocked) -> Callable[[fx.Node], bool]:
    """POT _create_skip_ascent_map: an FQ may not jump over an agnostic op whose output reaches, through
    agnostic ops, a consumer that has no FQ on its input (it would see quantized values)."""
    memo: dict[fx.Node, bool] = {}

    def reaches_unquantized(node: fx.Node, seen: set) -> bool:
        for e in view.outputs(node):
            if e in fq_edges:
                continue
            c = e.consumer
            if c.op == "output" or view.type_of(c) == RESULT:
                continue
            if c.op == "call_module":
                return True
            if _agnostic(view, c) and c not in blocked:
                if c in seen:
                    continue
                seen.add(c)
                if reaches_unquantized(c, seen):
                    return True
                continue
            return True
        return False

    def skip(node: fx.Node) -> bool:
        if node not in memo:
            memo[node] = node in blocked or reaches_unquantized(node, {node})
        return memo[node]

    return skip


def _jump_targets(view: GraphView, node: fx.Node) -> list[Edge] | None:
    """Edges an FQ under agnostic ``node`` moves to (POT jump_to_first_input / jump_to_all_inputs /
    jump_to_all_branch_except_const), or None where it must stay."""
    edges = [e for e in view.inputs(node)]
    if view.type_of(node) in MULTI_BRANCH_TYPES:
        targets = [e for e in edges if not view.is_const(e.producer) and not view.is_shape_derived(e.producer)]
    else:
        targets = edges[:1]
    if not targets or any(not view.is_float(e.producer) or view.is_shape_derived(e.producer) for e in targets):
        return None
    return targets


def _weights_rule_below(view: GraphView, hw: HardwareConfig, node: fx.Node, blocked) -> bool:
    """Whether a quantizable op reached from ``node``'s outputs through agnostic ops has a weights rule."""
    types, _ = _valuable_consumers(view, hw, view.outputs(node), blocked)
    return any(hw.configs(t, "weights") for t in types)


def _moves_channel_axis(view: GraphView, node: fx.Node) -> bool:
    """A layout op whose output axis 1 is not its input's axis 1 (a permute to NCHW, a reshape that
    changes dim 1 or the rank)."""
    kind = view.type_of(node)
    if kind not in ("Transpose", "Reshape", "Squeeze", "Unsqueeze"):
        return False
    src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    vin, vout = (src.meta.get("val") if src is not None else None), node.meta.get("val")
    if kind == "Transpose":
        perm = node.args[1] if len(node.args) > 1 else None
        if isinstance(perm, (list, tuple)) and len(perm) > 1:
            return int(perm[1]) % len(perm) != 1
        if len(node.args) > 2:  # transpose(x, a, b)
            rank = vin.dim() if vin is not None and hasattr(vin, "dim") else 2
            return 1 in (int(node.args[1]) % rank, int(node.args[2]) % rank)
        return True  # .t() of a 2-D tensor
    if vin is None or vout is None or not hasattr(vin, "shape") or not hasattr(vout, "shape"):
        return True
    if vin.dim() < 2 or vout.dim() < 2 or vin.dim() != vout.dim():
        return True
    return str(vin.shape[1]) != str(vout.shape[1])


def _per_channel_below(view: GraphView, hw: HardwareConfig, node: fx.Node, blocked) -> bool:
    """Whether a quantizable op reached from ``node`` through agnostic ops takes per-channel activations
    (DepthWiseConvolution on CPU: q8_a_ch)."""
    types, _ = _valuable_consumers(view, hw, view.outputs(node), blocked)
    return any(c.granularity == "perchannel" for t in types for c in hw.configs(t, "activations"))


def _propagate(view: GraphView, hw: HardwareConfig, acts: list[Edge], blocked,
               covered: frozenset = frozenset()) -> tuple[list[Edge], list[Edge]]:
    """POT FakeQuantizePropagation: move activation FQs up through quantize-agnostic ops.

    ``covered``: edges that already carry an FQ (GNA output FQs); they stop nothing but count as quantized.

    Returns:
        (activation FQ edges, weight FQ edges): an FQ that jumps onto a constant input (the table of an
        embedding Gather) becomes a weights FQ there (POT jump_to_first_input). It jumps only where an op
        below has a weights rule: Gather -> ReduceMean (mean pooling) keeps its FQ on the Gather's output,
        where POT 2023.3 moved it onto the table and then failed for want of a weights config.
    """
    fq_edges, const_edges = set(acts), set()
    skip = _skip_ascent(view, set(acts) | set(covered), blocked)
    queue = deque(sorted(acts, key=lambda e: (e.consumer.name, e.port)))
    while queue:
        e = queue.popleft()
        if e not in fq_edges:
            continue
        producer = e.producer
        if producer.op != "call_function" or not _agnostic(view, producer) or skip(producer):
            continue
        targets = _jump_targets(view, producer)
        if targets is None:
            continue
        if any(view.is_const(t.producer) for t in targets) and not _weights_rule_below(view, hw, producer,
                                                                                      blocked):
            continue
        if _moves_channel_axis(view, producer) and _per_channel_below(view, hw, producer, blocked):
            continue  # a per-channel FQ (a depthwise conv's input) stays where axis 1 is the conv's channels
        fq_edges.discard(e)
        for t in reversed(targets):
            if view.is_const(t.producer):
                const_edges.add(t)
            elif t not in fq_edges:
                fq_edges.add(t)
                queue.appendleft(t)
    key = (lambda e: (e.consumer.name, e.port))
    return sorted(fq_edges, key=key), sorted(const_edges, key=key)


def _valuable_consumers(view, hw, edges, blocked) -> tuple[list[str], bool]:
    """POT _fake_quantize_to_types: quantizable ops reached from the FQ through agnostic ops."""
    types, act_matmul, seen = [], False, set()
    stack = list(edges)
    while stack:
        e = stack.pop(0)
        c = e.consumer
        if c.op == "output" and c not in seen and _quantizable_result(hw):
            seen.add(c)
            types.append(RESULT)
            continue
        if c in seen or c.op != "call_function":
            continue
        if _agnostic(view, c):
            seen.add(c)
            stack.extend(view.outputs(c))
            continue
        if c in blocked or not _quantizable(view, hw, c):
            continue
        seen.add(c)
        kind = view.type_of(c)
        types.append(kind)
        info = view.ops[c]
        if kind == "MatMul" and info.weight_arg is None:
            act_matmul = True
    return types, act_matmul


def _unify_groups(view: GraphView, hw: HardwareConfig, sites: list[FQSite]) -> list[list[int]]:
    """POT find_fqs_to_unify: the FQs above the inputs of a Concat that feeds a conv / matmul (walking up
    through quantize-agnostic ops and nested Concats) are unified, where the hardware rules give Concat
    ``unified_scales`` (CPU/GPU; not GNA)."""
    rule = hw.ops.get("Concat")
    if rule is None or not rule.unified_scales:
        return []
    by_edge = {e: i for i, s in enumerate(sites) if s.group != "weights" for e in s.edges}
    parent = list(range(len(sites)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    grouped = set()
    for node in view.ops:
        if view.type_of(node) != "Concat":
            continue
        feeds = _downstream_types(view, node)
        if not feeds & {"Convolution", "ConvolutionBackpropData", "MatMul"} or "DepthWiseConvolution" in feeds:
            continue
        members = _fqs_above(view, view.inputs(node), by_edge)
        if not members:
            continue
        for m in members[1:]:
            parent[find(m)] = find(members[0])
        grouped.update(members)
    groups: dict[int, list[int]] = {}
    for i in sorted(grouped):
        groups.setdefault(find(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def _fqs_above(view: GraphView, edges: list[Edge], by_edge: dict) -> list[int] | None:
    """The FQ sites that every one of ``edges`` leads up to through agnostic ops, or None if an input
    leads to anything else (a constant, a non-agnostic op without an FQ)."""
    found: list[int] = []
    for e in edges:
        while e not in by_edge:
            p = e.producer
            if p.op != "call_function" or view.is_const(p) or view.type_of(p) not in view.agnostic_types:
                return None
            inputs = [i for i in view.inputs(p) if not view.is_const(i.producer)]
            if view.type_of(p) == "Concat":
                nested = _fqs_above(view, inputs, by_edge)
                if nested is None:
                    return None
                found += nested
                break
            if not inputs:
                return None
            e = inputs[0]
        else:
            found.append(by_edge[e])
    return list(dict.fromkeys(found))


def _downstream_types(view: GraphView, node: fx.Node) -> set[str]:
    out, stack, seen = set(), [node], set()
    while stack:
        n = stack.pop()
        for user in n.users:
            if user in seen or user.op != "call_function":
                continue
            seen.add(user)
            kind = view.type_of(user)
            if kind in view.agnostic_types:
                stack.append(user)
            else:
                out.add(kind)
    return out


def _merged_output_site(view, hw, tensor, out_edges, in_edges, blocked) -> FQSite:
    """An output FQ merged with the input FQs on the same tensor (POT remove_duplication): the group of
    the higher-priority FQ wins."""
    producer_type = view.type_of(tensor)
    out_priority = 1 if producer_type in _ACTIVATION_PRODUCERS else 0
    in_priority = max((2 if view.type_of(e.consumer) in hw.input_priority_types else 1 for e in in_edges),
                      default=-1)
    names = [f"{view.scope_of(tensor)}/fq_output_0_{i}" for i in range(len(out_edges))]
    names += [_name(view, e, "activations") for e in in_edges]
    edges = list(dict.fromkeys([*out_edges, *in_edges]))
    if in_priority > out_priority:
        types, act_mm = _valuable_consumers(view, hw, edges, blocked)
        if types:
            return FQSite("activations", tensor, edges, min(names), types, act_mm)
    return FQSite("outputs", tensor, edges, min(names), [producer_type])


def _name(view: GraphView, edge: Edge, group: str) -> str:
    kind = "weights" if group == "weights" else "input"
    return f"{view.scope_of(edge.consumer)}/fq_{kind}_{edge.port}"


def place(view: GraphView, hw: HardwareConfig, config) -> Placement:
    """Decide every FakeQuantize of the model (spec §7, §8 point 1, §9).

    Args:
        view: the captured graph.
        hw: the target device's rules.
        config: a DefaultQuantizationConfig.
    """
    skipped = skipped_ops(view)
    ignored = match_ignored(view, config, hw)
    if config.ignored.skip_model:
        return Placement([], [], skipped, ignored)
    blocked = set(skipped) | set(ignored)
    acts, weights = _initial_sites(view, hw, blocked)
    outputs = _output_sites(view, hw, blocked)
    covered = frozenset(e for edges in outputs.values() for e in edges)
    acts, jumped = _propagate(view, hw, acts, blocked, covered)
    by_tensor: dict[fx.Node, list[Edge]] = {}
    for e in acts:
        by_tensor.setdefault(e.producer, []).append(e)
    sites: list[FQSite] = []
    for tensor, edges in outputs.items():
        sites.append(_merged_output_site(view, hw, tensor, edges, by_tensor.pop(tensor, []), blocked))
    for tensor, edges in by_tensor.items():
        types, act_mm = _valuable_consumers(view, hw, edges, blocked)
        if not types:
            continue
        name = min(_name(view, e, "activations") for e in edges)  # POT: merged FQs keep the first name
        sites.append(FQSite("activations", tensor, edges, name, types, act_mm))
    for e in jumped:  # e.g. an embedding table: quantized per row for the Gather's consumers
        types, _ = _valuable_consumers(view, hw, view.outputs(e.consumer), blocked)
        if types:
            sites.append(FQSite("weights", e.producer, [e], _name(view, e, "weights"), types, weight_axis=0))
    for e in weights:
        info = view.ops[e.consumer]
        axis = info.weight_axis if e.arg == info.weight_arg else 0
        sites.append(FQSite("weights", e.producer, [e], _name(view, e, "weights"), [info.type],
                            weight_axis=axis))
    sites.sort(key=lambda s: s.name)
    return Placement(sites, _unify_groups(view, hw, sites), skipped, ignored)
