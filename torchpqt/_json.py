"""Plain-JSON form of the records torchpqt writes (CLI ``report.json``, the analysis report)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch


def tensor_values(tensor: Any) -> Any:
    """A tensor as a float (one element) or a flat list of floats; anything else unchanged."""
    if isinstance(tensor, torch.Tensor):
        flat = tensor.detach().to(torch.float64).flatten().tolist()
        return flat[0] if len(flat) == 1 else flat
    return tensor


def jsonable(obj: Any) -> Any:
    """Dataclasses, dicts, sequences, tensors and numpy scalars as JSON values; NaN/Inf as strings (strict JSON)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, torch.Tensor):
        return jsonable(tensor_values(obj))
    if hasattr(obj, "item"):  # numpy scalars
        return jsonable(obj.item())
    return str(obj)
