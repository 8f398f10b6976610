"""``ignored`` (spec §9) and the transformer model type's ignored op types (spec §8 point 1).

Scope names are torch module paths: ``layer4.1.conv2`` names the op(s) called directly by that
module; ``layer4.1/add_3`` names one op inside a module's forward; ``re:<regex>`` matches scope names
by ``re.fullmatch``. Unlike POT, a rule that matches nothing is an error listing close matches.
"""

from __future__ import annotations

import difflib
import re

from torch import fx

from torchpqt.errors import ScopeError
from torchpqt.graph.ops import IDENTITY
from torchpqt.graph.view import GraphView

# POT: algorithms/quantization/utils.py::get_ignored_operations (model_type "transformer").
TRANSFORMER_IGNORED = ("Add", "Power", "Squeeze", "Subtract", "ReduceMean", "SquaredDifference", "MVN",
                       "Multiply")


def _scope_matches(info, scope: str) -> bool:
    if scope.startswith("re:"):
        return re.fullmatch(scope[3:], info.scope) is not None
    return scope in (info.scope, info.module_path)


def _attrs_match(info, wanted: dict) -> bool:
    # POT: each listed attribute must exist on the node and compare equal; absent counts as mismatch.
    for key, value in wanted.items():
        if key not in info.attributes:
            return False
        have = info.attributes[key]
        if isinstance(have, tuple):
            have = list(have)
        if have != value:
            return False
    return True


def _close(word: str, options) -> str:
    close = difflib.get_close_matches(word.removeprefix("re:"), sorted(set(options)), n=3, cutoff=0.5)
    return ", ".join(repr(c) for c in close) if close else "none"


def match_ignored(view: GraphView, config, hw) -> dict[fx.Node, str]:
    """Ops that get no FQ on their inputs, each with the rule that ignored it.

    Raises:
        ScopeError: a scope or operation rule matches no op of the model.
    """
    ops = {n: i for n, i in view.ops.items() if not view.is_const(n) and i.type != IDENTITY}
    ignored: dict[fx.Node, str] = {}
    for scope in config.ignored.scope:
        hits = [n for n, info in ops.items() if _scope_matches(info, scope)]
        if not hits:
            names = [i.scope for i in ops.values()] + [i.module_path for i in ops.values() if i.module_path]
            raise ScopeError(f"ignored.scope entry {scope!r} matches no op of the model; close matches: "
                             f"{_close(scope, names)} (see torchpqt.plan(...) for all scope names)")
        for n in hits:
            ignored[n] = f"ignored.scope {scope!r}"
    _match_operations(ops, config, ignored)
    if config.model_type == "transformer":
        types = TRANSFORMER_IGNORED if config.target_device != "CPU_SPR" else TRANSFORMER_IGNORED[:-1]
        for n, info in ops.items():
            if info.type in types:
                ignored.setdefault(n, "model_type transformer")
    _extend_through_agnostic(view, ignored)
    return ignored


def _match_operations(ops, config, ignored) -> None:
    present = {info.type for info in ops.values()}
    for entry in config.ignored.operations:
        if entry.type not in present:
            raise ScopeError(f"ignored.operations type {entry.type!r} matches no op of the model; close "
                             f"matches: {_close(entry.type, present)} (OpenVINO type names, e.g. "
                             "Convolution, MatMul, Add)")
    hit_any = {id(e): False for e in config.ignored.operations}
    for n, info in ops.items():
        # POT: only the first entry whose type matches is consulted.
        entry = next((e for e in config.ignored.operations if e.type == info.type), None)
        if entry is None:
            continue
        if _attrs_match(info, entry.attributes_dict()):
            ignored[n] = f"ignored.operations {entry.type}"
            hit_any[id(entry)] = True
    for entry in config.ignored.operations:
        if not hit_any[id(entry)] and entry.attributes:
            raise ScopeError(f"ignored.operations entry {entry.to_dict()} matches no op: no {entry.type} has "
                             "those attributes (POT consults only the first entry of each type)")


def _extend_through_agnostic(view: GraphView, ignored: dict) -> None:
    # POT: an ignored quantize-agnostic node passes the ignore on to its direct consumers.
    for node in [n for n in ignored if view.type_of(n) in view.agnostic_types]:
        for user in node.users:
            if user.op == "call_function" and user not in ignored:
                ignored[user] = f"consumer of ignored {view.scope_of(node)}"
