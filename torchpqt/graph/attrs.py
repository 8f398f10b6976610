"""Reading and naming the constant attributes (parameters, buffers) a GraphModule's ``get_attr`` nodes
point at; shared by capture, the converter fusions and the graph view."""

from __future__ import annotations

import torch
from torch import fx

__all__ = ["get_attr_tensor", "unique_attr_name"]


def get_attr_tensor(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    """The tensor a ``get_attr`` node reads (its target may be a dotted path into submodules)."""
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj


def unique_attr_name(gm: fx.GraphModule, hint: str) -> str:
    """``<hint>_<i>`` with dots made underscores and the first ``i`` that ``gm`` does not use yet."""
    base = hint.replace(".", "_")
    i = 0
    while hasattr(gm, f"{base}_{i}"):
        i += 1
    return f"{base}_{i}"
