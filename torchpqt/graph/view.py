"""A read-only view of a captured graph in OpenVINO terms: op types, input edges, constants, scope names."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import fx

from torchpqt.graph.attrs import get_attr_tensor
from torchpqt.graph.ops import AGNOSTIC_TYPES, IDENTITY, OpInfo, classify, packet_name

PARAMETER, CONST, RESULT = "Parameter", "Const", "Result"
_RANDOM = frozenset({"rand", "randn", "randint", "rand_like", "randn_like", "bernoulli", "dropout", "normal",
                     "uniform"})
# a table lookup at positions computed from sizes is data: POT's IR kept Gather(table, position ids) and
# quantized the table (measured on a BertModel: the position and token-type embedding tables get FakeQuantize)
_LOOKUPS = frozenset({"embedding", "embedding_bag", "_embedding_bag"})
# ops that read a tensor's shape, never its values (ShapeOf in OpenVINO)
_SIZE_OPS = frozenset({"sym_size", "sym_numel", "sym_stride", "size", "numel", "_shape_as_tensor"})


@dataclass(frozen=True)
class Edge:
    """One input of a consumer: ``consumer.args[arg]`` (or ``consumer.args[arg][sub]`` for lists)."""

    producer: fx.Node
    consumer: fx.Node
    arg: int
    sub: int | None
    port: int

    def rewire(self, new: fx.Node) -> None:
        """Make the consumer read ``new`` instead of the producer on this edge only."""
        args = list(self.consumer.args)
        if self.sub is None:
            args[self.arg] = new
        else:
            seq = list(args[self.arg])
            seq[self.sub] = new
            args[self.arg] = type(self.consumer.args[self.arg])(seq)
        self.consumer.args = tuple(args)


def const_value(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    """Evaluate a constant node of ``gm`` (a parameter, or an op on parameters such as ``weight.t()``)."""
    if node.op == "get_attr":
        return get_attr_tensor(gm, node).detach()
    args = fx.node.map_arg(node.args, lambda n: const_value(gm, n))
    kwargs = fx.node.map_arg(node.kwargs, lambda n: const_value(gm, n))
    with torch.no_grad():
        return node.target(*args, **kwargs)


def is_constant(node, memo: dict) -> bool:
    """True for a parameter/buffer (``get_attr``) and any function of those alone, except random ops (a
    constant subgraph); module calls (FakeQuantize) and placeholders are not. ``memo`` caches per graph."""
    if not isinstance(node, fx.Node):
        return False
    if node not in memo:
        if node.op == "get_attr":
            memo[node] = True
        elif node.op == "call_function":
            inputs = node.all_input_nodes
            memo[node] = bool(inputs) and all(is_constant(i, memo) for i in inputs) \
                and packet_name(node) not in _RANDOM
        else:
            memo[node] = False
    return memo[node]


class GraphView:
    """OpenVINO-flavoured facts about every node of ``gm.graph``."""

    def __init__(self, gm: fx.GraphModule, hw_types: frozenset[str] | None = None):
        """Args:
            gm: the captured graph.
            hw_types: op types the target's hardware rules list. POT resolves DepthWiseConvolution and
                quantize-agnostic ops only where the rules list them (graph/utils.py
                get_hardware_config_operation_type; graph/transformer.py); None means all.
        """
        self.gm = gm
        self.nodes = [n for n in gm.graph.nodes if n.op != "call_module"]
        self._const: dict[fx.Node, bool] = {}
        self._shape: dict[fx.Node, bool] = {}
        self.ops: dict[fx.Node, OpInfo] = {}
        for n in self.nodes:
            if n.op == "call_function":
                info = classify(n, self.is_const)
                if hw_types is not None and info.type == "DepthWiseConvolution" and info.type not in hw_types:
                    info.type = "Convolution"
                self.ops[n] = info
        self.agnostic_types = frozenset(t for t in AGNOSTIC_TYPES if hw_types is None or t in hw_types
                                        or t == IDENTITY)
        self._name_scopes()

    # --- node kinds -------------------------------------------------------------------------
    def type_of(self, node: fx.Node) -> str:
        if node.op == "placeholder":
            return PARAMETER
        if node.op == "output":
            return RESULT
        if self.is_const(node):
            return CONST
        info = self.ops.get(node)
        return info.type if info else IDENTITY

    def is_const(self, node) -> bool:
        """True for parameters/buffers and anything computed from them alone (a constant subgraph)."""
        return is_constant(node, self._const)

    def is_shape_derived(self, node) -> bool:
        """True for values computed from tensor sizes and constants only, not from any input's values:
        ``sym_size``, ``arange(seq_len)``, a position-bias table or a causal mask built from them. With the
        static shapes POT quantized, the converter folded them into constants; they get no FakeQuantize."""
        if not isinstance(node, fx.Node):
            return False
        if node not in self._shape:
            self._shape[node] = False  # cycle guard
            result = False
            if node.op == "call_function" and not self.is_const(node) \
                    and packet_name(node) not in _RANDOM and packet_name(node) not in _LOOKUPS:
                inputs = node.all_input_nodes
                if packet_name(node) in _SIZE_OPS:
                    result = True
                else:  # a factory (arange, ones, full) of Python sizes, or an op on sizes and constants
                    result = all(self.is_const(i) or self.is_shape_derived(i) for i in inputs)
            self._shape[node] = result
        return self._shape[node]

    def is_float(self, node: fx.Node) -> bool:
        """Only floating-point tensors are ever quantized (ints and bools, e.g. masks and ids, never)."""
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            return val.dtype.is_floating_point
        if node.op == "get_attr":
            return self.const_value(node).dtype.is_floating_point
        # symbolic sizes and other non-tensor values are never quantized; only nodes we created ourselves
        # lack metadata, and they compute on float tensors
        return "val" not in node.meta and node.op != "placeholder"

    def rank(self, node: fx.Node) -> int | None:
        val = node.meta.get("val")
        return val.dim() if isinstance(val, torch.Tensor) else None

    def const_value(self, node: fx.Node) -> torch.Tensor:
        """Evaluate a constant node (a parameter, or an op on parameters such as ``weight.t()``)."""
        return const_value(self.gm, node)

    # --- edges --------------------------------------------------------------------------------
    def inputs(self, node: fx.Node) -> list[Edge]:
        """Tensor inputs of ``node`` in OpenVINO port order."""
        edges, port = [], 0
        for i, a in enumerate(node.args):
            if isinstance(a, fx.Node):
                edges.append(Edge(a, node, i, None, port))
                port += 1
            elif isinstance(a, (list, tuple)) and any(isinstance(x, fx.Node) for x in a):
                for j, x in enumerate(a):
                    if isinstance(x, fx.Node):
                        edges.append(Edge(x, node, i, j, port))
                        port += 1
        return edges

    def outputs(self, node: fx.Node) -> list[Edge]:
        """Edges that read ``node``."""
        return [e for user in node.users for e in self.inputs(user) if e.producer is node]

    # --- names --------------------------------------------------------------------------------
    def _name_scopes(self) -> None:
        # a module path names its op when the module calls exactly one real (non no-op, non-constant) op
        real = {n for n, info in self.ops.items() if info.type != IDENTITY and not self.is_const(n)}
        per_module = Counter(self.ops[n].module_path for n in real)
        for node, info in self.ops.items():
            path = info.module_path
            if path and per_module[path] == 1 and node in real:
                info.scope = path
            else:
                info.scope = f"{path}/{info.node.name}" if path else info.node.name

    def scope_of(self, node: fx.Node) -> str:
        info = self.ops.get(node)
        if info is not None:
            return info.scope
        return node.name
