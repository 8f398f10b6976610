"""What layerwise tuning tunes (spec §11) and how it reads tensors out of a model: the *units* (a
conv / linear / matmul with its weight FakeQuantize, or a lone activation FakeQuantize), and an fx
interpreter that runs the quantized or the FP32 graph and keeps only the tensors asked for.

A layer unit computes ``op(FQ_in(x), FQ_w(W), b)`` with the model's own modules and tensors, so a
gradient step on the unit *is* a step on the model. Which layers (POT's ``_collect_nodes_to_tune``):
every conv / linear / matmul with a constant weight behind a weight FakeQuantize whose output range is
its input range. That leaves out the saturation-fixed weights (first convolutions on CPU/ANY: POT's
``tuning_ignored_scope``) and everything ``ignored.scope`` kept unquantized (it has no weight FQ).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx
from torch.fx import _pytree as fx_pytree

from torchpqt.algorithms.layers import Layer, _is_const, layer_of, run_layer
from torchpqt.graph.attrs import unique_attr_name
from torchpqt.graph.view import const_value
from torchpqt.observer import Observer
from torchpqt.quant.fake_quantize import FakeQuantize

__all__ = ["Capture", "Unit", "find_units", "flat_inputs", "make_trainable"]


@dataclass
class Unit:
    """One tuned thing and where its tensors are.

    Attributes:
        name: the layer's node name, or the lone FakeQuantize's module name.
        in_node: the node whose value (in the quantized model) is the unit's input: the tensor before
            the layer's input FakeQuantize, or the layer's input when it has none.
        out_node: the node whose FP32 value is the target: the layer's output (bias included), or for a
            lone FakeQuantize its input tensor.
        layer: the layer (None for a lone FakeQuantize).
        input_fq, weight_fq: module names (None when absent).
        weight_attr, bias_attr: the trained tensors' attribute names (after :func:`make_trainable`).
    """

    name: str
    in_node: str
    out_node: str
    layer: Layer | None = None
    input_fq: str | None = None
    weight_fq: str | None = None
    weight_attr: str | None = None
    bias_attr: str | None = None

    def forward(self, gm: fx.GraphModule, x: torch.Tensor) -> torch.Tensor:
        """The unit's output for input ``x`` (differentiable in the unit's parameters)."""
        if self.input_fq is not None:
            x = gm.get_submodule(self.input_fq)(x)
        if self.layer is None:
            return x
        weight = gm.get_submodule(self.weight_fq)(getattr(gm, self.weight_attr))
        bias = getattr(gm, self.bias_attr) if self.bias_attr is not None else None
        return run_layer(self.layer, x, weight, bias)


def _fq(gm: fx.GraphModule, node) -> FakeQuantize | None:
    if isinstance(node, fx.Node) and node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if isinstance(mod, FakeQuantize):
            return mod
    return None


def _same_range(fq: FakeQuantize) -> bool:
    """POT wraps only FakeQuantize whose output range is the input range (|diff| <= 1e-8)."""
    pairs = ((fq.input_low, fq.output_low), (fq.input_high, fq.output_high))
    return all(a.shape == b.shape and bool(((a - b).abs() <= 1e-8).all()) for a, b in pairs)


def find_units(gm: fx.GraphModule) -> list[Unit]:
    """Every unit of the converted model, in graph (topological) order: the layers with a tunable weight
    FakeQuantize, then as lone units the activation FakeQuantize no tuned layer reads directly."""
    units: list[Unit] = []
    owned: set[str] = set()
    for node in gm.graph.nodes:
        layer = layer_of(gm, node)
        if layer is None:
            continue
        wnode = node.args[layer.weight_arg]
        wfq = _fq(gm, wnode)
        if wfq is None or not _same_range(wfq) or not _is_const(wnode.args[0]) or len(wnode.users) != 1:
            continue
        x = node.args[0]
        if not isinstance(x, fx.Node):
            continue
        ifq = _fq(gm, x)
        input_fq = None
        if ifq is not None and _same_range(ifq) and isinstance(x.args[0], fx.Node):
            input_fq, in_node = x.target, x.args[0].name
            owned.add(x.name)
        else:
            in_node = x.name
        units.append(Unit(node.name, in_node, node.name, layer, input_fq, wnode.target))
    for node in gm.graph.nodes:
        fq = _fq(gm, node)
        if fq is None or node.name in owned or not isinstance(node.args[0], fx.Node):
            continue
        src = node.args[0]
        if _is_const(src) or not _same_range(fq):  # weights of untuned layers; rescaled ranges
            continue
        units.append(Unit(node.target, src.name, src.name, input_fq=node.target))
    order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    units.sort(key=lambda u: order[u.out_node] if u.layer is not None else order[u.in_node] + 0.5)
    return units


def _parameter(gm: fx.GraphModule, node: fx.Node, index: int, base: str) -> str:
    """Point ``node.args[index]`` at a fresh trainable float32 parameter holding the constant's value."""
    value = const_value(gm, node.args[index])
    name = unique_attr_name(gm, base)
    gm.register_parameter(name, torch.nn.Parameter(value.detach().float().clone().contiguous()))
    with gm.graph.inserting_before(node):
        const = gm.graph.get_attr(name)
    args = list(node.args)
    args[index] = const
    node.args = tuple(args)
    return name


def make_trainable(gm: fx.GraphModule, unit: Unit) -> None:
    """Give the unit's layer its own weight and bias parameters (the model's constants may be shared or
    buffers); the graph reads them from then on."""
    if unit.layer is None:
        return
    node = next(n for n in gm.graph.nodes if n.name == unit.name)
    wnode = node.args[unit.layer.weight_arg]
    unit.weight_attr = _parameter(gm, wnode, 0, f"{unit.name}_tuned_weight")
    if unit.layer.bias is not None and unit.layer.bias_arg >= 0:
        if len(node.args) <= unit.layer.bias_arg:  # bias given as a keyword
            args = list(node.args) + [None] * (unit.layer.bias_arg + 1 - len(node.args))
            args[unit.layer.bias_arg] = node.kwargs["bias"]
            node.args, node.kwargs = tuple(args), {k: v for k, v in node.kwargs.items() if k != "bias"}
        unit.bias_attr = _parameter(gm, node, unit.layer.bias_arg, f"{unit.name}_tuned_bias")


def flat_inputs(gm: fx.GraphModule, args: tuple, kwargs: dict) -> list:
    """The placeholder values of one call ``gm(*args, **kwargs)``, as the generated forward flattens them."""
    spec = getattr(gm, "_in_spec", None)
    if spec is None:
        return [*args, *kwargs.values()]
    return list(fx_pytree.tree_flatten_spec((list(args), kwargs), spec))


class _Done(Exception):
    """Everything wanted is computed: stop the interpretation early."""


class Capture(fx.Interpreter):
    """Runs ``gm`` and keeps the (detached) outputs of the ``wanted`` nodes, stopping once all are in.

    ``float_model``: FakeQuantize modules pass their input through (times their output/input range
    ratio: ``W/2 * 2`` under the saturation fix), so the graph computes FP32. Observers always pass
    through (never record). Only one batch's tensors are alive at a time (the interpreter frees every
    value after its last use).
    """

    def __init__(self, gm: fx.GraphModule, wanted, float_model: bool = False) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.wanted, self.float_model = set(wanted), float_model
        self.found: dict[str, torch.Tensor] = {}

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.wanted:
            self.found[n.name] = out.detach()
            if len(self.found) == len(self.wanted):
                raise _Done
        return out

    def call_module(self, target, args, kwargs):
        mod = self.fetch_attr(target)
        if isinstance(mod, Observer):
            return args[0]
        if self.float_model and isinstance(mod, FakeQuantize):
            ratio = (mod.output_high - mod.output_low) / (mod.input_high - mod.input_low)
            return args[0] if bool((ratio == 1).all()) else args[0] * ratio
        return super().call_module(target, args, kwargs)

    def capture(self, inputs: list) -> dict[str, torch.Tensor]:
        self.found = {}
        if not self.wanted:
            return {}
        try:
            with torch.no_grad():
                self.run(*inputs)
        except _Done:
            pass
        return self.found
