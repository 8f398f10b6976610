"""The converted model's final shape: only the tensors its graph reads, each weight and bias a trainable
parameter (what :func:`torchpqt.convert` leaves, and what :func:`torchpqt.load` rebuilds).

After capture, BatchNorm folding, the converter fusions and the algorithms, the GraphModule still holds the
tensors they replaced: the original conv weight and bias next to the folded ones, the BatchNorm's parameters
and running statistics, intermediate folded tensors, empty submodules. :func:`finalize` drops every
parameter, buffer and submodule no ``get_attr``/``call_module`` node reads, and turns every live weight and
bias (the input of a weight FakeQuantize, the bias argument of a convolution / linear layer) into an ordinary
``nn.Parameter`` with ``requires_grad=True``, so ``Adam(qmodel.parameters())`` trains exactly the tensors the
forward uses, each weight quantized on the fly by its FakeQuantize. Other live parameters (LayerNorm's, a
learned embedding) become trainable too; other buffers (masks, folded scalars) stay buffers.

A saturation-fixed weight (``<fq>_scaled_weight``) stays stored as ``W/2`` with its FakeQuantize's output
range doubled (OverflowCorrection: ``W/r``, times ``r``), as POT's IR stores it: training it trains ``W``
through that fixed factor, and the IR keeps the same layout.
"""

from __future__ import annotations

import logging

import torch
from torch import fx, nn

from torchpqt.graph.ops import packet_name
from torchpqt.quant.fake_quantize import FakeQuantize

__all__ = ["finalize", "weight_and_bias_nodes"]

logger = logging.getLogger("torchpqt")

_BIASED = ("conv1d", "conv2d", "conv3d", "linear", "convolution", "conv_transpose1d", "conv_transpose2d",
           "conv_transpose3d", "addmm")


def _is_fq(gm: fx.GraphModule, node) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_module" and \
        isinstance(gm.get_submodule(node.target), FakeQuantize)


def _bias_arg(node: fx.Node):
    name = packet_name(node)
    if name == "addmm":
        return node.args[0] if node.args else None
    if name in _BIASED:
        return node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    return None


def weight_and_bias_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The ``get_attr`` nodes that read a weight (the input of a FakeQuantize, or a layer's weight operand)
    or a bias (the bias argument of a convolution / linear layer), in graph order."""
    found = []
    for node in gm.graph.nodes:
        if node.op != "get_attr":
            continue
        for user in node.users:
            if _is_fq(gm, user) or (user.op == "call_function" and packet_name(user) in _BIASED
                                    and (_bias_arg(user) is node or node in user.args[:2])):
                found.append(node)
                break
    return found


def _owner(gm: fx.GraphModule, target: str) -> tuple[nn.Module, str]:
    path, _, attr = target.rpartition(".")
    return (gm.get_submodule(path) if path else gm), attr


def _erase_dead_nodes(gm: fx.GraphModule) -> None:
    for node in reversed(list(gm.graph.nodes)):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)


def _drop_unread(gm: fx.GraphModule) -> int:
    """Delete the parameters, buffers and submodules nothing in the graph reads; returns how many tensors."""
    read = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    dropped = 0
    for name, _ in list(gm.named_parameters(remove_duplicate=False)) + list(gm.named_buffers(remove_duplicate=False)):
        owner_path = name.rpartition(".")[0]
        if name in read or any(owner_path == c or owner_path.startswith(c + ".") for c in called):
            continue
        owner, attr = _owner(gm, name)
        if attr in owner._parameters or attr in owner._buffers:
            delattr(owner, attr)
            dropped += 1
    keep = set()
    for path in read | called:
        parts = path.split(".")
        keep.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    for name, _ in sorted(gm.named_modules(remove_duplicate=False), key=lambda item: -item[0].count(".")):
        if name and name not in keep and not any(c.startswith(name + ".") for c in called):
            owner, attr = _owner(gm, name)
            if attr in owner._modules:
                delattr(owner, attr)
    return dropped


def _make_trainable(gm: fx.GraphModule) -> None:
    live = {n.target for n in weight_and_bias_nodes(gm)}
    for target in {n.target for n in gm.graph.nodes if n.op == "get_attr"}:
        owner, attr = _owner(gm, target)
        value = getattr(owner, attr)
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
            continue
        if attr in owner._parameters:
            owner._parameters[attr].requires_grad_(True)
        elif target in live and attr in owner._buffers:
            del owner._buffers[attr]
            owner.register_parameter(attr, nn.Parameter(value.detach().clone().contiguous(), requires_grad=True))


def finalize(gm: fx.GraphModule) -> fx.GraphModule:
    """Drop what the graph no longer reads and make every live weight and bias trainable, in place."""
    for name in ("train", "eval"):  # torch.export's module() stubs raising NotImplementedError: the graph is
        gm.__dict__.pop(name, None)  # the eval-mode computation, so the modes change nothing it computes
    _erase_dead_nodes(gm)
    dropped = _drop_unread(gm)
    _make_trainable(gm)
    gm.graph.lint()
    gm.recompile()
    if dropped:
        logger.debug("converted model: dropped %d tensors the graph no longer reads", dropped)
    return gm
