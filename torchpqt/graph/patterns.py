"""POT's "skipped" patterns (spec §7.4): ops that get no FakeQuantize on their inputs because the
runtime fuses them into a neighbour (bias adds, scale-shifts after a conv, input preprocessing,
attention blocks).

Only the patterns that occur in torch graphs are implemented; each names its POT pattern.
"""

from __future__ import annotations

from torch import fx

from torchpqt.graph.ops import ELTWISE_TYPES, IDENTITY, WEIGHTED_TYPES
from torchpqt.graph.view import CONST, PARAMETER, GraphView

_ACTIVATIONS = frozenset({"ReLU", "PReLU", "Sigmoid", "Clamp", "Swish", "HSwish", "Gelu", "Tanh", "Elu",
                          "Mish", "HSigmoid"})
_LAYOUT = frozenset({"Reshape", "Transpose", "Gather", IDENTITY})


def _const_operand(view: GraphView, node: fx.Node) -> bool:
    """An eltwise op with a constant (tensor or Python scalar) operand."""
    tensors = [a for a in node.args[:2] if isinstance(a, fx.Node)]
    return len(tensors) < 2 or any(view.is_const(a) for a in tensors)


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _through_identity(view: GraphView, node: fx.Node) -> fx.Node | None:
    """The single consumer of ``node``, looking through no-op nodes."""
    user = _single_user(node)
    while user is not None and view.type_of(user) == IDENTITY:
        user = _single_user(user)
    return user


def skipped_ops(view: GraphView) -> dict[fx.Node, str]:
    """Ops POT marks ``skipped``, each with the pattern that matched."""
    skipped: dict[fx.Node, str] = {}
    for node, info in view.ops.items():
        if view.is_const(node):
            continue
        if view.is_shape_derived(node):
            skipped[node] = "shape computation (sizes and constants only; a constant in POT's IR)"
            continue
        if info.type in WEIGHTED_TYPES:
            _post_ops(view, node, skipped)
        if info.type == "SoftMax":
            _attention(view, node, skipped)
    for node in view.nodes:
        if node.op == "placeholder":
            _input_preprocessing(view, node, skipped)
    return skipped


def _post_ops(view: GraphView, node: fx.Node, skipped: dict) -> None:
    # POT operation_with_bias: weighted op -> Add(const) — the bias add is never quantized.
    # POT cpu_patterns: Conv/FC [-> bias] [-> activation] -> scale-shift / eltwise-with-const, when
    # no intermediate node branches (the runtime fuses these post-ops).
    cur = node
    user = _through_identity(view, cur)
    if user is not None and view.type_of(user) == "Add" and _const_operand(view, user):
        skipped[user] = "operation_with_bias"
        cur = user
        user = _through_identity(view, cur)
    if user is not None and view.type_of(user) in _ACTIVATIONS:
        cur = user
        user = _through_identity(view, cur)
    if user is None or not _const_operand(view, user):
        return
    if view.type_of(user) == "Multiply":
        nxt = _through_identity(view, user)
        if nxt is not None and view.type_of(nxt) == "Add" and _const_operand(view, nxt):
            skipped[nxt] = "fused post-op (scale-shift after conv/fc)"
    if view.type_of(user) in ELTWISE_TYPES:
        skipped[user] = "fused post-op (eltwise with const after conv/fc)"


def _attention(view: GraphView, softmax: fx.Node, skipped: dict) -> None:
    # POT attention blocks: SoftMax -> [Reshape(c)] -> MatMul <- Transpose <- Reshape(c) <- Add (and the
    # ViT / Stable-Diffusion variants through Gather / Transpose / Reshape): the whole block, including
    # that MatMul, is skipped.
    user = _through_identity(view, softmax)
    while user is not None and view.type_of(user) == "Reshape":
        user = _through_identity(view, user)
    if user is None or view.type_of(user) != "MatMul" or len(user.args) < 2:
        return
    other = user.args[1]
    layout = []
    while isinstance(other, fx.Node) and view.type_of(other) in _LAYOUT and len(layout) < 6:
        layout.append(other)
        other = other.args[0]
    if layout and isinstance(other, fx.Node) and view.type_of(other) in ("Add", "MatMul") \
            and (view.type_of(other) == "Add" or view.ops[other].bias_arg is not None):
        skipped[user] = "attention block (SoftMax -> MatMul <- Transpose <- Reshape <- Add)"
        skipped[softmax] = "attention block"
        for node in layout:  # POT marks every node of the block (SpecialBlocksMarker.mark_block_nodes)
            skipped[node] = "attention block"


def _input_preprocessing(view: GraphView, param: fx.Node, skipped: dict) -> None:
    # POT special_patterns "inputs": Parameter [-> Transpose] -> scale-shift / Add(c) / Subtract /
    # Multiply: all preprocessing ops are skipped and the FQ lands after them.
    user = _through_identity(view, param)
    if user is not None and view.type_of(user) == "Transpose":
        user = _through_identity(view, user)
    if user is None:
        return
    kind = view.type_of(user)
    if kind == "Multiply" and _const_operand(view, user):
        nxt = _through_identity(view, user)
        if nxt is not None and view.type_of(nxt) == "Add" and _const_operand(view, nxt):
            skipped[user] = skipped[nxt] = "input preprocessing (scale-shift)"
        else:
            skipped[user] = "input preprocessing (Multiply const)"
    elif kind == "Add" and _const_operand(view, user):
        skipped[user] = "input preprocessing (Add const)"
    elif kind == "Subtract" and _const_operand(view, user):
        # OpenVINO's converter rewrites Parameter -> Subtract(c) -> Multiply(c) into Multiply(c) -> Add(c),
        # which POT skips as a scale-shift (measured with POT 2023.3 on a converted torch model; spec §7.5's
        # "Multiply quantized" holds only for a hand-made IR).
        skipped[user] = "input preprocessing (Subtract)"
        nxt = _through_identity(view, user)
        if nxt is not None and view.type_of(nxt) == "Multiply" and _const_operand(view, nxt):
            skipped[nxt] = "input preprocessing (Subtract -> Multiply, a scale-shift once converted)"


__all__ = ["CONST", "PARAMETER", "skipped_ops"]
