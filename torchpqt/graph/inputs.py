"""What inputs a captured model accepts, said in the user's terms: the input names, the shapes it was
captured with, and a cheap check of each call against them (rank and the dimensions torch.export fixed).

torch.export's own input check raises a bare ``RuntimeError``, and a dimension it left dynamic can still be
wrong for the model (an image size a Linear after a flatten cannot take); both surface as
:class:`~torchpqt.errors.CalibrationError` naming the input, the shape received and the shape captured.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx
from torch.fx import _pytree as fx_pytree

from torchpqt.errors import CalibrationError

__all__ = ["CapturedInput", "InputCheck", "captured_inputs", "describe_inputs", "named_inputs"]


@dataclass(frozen=True)
class CapturedInput:
    """One flat tensor input of the captured model."""

    name: str  # the placeholder name: the forward() argument, ``pair_0`` for pair[0]
    index: int  # position among the flattened inputs
    shape: tuple[int, ...]  # the example's shape
    fixed: tuple[bool, ...]  # per dimension: torch.export specialized it (must match)
    dtype: torch.dtype

    def describe(self) -> str:
        free = [i for i, f in enumerate(self.fixed) if not f]
        return (f"{self.name}: {_shape(self.shape)} {_dtype(self.dtype)}"
                + (f" (dims {free} may vary)" if free else ""))


def _shape(shape) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _flat(gm: fx.GraphModule, args: tuple, kwargs: dict) -> list | None:
    spec = getattr(gm, "_in_spec", None)
    if spec is None:
        return None
    try:
        return list(fx_pytree.tree_flatten_spec((tuple(args), dict(kwargs)), spec))
    except Exception:  # noqa: BLE001 -- a structure that does not fit: the forward reports it
        return None


def _fixed(dim, ranges: dict) -> bool:
    """A dimension torch.export specialized: an int, or a symbol whose range is one value."""
    if isinstance(dim, int):
        return True
    expr = getattr(getattr(dim, "node", None), "expr", None)
    if expr is None:
        return False
    if getattr(expr, "is_number", False):  # a SymInt that stands for a constant
        return True
    vr = ranges.get(expr)
    return vr is not None and vr.lower == vr.upper


def captured_inputs(gm: fx.GraphModule, args: tuple, kwargs: dict) -> tuple[CapturedInput, ...]:
    """The flat tensor inputs of ``gm`` with the example's shapes (``args``/``kwargs`` as captured)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    flat = _flat(gm, args, kwargs)
    if flat is None or len(flat) != len(placeholders):
        return ()
    ranges = getattr(gm, "range_constraints", None) or {}
    out = []
    for i, (node, value) in enumerate(zip(placeholders, flat)):
        val = node.meta.get("val")
        if not isinstance(value, torch.Tensor) or not isinstance(val, torch.Tensor):
            continue
        fixed = tuple(_fixed(d, ranges) for d in val.shape)
        out.append(CapturedInput(node.name, i, tuple(value.shape), fixed, value.dtype))
    return tuple(out)


def named_inputs(gm: fx.GraphModule, args: tuple, kwargs: dict) -> list[tuple[str, object]]:
    """The flat inputs of one call with the captured model's names (``input <i>`` where they do not fit)."""
    flat = _flat(gm, args, kwargs)
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    if flat is not None and len(flat) == len(names):
        return list(zip(names, flat))
    return [(f"input {i}", v) for i, v in enumerate([*args, *kwargs.values()])]


def describe_inputs(gm: fx.GraphModule, args: tuple, kwargs: dict) -> str:
    """``received x: [1, 3, 8, 8] float32; the model was captured with x: [1, 3, 8, 8] float32 ...``."""
    captured = getattr(gm, "torchpqt_inputs", ())
    got = ", ".join(f"{n}: {_shape(v.shape)} {_dtype(v.dtype)}" for n, v in named_inputs(gm, args, kwargs)
                    if isinstance(v, torch.Tensor))
    want = ", ".join(c.describe() for c in captured)
    return f"received {got or 'no tensor'}; the model was captured with {want or 'unknown inputs'}"


class InputCheck:
    """Forward pre-hook of a captured model: each tensor input has the captured rank and every dimension
    torch.export specialized, else :class:`CalibrationError`. One flatten and a few int compares a call."""

    def __init__(self, inputs: tuple[CapturedInput, ...]):
        self.inputs = inputs

    def __call__(self, module: fx.GraphModule, args: tuple, kwargs: dict) -> None:
        flat = _flat(module, args, kwargs)
        if flat is None:
            return  # a structure that does not fit: torch's own check or the forward reports it
        for want in self.inputs:
            x = flat[want.index] if want.index < len(flat) else None
            if not isinstance(x, torch.Tensor):
                continue
            if x.dim() != len(want.shape) or any(f and int(d) != w for d, w, f in zip(x.shape, want.shape,
                                                                                     want.fixed)):
                need = "[" + ", ".join(str(w) if f else "*" for w, f in zip(want.shape, want.fixed)) + "]"
                raise CalibrationError(
                    f"input {want.name} has shape {_shape(x.shape)}, the captured model takes {need} "
                    f"({describe_inputs(module, args, kwargs)}); fix: give every sample the shape of the "
                    "example inputs (resize or pad), or capture with an example of the shape you calibrate on")
