"""The biased layers the bias algorithms work on (spec §10): a Convolution or MatMul of the captured graph
with its constant weight, its bias and its attributes, read from one fx node, and the small tensor helpers
the three algorithms share.

POT's ``OPERATIONS_WITH_BIAS`` are ``Convolution`` and ``MatMul`` (graph/special_operations.py) as types of
POT's own graph, which OpenVINO's IR reader builds: it turns every ``GroupConvolution`` (grouped and
depthwise) into a ``Convolution`` with a ``group`` attribute and weights ``[Cout, Cin/group, *k]``
(mo/utils/ir_reader/layer_to_class.py::groupconv_to_conv). So grouped and depthwise convs are bias layers
too (measured: POT's FastBiasCorrection corrects depthwise biases); transposed convs are not. The channel
axis is 1 for a conv and -1 for a MatMul (``OPERATIONS_CHANNEL_AXIS``). In the captured graph the bias is an argument of the conv / linear node
(POT's IR has it as a separate ``Add`` of a constant right after the op).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx

from torchpqt.graph.attrs import get_attr_tensor, unique_attr_name
from torchpqt.graph.ops import packet_name
from torchpqt.graph.view import const_value
from torchpqt.quant.fake_quantize import FakeQuantize

__all__ = [
    "Layer",
    "channel_mean",
    "constant_input_mean",
    "drop_unused_constants",
    "float_weight",
    "layer_of",
    "quantized_weight",
    "run_layer",
    "set_layer_tensor",
]

CONVOLUTION, MATMUL = "Convolution", "MatMul"
_CONVS = ("conv1d", "conv2d", "conv3d", "convolution")


@dataclass(frozen=True)
class Layer:
    """One bias layer.

    Attributes:
        node: the conv / linear / matmul call in the graph.
        type: ``"Convolution"`` or ``"MatMul"`` (OpenVINO type).
        weight: the weight as the graph stores it (conv ``[Cout, Cin, *k]``; linear ``[N, K]``; a
            constant matmul operand ``[K, N]``). For a weight behind a FakeQuantize: the FakeQuantize's
            input (``W/2`` where the saturation fix applies).
        bias: the bias ``[C]``, or None when the op has none.
        weight_arg: index of the weight in ``node.args``; ``bias_arg``: index of the bias argument.
        transposed_weight: True for ``linear`` (``x @ W.T``), False for ``matmul(x, W)``.
        stride, padding, dilation, groups: conv attributes (padding may be ``"same"`` / ``"valid"``).
    """

    node: fx.Node
    type: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    weight_arg: int = 1
    bias_arg: int = 2
    transposed_weight: bool = True
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def channel_axis(self) -> int:
        """POT OPERATIONS_CHANNEL_AXIS: 1 for Convolution, -1 for MatMul."""
        return 1 if self.type == CONVOLUTION else -1

    @property
    def out_channels(self) -> int:
        if self.type == CONVOLUTION or self.transposed_weight:
            return int(self.weight.shape[0])
        return int(self.weight.shape[-1])

    @property
    def out_axis(self) -> int:
        """Output-channel axis of ``weight`` (0, except -1 for a ``matmul(x, W)`` operand)."""
        return 0 if self.type == CONVOLUTION or self.transposed_weight else -1

    @property
    def padded(self) -> bool:
        """True where the conv reads zero padding (any nonzero pad, or ``"same"`` with a kernel > 1)."""
        if self.type != CONVOLUTION:
            return False
        if isinstance(self.padding, str):
            return self.padding == "same" and any(k > 1 for k in self.weight.shape[2:])
        return any(int(p) != 0 for p in self.padding)

    @property
    def pointwise_input(self) -> bool:
        """Strides 1, dilations 1, no padding: the conditions POT's channel alignment puts on a consumer."""
        return (self.type == CONVOLUTION and self.groups == 1 and not self.padded
                and all(int(s) == 1 for s in self.stride) and all(int(d) == 1 for d in self.dilation))


def _as_tuple(value, rank: int) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value) if len(value) > 1 else tuple(int(value[0]) for _ in range(rank))
    return tuple(int(value) for _ in range(rank))


def _arg(node: fx.Node, i: int, default):
    return node.args[i] if len(node.args) > i else node.kwargs.get(_ARG_NAMES.get(i, ""), default)


_ARG_NAMES = {2: "bias", 3: "stride", 4: "padding", 5: "dilation", 6: "groups"}


def _is_const(node) -> bool:
    if not isinstance(node, fx.Node):
        return False
    if node.op == "get_attr":
        return True
    return node.op == "call_function" and bool(node.all_input_nodes) and all(_is_const(a) for a in node.all_input_nodes)


def _weight_source(gm: fx.GraphModule, arg) -> tuple[torch.Tensor, FakeQuantize | None] | None:
    """(stored weight, its FakeQuantize or None) of a weight argument, or None if it is not constant."""
    if isinstance(arg, fx.Node) and arg.op == "call_module":
        mod = gm.get_submodule(arg.target)
        if isinstance(mod, FakeQuantize) and _is_const(arg.args[0]):
            return const_value(gm, arg.args[0]), mod
        return None
    if _is_const(arg):
        return const_value(gm, arg), None
    return None


def layer_of(gm: fx.GraphModule, node: fx.Node) -> Layer | None:
    """The bias layer ``node`` is, or None: a non-transposed conv (any ``groups``) or a linear / matmul
    whose second operand is constant (possibly behind a weight FakeQuantize)."""
    if node.op != "call_function":
        return None
    name = packet_name(node)
    if name in _CONVS:
        if name == "convolution":
            _, w, b, stride, padding, dilation, transposed, _, groups = node.args[:9]
            if transposed:
                return None
        else:
            w = node.args[1]
            b, stride, padding = _arg(node, 2, None), _arg(node, 3, 1), _arg(node, 4, 0)
            dilation, groups = _arg(node, 5, 1), _arg(node, 6, 1)
        src = _weight_source(gm, w)
        if src is None:
            return None
        rank = src[0].dim() - 2
        pad = padding if isinstance(padding, str) else _as_tuple(padding, rank)
        return Layer(node, CONVOLUTION, src[0], _bias(gm, b), stride=_as_tuple(stride, rank), padding=pad,
                     dilation=_as_tuple(dilation, rank), groups=int(groups))
    if name == "linear":
        src = _weight_source(gm, node.args[1])
        if src is None:
            return None
        return Layer(node, MATMUL, src[0], _bias(gm, _arg(node, 2, None)))
    if name in ("matmul", "mm") and len(node.args) == 2:
        src = _weight_source(gm, node.args[1])
        if src is None or src[0].dim() < 2:
            return None
        return Layer(node, MATMUL, src[0], None, bias_arg=-1, transposed_weight=False)
    return None


def _bias(gm: fx.GraphModule, b) -> torch.Tensor | None:
    if b is None:
        return None
    if not _is_const(b):
        return None
    return const_value(gm, b).reshape(-1)


def folded_fake_quantize(fq: FakeQuantize, weight: torch.Tensor) -> torch.Tensor:
    """``fq(weight)`` as OpenVINO 2023.3 computes a FakeQuantize of a constant: folded at compile time by
    the reference formula ``round((x - il) / (ih - il) * (L - 1)) / (L - 1) * (oh - ol) + ol`` (float32,
    half to even), not by the CPU plugin's runtime formula :class:`FakeQuantize` reproduces. The two differ
    on rounding ties, and the saturation fix puts every channel's extreme weight on one (``W/2`` sits at
    level 63.5 or 190.5 of 254). POT's bias corrections ran their one-layer models and subgraphs with folded
    weights: measured bitwise on every weight of tests/data/pot/biases (20752 values)."""
    x = weight.to(torch.float32)
    il, ih, ol, oh = (t.to(torch.float32) for t in (fq.input_low, fq.input_high, fq.output_low, fq.output_high))
    n = torch.tensor(float(fq.levels - 1), dtype=torch.float32)
    y = torch.round((x - il) / (ih - il) * n) / n * (oh - ol) + ol
    y = torch.where(x <= torch.minimum(il, ih), ol.expand_as(y), y)
    return torch.where(x > torch.maximum(il, ih), oh.expand_as(y), y)


def quantized_weight(gm: fx.GraphModule, layer: Layer) -> torch.Tensor:
    """The weight the layer computes with, ``Q(W)``: its weight FakeQuantize applied to the stored weight
    as OpenVINO folds it (:func:`folded_fake_quantize`; about ``W`` again where the saturation fix stores
    ``W/2``), or the weight itself if not quantized."""
    src = _weight_source(gm, layer.node.args[layer.weight_arg])
    assert src is not None
    weight, fq = src
    with torch.no_grad():
        return folded_fake_quantize(fq, weight) if fq is not None else weight


def float_weight(gm: fx.GraphModule, layer: Layer) -> torch.Tensor:
    """The FP32 weight the layer stands for: the stored weight times its FakeQuantize's output/input range
    ratio (``W/2 * 2`` under the saturation fix, ``W/r * r`` after OverflowCorrection), else as stored."""
    src = _weight_source(gm, layer.node.args[layer.weight_arg])
    assert src is not None
    weight, fq = src
    if fq is None:
        return weight
    with torch.no_grad():
        ratio = (fq.output_high - fq.output_low) / (fq.input_high - fq.input_low)
        return weight * ratio


def run_layer(layer: Layer, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
              ) -> torch.Tensor:
    """The layer's op on ``x`` with the given weight (and bias, default none)."""
    if layer.type == MATMUL:
        y = F.linear(x, weight) if layer.transposed_weight else torch.matmul(x, weight)
        return y if bias is None else y + bias
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[weight.dim() - 2]
    return conv(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)


def _tap_counts(length: int, kernel: int, stride: int, pad_left: int, pad_right: int, dilation: int
                ) -> tuple[list[int], int]:
    """Along one spatial axis of a conv: for each kernel tap, on how many output positions it reads the input
    (not the zero padding), and the number of output positions."""
    out = (length + pad_left + pad_right - dilation * (kernel - 1) - 1) // stride + 1
    counts = []
    for tap in range(kernel):
        # output p reads input p * stride + offset: inside for ceil(-offset / stride) <= p <= (length - 1 - offset)
        # // stride (floor divisions)
        offset = tap * dilation - pad_left
        first = max(0, -(offset // stride))
        last = min(out - 1, (length - 1 - offset) // stride)
        counts.append(max(0, last - first + 1))
    return counts, max(out, 0)


def constant_input_mean(layer: Layer, shape: Sequence[int], channel_means: torch.Tensor, weight: torch.Tensor
                        ) -> torch.Tensor:
    """``channel_mean(run_layer(layer, x, weight), layer.channel_axis)`` for the input ``x`` of ``shape`` whose
    channel ``c`` holds ``channel_means[c]`` everywhere, without building ``x`` or the output (float64).

    For a conv the output mean follows in closed form: an output position sums ``W[o, c, taps] * m[c]`` over the
    taps that fall inside the input (the zero padding adds nothing), so over all positions each tap counts as
    often as it reads the input: ``mean[o] = sum_c m[c] sum_taps W[o, c, taps] * prod_axes n_axis(tap) / P``
    (``n_axis(tap)``: the output positions along that axis whose tap lands inside, ``P``: the output positions).
    Equal to running the conv in real arithmetic (float64: within a few ulps of it, tested), in memory of the
    weight's size instead of the input's and the conv's unfolded input (a 64-channel 512x512 float64 input
    unfolds to 1.2 GiB). A MatMul runs on one row: its output mean is ``W m``."""
    m = channel_means.to(torch.float64)
    w = weight.to(torch.float64)
    if layer.type == MATMUL:
        return channel_mean(run_layer(layer, m.reshape(1, -1), w), -1)
    if m.numel() != w.shape[1] * layer.groups:
        raise ValueError(f"{layer.name}: {m.numel()} input channel means for a conv reading "
                         f"{w.shape[1] * layer.groups} channels")
    spatial = [int(s) for s in shape[2:]]
    kernel = list(w.shape[2:])
    dims = len(kernel)
    if len(spatial) != dims:
        raise ValueError(f"{layer.name}: input shape {list(shape)} is not [batch, channels] and {dims} spatial "
                         f"size(s) for a {dims}-D conv")
    stride, dilation = _as_tuple(layer.stride, dims), _as_tuple(layer.dilation, dims)
    pads = _pads(layer.padding, kernel, dilation)
    scale = torch.ones((), dtype=torch.float64, device=w.device)
    positions = 1
    for axis, (length, k, st, (pl, pr), d) in enumerate(zip(spatial, kernel, stride, pads, dilation)):
        counts, out = _tap_counts(length, k, st, pl, pr, d)
        view = [1] * dims
        view[axis] = k
        scale = scale * torch.tensor(counts, dtype=torch.float64, device=w.device).reshape(view)
        positions *= out
    if positions == 0:
        raise ValueError(f"{layer.name}: the input {list(shape)} gives the conv no output position")
    per_tap = (w * scale).sum(dim=tuple(range(2, 2 + dims)))  # [C_out, C_in / groups]
    groups = layer.groups
    per_group = per_tap.reshape(groups, -1, per_tap.shape[1])  # [groups, C_out / groups, C_in / groups]
    total = torch.einsum("goc,gc->go", per_group, m.reshape(groups, -1))
    return total.reshape(-1) / positions


def _pads(padding, kernel: list[int], dilation: tuple[int, ...]) -> list[tuple[int, int]]:
    """(left, right) zero padding per spatial axis; ``"same"`` pads ``d (k - 1)`` in all, the extra one on the
    right (torch's convention), ``"valid"`` none."""
    if padding == "valid":
        return [(0, 0)] * len(kernel)
    if padding == "same":
        return [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation)]
    return [(p, p) for p in _as_tuple(padding, len(kernel))]


def channel_mean(y: torch.Tensor, axis: int) -> torch.Tensor:
    """Per-channel mean over all other axes, batch included (float64): POT's ``mean_per_channel_axis``
    followed by the ``mean`` aggregator, for one tensor. A rank-2 tensor ``[B, C]`` is its own per-sample
    statistic (POT: calculate_per_channel_stats returns tensors of rank < 3 unchanged)."""
    y = y.detach().to(torch.float64)
    if y.dim() < 3:
        return y.reshape(-1, y.shape[-1]).mean(0) if y.dim() == 2 else y.reshape(1)
    y = y.movedim(axis % y.dim(), 1)
    return y.reshape(y.shape[0], y.shape[1], -1).mean(2).mean(0)


def set_layer_tensor(gm: fx.GraphModule, layer: Layer, which: str, value: torch.Tensor) -> None:
    """Point the layer's ``weight`` or ``bias`` argument at a new constant holding ``value``.

    The old tensor is never written to (it may be shared with other layers); the new one is registered
    under a fresh name, as a parameter where the old one was a parameter (same ``requires_grad``), else as
    a buffer. Only the stored weight changes: a weight behind a FakeQuantize keeps its FakeQuantize. Call
    :func:`drop_unused_constants` once all tensors are set.
    """
    node = layer.node
    args = list(node.args)
    if which == "weight":
        holder, index = (args[layer.weight_arg], 0) if _is_fq(gm, args[layer.weight_arg]) else (node, layer.weight_arg)
    elif which == "bias":
        if layer.bias_arg < 0:
            raise ValueError(f"{node.name}: a matmul has no bias argument to set")
        holder, index = node, layer.bias_arg
    else:
        raise ValueError(which)
    old = holder.args[index] if len(holder.args) > index else None
    name = unique_attr_name(gm, f"{node.name}_{which}")
    template = get_attr_tensor(gm, old) if isinstance(old, fx.Node) and old.op == "get_attr" else None
    data = value.detach().clone().contiguous()
    if template is not None:  # the model's device (a CUDA model keeps its tensors there)
        data = data.to(template.device)
    if isinstance(template, torch.nn.Parameter):
        gm.register_parameter(name, torch.nn.Parameter(data, requires_grad=template.requires_grad))
    else:
        gm.register_buffer(name, data)
    with gm.graph.inserting_before(holder):
        const = gm.graph.get_attr(name)
    const.meta["val"] = data
    new_args = list(holder.args)
    while len(new_args) <= index:
        new_args.append(None)
    new_args[index] = const
    holder.args = tuple(new_args)
    if holder is node and which == "bias":
        node.kwargs = {k: v for k, v in node.kwargs.items() if k != "bias"}


def _is_fq(gm: fx.GraphModule, arg) -> bool:
    return isinstance(arg, fx.Node) and arg.op == "call_module" and \
        isinstance(gm.get_submodule(arg.target), FakeQuantize)


def drop_unused_constants(gm: fx.GraphModule) -> None:
    """Erase constant nodes left without users (get_attr and ops on constants only) and delete the
    attributes no ``get_attr`` reads any more, so the model holds only the tensors its graph uses."""
    erased = set()
    for node in reversed(list(gm.graph.nodes)):
        if not node.users and _is_const(node):
            if node.op == "get_attr":
                erased.add(node.target)
            gm.graph.erase_node(node)
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for target in erased - used:
        owner_path, _, attr = target.rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        if hasattr(owner, attr):
            delattr(owner, attr)
    gm.graph.lint()
    gm.recompile()
