"""The converted graph as BiasCorrection walks it (POT's model copy with the activation FakeQuantize
removed and the weight FakeQuantize kept), and an evaluator that runs only the part of it between stored
tensors and the tensors asked for.

POT: algorithms/quantization/bias_correction/algorithm.py (_remove_fq_from_inputs, get_node_parents,
get_node_children) and graph/builder.py. POT's parents of an op are its non-``Const`` inputs, which
include a weight FakeQuantize (an op, not a Const); a plain constant is not a parent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import fx
from torch.fx._pytree import tree_flatten_spec

from torchpqt.algorithms.layers import folded_fake_quantize
from torchpqt.graph.ops import packet_name
from torchpqt.graph.view import is_constant
from torchpqt.quant.fake_quantize import FakeQuantize

__all__ = ["Evaluator", "Topology", "placeholder_values"]

_CONVS = ("conv1d", "conv2d", "conv3d", "convolution")


class Topology:
    """Parents, children and POT op kinds of a converted GraphModule."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.order = {n: i for i, n in enumerate(gm.graph.nodes)}
        self.fq_kind: dict[fx.Node, str] = {}  # call_module FakeQuantize -> "weights" / "activations"
        self._const: dict[fx.Node, bool] = {}
        for n in gm.graph.nodes:
            if n.op == "call_module" and isinstance(gm.get_submodule(n.target), FakeQuantize):
                self.fq_kind[n] = "weights" if self.is_const(n.args[0]) else "activations"

    def is_const(self, node) -> bool:
        """Parameters, buffers and ops on them only (a weight FakeQuantize is not a constant here)."""
        return is_constant(node, self._const)

    def is_act_fq(self, node: fx.Node) -> bool:
        return self.fq_kind.get(node) == "activations"

    def is_weight_fq(self, node: fx.Node) -> bool:
        return self.fq_kind.get(node) == "weights"

    def _through(self, node: fx.Node) -> fx.Node:
        while self.is_act_fq(node):
            node = node.args[0]
        return node

    @staticmethod
    def is_shape(node: fx.Node) -> bool:
        """A symbolic size (``sym_size``) or another scalar: POT's graph has its shape subgraphs marked and
        left out of the walks (IgnoreShapeSubgraph; get_node_children skips known-value inputs)."""
        return isinstance(node.meta.get("val"), (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool))

    def tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        """Input nodes in port order, activation FakeQuantize looked through, shape values left out."""
        out: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), out.append)
        return [self._through(a) for a in out if not self.is_shape(a)]

    def parents(self, node: fx.Node) -> list[fx.Node]:
        """POT get_node_parents: inputs that are not constants (weight FakeQuantize included)."""
        seen: list[fx.Node] = []
        for a in self.tensor_inputs(node):
            if not self.is_const(a) and a not in seen:
                seen.append(a)
        return seen

    def children(self, node: fx.Node) -> list[fx.Node]:
        """POT get_node_children: consumers, activation FakeQuantize looked through, graph output left out."""
        out: list[fx.Node] = []
        for user in node.users:
            for c in (self.children(user) if self.is_act_fq(user) else [user]):
                if c.op != "output" and not self.is_shape(c) and c not in out:
                    out.append(c)
        return out

    def input0(self, node: fx.Node) -> fx.Node | None:
        """POT: input port 0, or port 1 when port 0 is a Const."""
        ins = self.tensor_inputs(node)
        if not ins:
            return None
        if self.is_const(ins[0]) and len(ins) > 1:
            return ins[1]
        return ins[0]

    def pot_type(self, node: fx.Node) -> str | None:
        """``Convolution`` (not transposed; any groups: POT's graph types a GroupConvolution so) or
        ``MatMul``, as POT's graph types them, else None."""
        if node.op != "call_function":
            return None
        name = packet_name(node)
        if name in _CONVS:
            args = node.args
            transposed = args[6] if name == "convolution" else False
            return None if transposed else "Convolution"
        if name in ("linear", "matmul", "mm", "bmm", "addmm"):
            return "MatMul"
        return None

    def quantized_weights(self, node: fx.Node) -> bool:
        """POT node_with_quantized_weights: input port 1 is a FakeQuantize of a constant."""
        raw: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), raw.append)
        return len(raw) > 1 and self.is_weight_fq(raw[1])


def placeholder_values(gm: fx.GraphModule, args: tuple, kwargs: dict) -> dict[fx.Node, object]:
    """The value of every placeholder for one call ``gm(*args, **kwargs)``."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    info = getattr(gm.graph._codegen, "pytree_info", None)
    if info is not None and info.in_spec is not None:
        flat = tree_flatten_spec((tuple(args), dict(kwargs)), info.in_spec)
    else:
        flat = list(args) + list(kwargs.values())
    if len(flat) != len(placeholders):
        raise ValueError(f"the graph takes {len(placeholders)} inputs, the sample gives {len(flat)}")
    return dict(zip(placeholders, flat))


class Evaluator(fx.Interpreter):
    """Runs parts of a converted graph with the activation FakeQuantize removed and each weight
    FakeQuantize computed as OpenVINO folds it (:func:`~torchpqt.algorithms.layers.folded_fake_quantize`).

    ``fp32=True`` also replaces each weight FakeQuantize by the FP32 weight it stands for (stored weight
    times its output/input range ratio): the graph then computes the FP32 model it was converted from.
    """

    def __init__(self, topo: Topology, fp32: bool = False):
        super().__init__(topo.gm, garbage_collect_values=False)
        self.topo = topo
        self.fp32 = fp32
        self._nodes = {n.target: n for n in topo.fq_kind}

    def call_module(self, target, args, kwargs):
        node = self._nodes.get(target)
        if node is not None and self.topo.is_act_fq(node):
            return args[0]
        if node is not None:
            fq = self.topo.gm.get_submodule(target)
            if self.fp32:
                return args[0] * ((fq.output_high - fq.output_low) / (fq.input_high - fq.input_low))
            return folded_fake_quantize(fq, args[0])  # POT's subgraphs ran with folded weights
        return super().call_module(target, args, kwargs)

    def needed(self, targets: Iterable[fx.Node], stops: Iterable[fx.Node]) -> list[fx.Node]:
        """The nodes to compute for ``targets`` when ``stops`` are given, in graph order."""
        stops = set(stops)
        need: set[fx.Node] = set()
        todo = [t for t in targets if t not in stops]
        while todo:
            n = todo.pop()
            if n in need:
                continue
            need.add(n)
            todo += [a for a in n.all_input_nodes if a not in stops and a not in need]
        return sorted(need, key=self.topo.order.__getitem__)

    @torch.no_grad()
    def evaluate(self, nodes: Sequence[fx.Node], seeds: dict[fx.Node, object],
                 placeholders: dict[fx.Node, object] | None = None) -> dict[fx.Node, object]:
        """Compute ``nodes`` (from :meth:`needed`) given the values of the stop nodes in ``seeds``; a
        placeholder not seeded takes its value from ``placeholders``."""
        self.env = dict(seeds)
        for n in nodes:
            if n in self.env:
                continue
            if n.op == "placeholder":
                if placeholders is None or n not in placeholders:
                    raise ValueError(f"no value for graph input {n.name!r}")
                self.env[n] = placeholders[n]
            else:
                self.env[n] = self.run_node(n)
        env, self.env = self.env, {}
        return env
