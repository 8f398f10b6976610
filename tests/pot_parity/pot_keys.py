"""Op keys shared by the POT golden generator (OpenVINO IR side) and the parity test (torch side).

A key names one op so that both graphs agree on it without sharing node names:

* an op inside a weighted leaf module (Linear, Conv, LayerNorm, Embedding ...) is that module's main op,
  ``[module, main type, 0]``: OpenVINO splits such modules (MatMul + bias Add, MVN + Multiply + Add,
  Convolution/WithoutBiases + Add) where the torch graph keeps one op;
* a layout op (Reshape, Transpose, ...) is ``[module, type, "of", key of its input 0]``, since the ONNX
  exporter merges consecutive transposes and the counts differ;
* a network input is ``["<input>", position]``, a network output (Result, input port 0) ``["<output>",
  position]``;
* any other op is ``[module, type, k]``: the k-th op of that type called from that module (not counting the
  two kinds above), in execution order.
"""

from __future__ import annotations

# torch leaf module class -> the op type it becomes (torchpqt spelling)
LEAF_MAIN = {
    "Linear": "MatMul", "Conv1d": "Convolution", "Conv2d": "Convolution", "Conv3d": "Convolution",
    "ConvTranspose1d": "ConvolutionBackpropData", "ConvTranspose2d": "ConvolutionBackpropData",
    "ConvTranspose3d": "ConvolutionBackpropData", "LayerNorm": "MVN", "GroupNorm": "MVN",
    "Embedding": "Gather", "BatchNorm2d": "BatchNormInference",
}
LAYOUT = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze"})

# OpenVINO / POT spellings -> torchpqt's; convs with groups are one family (IR GroupConvolution, POT's
# virtual DepthWiseConvolution, torchpqt's DepthWiseConvolution / GroupConvolution).
TYPE_ALIASES = {
    "GroupConvolution": "Convolution", "DepthWiseConvolution": "Convolution", "Relu": "ReLU",
    "Flatten": "Reshape", "Softmax": "SoftMax",
}


def norm_type(t: str) -> str:
    return TYPE_ALIASES.get(t, t)


def leaf_modules(model) -> dict[str, str]:
    """module path -> main op type, for the weighted leaf modules of ``model``."""
    return {name: LEAF_MAIN[type(m).__name__] for name, m in model.named_modules()
            if name and type(m).__name__ in LEAF_MAIN}


def assign_keys(order, module_of, type_of, input0_of, is_input, leaves) -> dict:
    """Keys for every op in ``order`` (execution order).

    Args:
        order: the ops, in execution order.
        module_of(op): torch module path ('' for the root) or None when unknown (then no key).
        type_of(op): torchpqt-spelled type.
        input0_of(op): the op producing input 0 (or None).
        is_input(op): position of a network input, or None.
        leaves: ``leaf_modules(model)``.
    """
    keys: dict = {}
    counts: dict[tuple, int] = {}

    def key(op):
        if op in keys:
            return keys[op]
        pos = is_input(op)
        if pos is not None:
            k = ["<input>", pos]
        else:
            module, t = module_of(op), type_of(op)
            if module is None:
                k = None
            elif module in leaves:
                k = [module, leaves[module], 0]
            elif t in LAYOUT:
                src = input0_of(op)
                k = [module, t, "of", key(src) if src is not None else None]
            else:
                n = counts.get((module, t), 0)
                counts[(module, t)] = n + 1
                k = [module, t, n]
        keys[op] = k
        return k

    for op in order:
        key(op)
    return keys
