"""The constant fusions OpenVINO's model converter applied before POT saw a model (spec §0.1), measured
against POT 2023.3 on converted torch models (tests/data/pot):

* a Multiply / Divide by a constant right after a conv or linear is folded into its weights and bias
  (per output channel);
* a Multiply by a constant right before a conv or linear (its only consumer) is folded into the weights
  along the input channels;
* ``matmul(a, b) * s`` with two activations and a scalar ``s`` becomes ``matmul(a, b * s)``;
* Python-number operands of float eltwise ops become constant tensors (the IR's Const), so they get the
  weights FakeQuantize POT gives every constant eltwise operand.

All rewrites register new tensors; nothing is changed in place.
"""

from __future__ import annotations

import numbers

import torch
from torch import fx

from torchpqt.graph.attrs import get_attr_tensor, unique_attr_name
from torchpqt.graph.ops import packet_name

aten = torch.ops.aten
_CONV = ("conv1d", "conv2d", "conv3d")
_ELTWISE = ("add", "sub", "rsub", "mul", "div")


def _attr(gm: fx.GraphModule, node) -> torch.Tensor | None:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    return get_attr_tensor(gm, node).detach()


def _constant(gm, value) -> torch.Tensor | None:
    """A constant operand: a Python number or a parameter/buffer."""
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return torch.tensor(float(value))
    return _attr(gm, value)


def _register(gm: fx.GraphModule, hint: str, tensor: torch.Tensor, before: fx.Node) -> fx.Node:
    name = unique_attr_name(gm, hint)
    gm.register_buffer(name, tensor.contiguous())
    with gm.graph.inserting_before(before):
        node = gm.graph.get_attr(name)
    node.meta["val"] = tensor
    return node


def _scale_operand(gm, node: fx.Node) -> tuple[fx.Node, torch.Tensor] | None:
    """``(tensor operand, constant scale)`` of ``x * c`` / ``c * x`` / ``x / c``."""
    name = packet_name(node)
    a, b = (list(node.args) + [None, None])[:2]
    if name == "mul":
        for x, c in ((a, b), (b, a)):
            const = _constant(gm, c)
            if isinstance(x, fx.Node) and const is not None and _attr(gm, x) is None:
                return x, const.float()
    if name == "div" and isinstance(a, fx.Node) and not node.kwargs.get("rounding_mode"):
        const = _constant(gm, b)
        if const is not None and _attr(gm, a) is None:
            return a, 1.0 / const.float()
    return None


def _per_channel(c: torch.Tensor, channels: int, axis: int, rank: int) -> torch.Tensor | None:
    """``c`` as a ``[channels]`` vector if it broadcasts along one axis of a rank-``rank`` tensor."""
    if c.numel() == 1:
        return c.reshape(1).expand(channels)
    if c.dim() > rank or c.numel() != channels:
        return None
    shape = [1] * (rank - c.dim()) + list(c.shape)
    return c.reshape(-1) if shape[axis] == channels else None


def _weighted(node) -> str | None:
    if isinstance(node, fx.Node) and node.op == "call_function":
        name = packet_name(node)
        if name in _CONV or name == "linear":
            return name
    return None


def _rank(node: fx.Node) -> int | None:
    val = node.meta.get("val")
    return val.dim() if isinstance(val, torch.Tensor) else None


def _weight_and_scale(gm, op: fx.Node, kind: str, mul: fx.Node, c: torch.Tensor, weight_axis: int):
    """``(weight, per-channel scale)`` when ``c`` scales an ungrouped conv / linear ``op`` along its weight's
    ``weight_axis`` (0: output channels, 1: input channels), else None."""
    if kind in _CONV and len(op.args) > 6 and op.args[6] != 1:
        return None
    w = _attr(gm, op.args[1])
    rank = _rank(mul)
    if w is None or rank is None:
        return None
    axis = 1 if kind in _CONV else rank - 1
    s = _per_channel(c, w.shape[weight_axis], axis, rank)
    return None if s is None else (w, s)


def _fold_into_producer(gm: fx.GraphModule, mul: fx.Node) -> bool:
    found = _scale_operand(gm, mul)
    if found is None:
        return False
    x, c = found
    kind = _weighted(x)
    found = None if kind is None or len(x.users) != 1 else _weight_and_scale(gm, x, kind, mul, c, 0)
    if found is None:
        return False
    w, s = found
    args = list(x.args) + [None] * (3 - len(x.args))
    args[1] = _register(gm, f"{x.args[1].target}_scaled", w * s.reshape(-1, *[1] * (w.dim() - 1)), x)
    b = _attr(gm, args[2])
    if b is not None:
        args[2] = _register(gm, f"{args[2].target}_scaled", b * s, x)
    elif args[2] is not None:
        return False
    x.args = tuple(args)
    mul.replace_all_uses_with(x)
    gm.graph.erase_node(mul)
    return True


def _fold_into_consumer(gm: fx.GraphModule, mul: fx.Node) -> bool:
    found = _scale_operand(gm, mul)
    if found is None or len(mul.users) != 1:
        return False
    x, c = found
    if isinstance(x, fx.Node) and x.op == "call_function" and packet_name(x) in ("add", "sub") \
            and any(_constant(gm, a) is not None for a in x.args[:2]):
        # The converter first merges Subtract/Add(c) -> Multiply(c) into Multiply -> Add (a scale-shift,
        # e.g. input normalization), whose Add then sits before the conv: no fold.
        return False
    user = next(iter(mul.users))
    kind = _weighted(user)
    if kind is None or user.args[0] is not mul or user.args[1] is mul:
        return False
    found = _weight_and_scale(gm, user, kind, mul, c, 1)
    if found is None:
        return False
    w, s = found
    args = list(user.args)
    args[0] = x
    args[1] = _register(gm, f"{user.args[1].target}_scaled_in", w * s.reshape(1, -1, *[1] * (w.dim() - 2)), user)
    user.args = tuple(args)
    gm.graph.erase_node(mul)
    return True


def _move_scale_into_matmul(gm: fx.GraphModule, mul: fx.Node) -> bool:
    found = _scale_operand(gm, mul)
    if found is None:
        return False
    mm, c = found
    if not (isinstance(mm, fx.Node) and mm.op == "call_function" and packet_name(mm) in ("matmul", "bmm")
            and len(mm.users) == 1 and c.numel() == 1):
        return False
    a, b = mm.args[:2]
    if _attr(gm, b) is not None or _attr(gm, a) is not None:
        return False
    with gm.graph.inserting_before(mm):
        scaled = gm.graph.call_function(aten.mul.Tensor, (b, float(c.reshape(()))))
    scaled.meta.update({k: v for k, v in b.meta.items() if k in ("val", "nn_module_stack")})
    scaled.meta["nn_module_stack"] = mul.meta.get("nn_module_stack", {})
    mm.args = (a, scaled, *mm.args[2:])
    mul.replace_all_uses_with(mm)
    gm.graph.erase_node(mul)
    return True


def _float_node(node) -> bool:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return isinstance(val, torch.Tensor) and val.dtype.is_floating_point


def _scalars_to_constants(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or packet_name(node) not in _ELTWISE or len(node.args) < 2:
            continue
        a, b = node.args[:2]
        tensors = [v for v in (a, b) if isinstance(v, fx.Node)]
        if len(tensors) != 1 or not _float_node(tensors[0]) or not _float_node(node):
            continue
        idx = 1 if isinstance(a, fx.Node) else 0
        value = node.args[idx]
        if not isinstance(value, numbers.Number) or isinstance(value, bool):
            continue
        dtype = node.meta["val"].dtype
        const = _register(gm, f"const_{packet_name(node)}", torch.tensor(float(value), dtype=dtype), node)
        args = list(node.args)
        args[idx] = const
        node.args = tuple(args)
        if isinstance(node.target, torch._ops.OpOverload) and node.target._overloadname != "Tensor":
            node.target = node.target.overloadpacket.Tensor  # e.g. rsub.Scalar takes numbers only


def fuse_constants(gm: fx.GraphModule) -> None:
    """Apply the converter's constant fusions (module docstring), in the converter's order."""
    for rewrite in (_fold_into_producer, _fold_into_consumer, _move_scale_into_matmul):
        for node in list(gm.graph.nodes):
            if node.op == "call_function" and packet_name(node) in ("mul", "div"):
                rewrite(gm, node)
    _scalars_to_constants(gm)
    gm.graph.eliminate_dead_code()
    gm.recompile()
