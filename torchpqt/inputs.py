"""Model inputs: the one normalization of what users pass as example inputs and calibration items.

A tensor is one positional input, a tuple or list holds positional inputs, a dict holds keyword inputs, and
:class:`ModelInputs` holds both, for a ``forward(x, *, mask)`` that needs both at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from torchpqt.errors import TorchPQTError

__all__ = ["ModelInputs", "split_inputs"]


@dataclass(frozen=True)
class ModelInputs:
    """Positional and keyword inputs of one call: ``model(*args, **kwargs)``."""

    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


def split_inputs(inputs: Any, *, error: type[TorchPQTError] | None = None, where: str = "inputs"
                 ) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of ``inputs``: a tensor, a tuple/list of positional inputs, a dict of keyword inputs
    or a :class:`ModelInputs`.

    Args:
        error: raise this error class for anything else; None treats anything else as one positional input.
        where: names the argument in that error, e.g. ``torchpqt.exporters: example_inputs``.
    """
    if isinstance(inputs, ModelInputs):
        return tuple(inputs.args), dict(inputs.kwargs)
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    if error is not None and not isinstance(inputs, torch.Tensor):
        raise error(f"{where} must be a tensor, a tuple/list of inputs or a dict of keyword inputs, got "
                    f"{type(inputs).__name__}")
    return (inputs,), {}
