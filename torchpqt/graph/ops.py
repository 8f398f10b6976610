"""What OpenVINO's converter makes of each ATen op: the OpenVINO type name the hardware rules and
``ignored.operations`` use, which arguments carry activations, and which carry constant weights.

POT never quantized a torch graph: it quantized the IR the model converter produced (spec §0.1).
This table is that translation, restricted to what placement needs.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import fx

# Ops that vanish in the converted IR (no-ops at inference): FQs and consumers look through them.
IDENTITY = "Identity"

# aten packet name -> OpenVINO type. Weighted ops are handled in `_weighted`.
_SIMPLE: dict[str, str] = {
    # eltwise (all tensor ports quantized on CPU/GPU)
    "add": "Add", "sub": "Subtract", "rsub": "Subtract", "mul": "Multiply", "div": "Divide",
    "eq": "Equal", "ne": "NotEqual", "lt": "Less", "le": "LessEqual", "gt": "Greater", "ge": "GreaterEqual",
    "logical_and": "LogicalAnd", "logical_or": "LogicalOr", "logical_xor": "LogicalXor",
    "logical_not": "LogicalNot", "remainder": "FloorMod", "fmod": "FloorMod",
    "maximum": "Maximum", "minimum": "Minimum",
    "squared_difference": "SquaredDifference",
    # input-only quantizable ops
    "pow": "Power", "avg_pool1d": "AvgPool", "avg_pool2d": "AvgPool", "avg_pool3d": "AvgPool",
    "mean": "ReduceMean", "layer_norm": "MVN", "group_norm": "MVN", "instance_norm": "MVN",
    "upsample_nearest1d": "Interpolate", "upsample_nearest2d": "Interpolate",
    "upsample_nearest3d": "Interpolate", "upsample_bilinear2d": "Interpolate",
    "upsample_bicubic2d": "Interpolate", "upsample_linear1d": "Interpolate",
    "upsample_trilinear3d": "Interpolate", "_upsample_bilinear2d_aa": "Interpolate",
    "_upsample_bicubic2d_aa": "Interpolate", "upsample_nearest_exact2d": "Interpolate",
    # activations (quantizable on GNA only)
    "relu": "ReLU", "relu6": "Clamp", "hardtanh": "Clamp", "clamp": "Clamp", "clip": "Clamp",
    "sigmoid": "Sigmoid", "tanh": "Tanh", "gelu": "Gelu", "silu": "Swish", "hardswish": "HSwish",
    "hardsigmoid": "HSigmoid", "mish": "Mish", "elu": "Elu", "prelu": "PReLU", "leaky_relu": "PReLU",
    "_prelu_kernel": "PReLU", "exp": "Exp", "log": "Log", "abs": "Abs", "sign": "Sign",
    "softmax": "SoftMax", "_softmax": "SoftMax", "_safe_softmax": "SoftMax", "log_softmax": "LogSoftmax",
    "sqrt": "Sqrt", "erf": "Erf", "batch_norm": "BatchNormInference",
    "_native_batch_norm_legit_no_training": "BatchNormInference",
    # quantize-agnostic layout / selection ops
    "max_pool1d": "MaxPool", "max_pool2d": "MaxPool", "max_pool3d": "MaxPool",
    "max_pool2d_with_indices": "MaxPool", "max_pool3d_with_indices": "MaxPool",
    "amax": "ReduceMax", "view": "Reshape", "reshape": "Reshape", "_unsafe_view": "Reshape",
    "flatten": "Reshape", "unflatten": "Reshape", "squeeze": "Squeeze", "unsqueeze": "Unsqueeze",
    "permute": "Transpose", "transpose": "Transpose", "t": "Transpose", "numpy_T": "Transpose",
    "slice": "StridedSlice", "narrow": "StridedSlice", "select": "Gather", "index_select": "Gather",
    "embedding": "Gather", "expand": "Broadcast", "repeat": "Tile", "split": "Split",
    "split_with_sizes": "VariadicSplit", "chunk": "Split", "unbind": "Split", "tensor_split": "VariadicSplit",
    "cat": "Concat", "concat": "Concat", "pad": "Pad", "constant_pad_nd": "Pad",
    "pixel_shuffle": "DepthToSpace", "channel_shuffle": "ShuffleChannels", "native_channel_shuffle":
    "ShuffleChannels",
    # no-ops in the IR
    "contiguous": IDENTITY, "clone": IDENTITY, "dropout": IDENTITY, "alias": IDENTITY, "detach": IDENTITY,
    "feature_dropout": IDENTITY, "alpha_dropout": IDENTITY, "lift_fresh_copy": IDENTITY,
}

# POT: graph/special_operations.py QUANTIZE_AGNOSTIC_OPERATIONS (Minimum/Maximum override their HW entry).
AGNOSTIC_TYPES = frozenset({
    "MaxPool", "ReduceMax", "Reshape", "Concat", "Flatten", "Squeeze", "Unsqueeze", "Split", "VariadicSplit",
    "Crop", "Transpose", "Tile", "StridedSlice", "ShuffleChannels", "Broadcast", "Pad", "Minimum", "Maximum",
    "ConvertLike", "Gather", "DepthToSpace", IDENTITY,
})
# POT: FakeQuantizePropagation — how an FQ jumps over an agnostic op.
MULTI_BRANCH_TYPES = frozenset({"Concat", "Pad"})
ELTWISE_TYPES = frozenset({
    "Add", "Multiply", "Subtract", "Divide", "Less", "LessEqual", "Greater", "GreaterEqual", "Equal",
    "NotEqual", "FloorMod", "LogicalOr", "LogicalXor", "LogicalAnd", "Maximum", "Minimum", "LogicalNot",
    "SquaredDifference",
})
# POT: "input-only" ops get an FQ on port 0 only (graph/transformer.py).
INPUT_ONLY_TYPES = frozenset({
    "Interpolate", "Power", "ReduceMean", "NormalizeL2", "Assign", "PReLU", "ReLU", "Sigmoid", "Tanh",
    "Clamp", "MVN",
})
WEIGHTED_TYPES = frozenset({
    "Convolution", "DepthWiseConvolution", "GroupConvolution", "ConvolutionBackpropData",
    "GroupConvolutionBackpropData", "MatMul",
})
CONV_TYPES = frozenset({"Convolution", "DepthWiseConvolution", "GroupConvolution"})


@dataclass
class OpInfo:
    """One captured op seen as OpenVINO would see it.

    Attributes:
        node: the fx node.
        type: OpenVINO type name (``Convolution``, ``MatMul``, ``Add`` ...) or ``aten::<name>``.
        scope: the name users write in ``ignored.scope``: the module path for the main op of a
            leaf module (``layer1.0.conv1``), else ``<module path>/<node name>``.
        module_path: the torch module path the op was called from ('' for the root).
        act_args: indices of ``node.args`` that carry (possibly) quantizable tensor inputs, in port order.
        weight_arg: index of the constant weight argument of a weighted op, or None.
        weight_axis: output-channel axis of that weight tensor.
        bias_arg: index of a bias argument fused into the op, or None.
        attributes: OpenVINO-style attributes for ``ignored.operations`` matching.
    """

    node: fx.Node
    type: str
    scope: str
    module_path: str
    act_args: tuple[int, ...] = ()
    weight_arg: int | None = None
    weight_axis: int = 0
    bias_arg: int | None = None
    attributes: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.node.name


def packet_name(node: fx.Node) -> str:
    """The ATen packet name of a call_function node (``conv2d``), or the Python name of the callable."""
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return target.overloadpacket.__name__
    if target is operator.getitem:
        return "getitem"
    return getattr(target, "__name__", str(target))


def _tensor_meta(node) -> torch.Tensor | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val if isinstance(val, torch.Tensor) else None


def _conv_attributes(node: fx.Node, name: str) -> dict:
    a = node.args
    if name == "convolution":
        stride, padding, dilation, transposed, groups = a[3], a[4], a[5], a[6], a[8]
    elif name.startswith("conv_transpose"):
        stride = a[3] if len(a) > 3 else 1
        padding = a[4] if len(a) > 4 else 0
        groups = a[6] if len(a) > 6 else 1
        dilation = a[7] if len(a) > 7 else 1
        transposed = True
    else:
        stride = a[3] if len(a) > 3 else 1
        padding = a[4] if len(a) > 4 else 0
        dilation = a[5] if len(a) > 5 else 1
        groups = a[6] if len(a) > 6 else 1
        transposed = False
    w = _tensor_meta(a[1])
    rank = (w.dim() - 2) if w is not None else 2
    as_list = (lambda v: list(v) if isinstance(v, (list, tuple)) else [v] * rank)
    pads = as_list(padding) if not isinstance(padding, str) else padding
    attrs = {"strides": as_list(stride), "dilations": as_list(dilation), "group": int(groups),
             "transposed": bool(transposed)}
    if isinstance(pads, str):
        attrs["auto_pad"] = pads
    else:
        attrs["pads_begin"] = pads
        attrs["pads_end"] = pads
    return attrs


def _weighted(node: fx.Node, name: str) -> tuple[str, dict, dict] | None:
    """(type, arg roles, attributes) for conv / linear / matmul ops, else None."""
    if name in ("conv1d", "conv2d", "conv3d", "convolution") or name.startswith("conv_transpose"):
        attrs = _conv_attributes(node, name)
        if attrs.pop("transposed"):
            # POT: ConvolutionBackpropData weights are [Cin, Cout/groups, ...]; channel axis 1. A grouped one
            # stays GroupConvolutionBackpropData in POT's IR, which no stock hardware config lists.
            kind = "ConvolutionBackpropData" if attrs["group"] == 1 else "GroupConvolutionBackpropData"
            return kind, {"act": (0,), "w": 1, "axis": 1, "b": 2}, attrs
        w = _tensor_meta(node.args[1])
        x = _tensor_meta(node.args[0])
        groups = attrs["group"]
        ov_type = "Convolution"
        if groups > 1 and w is not None and x is not None:
            c_in = x.shape[1]
            # POT: DepthWiseConvolution is a virtual type for group == C_out == C_in.
            if groups == c_in == w.shape[0]:
                ov_type = "DepthWiseConvolution"
        if groups == 1:
            attrs.pop("group")  # POT: plain Convolution has no `group` attribute
        return ov_type, {"act": (0,), "w": 1, "axis": 0, "b": 2}, attrs
    if name == "linear":
        return "MatMul", {"act": (0,), "w": 1, "axis": 0, "b": 2}, {"transpose_a": False, "transpose_b": True}
    if name in ("matmul", "mm", "bmm"):
        return "MatMul", {"act": (0, 1), "w": None, "axis": -1, "b": None}, {"transpose_a": False,
                                                                              "transpose_b": False}
    if name == "addmm":
        return "MatMul", {"act": (1, 2), "w": None, "axis": -1, "b": 0}, {"transpose_a": False,
                                                                           "transpose_b": False}
    return None


def module_path(node: fx.Node) -> str:
    """The torch module path a node was called from (``layer1.0.conv1``; '' for the root)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    for prefix in ("L__self___", "L__self__"):
        path = path.removeprefix(prefix)
    return path


def classify(node: fx.Node, is_const) -> OpInfo:
    """Translate one call_function node; ``is_const(arg)`` tells whether an argument is a constant."""
    name = packet_name(node)
    path = module_path(node)
    weighted = _weighted(node, name)
    attributes: dict = {}
    if weighted is not None:
        ov_type, roles, attributes = weighted
        act = roles["act"]
        w_arg, axis, b_arg = roles["w"], roles["axis"], roles["b"]
        if ov_type == "MatMul" and w_arg is None and len(act) == 2 and is_const(node.args[act[1]]):
            w_arg, act = act[1], act[:1]  # POT: MatMul port 1 Const -> weights
        if b_arg is not None and (len(node.args) <= b_arg or node.args[b_arg] is None):
            b_arg = None
        info = OpInfo(node, ov_type, "", path, act, w_arg, axis, b_arg, attributes)
    else:
        ov_type = _SIMPLE.get(name, f"aten::{name}" if name != "getitem" else IDENTITY)
        info = OpInfo(node, ov_type, "", path, _tensor_arg_indices(node, ov_type), attributes=attributes)
    if name in ("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d"):
        out = node.args[1] if len(node.args) > 1 else None
        # Global average pooling converts to ReduceMean; other output sizes to AdaptiveAvgPool.
        global_pool = out is not None and all(int(v) == 1 for v in (out if isinstance(out, (list, tuple))
                                                                    else [out]))
        info.type = "ReduceMean" if global_pool else "AdaptiveAvgPool"
        info.act_args = (0,)
    return info


def _tensor_arg_indices(node: fx.Node, ov_type: str) -> tuple[int, ...]:
    if ov_type == "Concat":
        return (0,)  # the list argument; expanded by the graph layer
    idx = tuple(i for i, a in enumerate(node.args) if isinstance(a, fx.Node))
    if ov_type in INPUT_ONLY_TYPES or ov_type in AGNOSTIC_TYPES or ov_type in ("AvgPool", "SoftMax"):
        return idx[:1]
    return idx
