"""The fully resolved quantization spec of one FakeQuantize: what the hardware rules and the
user config decided, before any statistics are seen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Group = Literal["weights", "activations", "outputs"]
Mode = Literal["symmetric", "asymmetric"]
Granularity = Literal["pertensor", "perchannel"]


@dataclass(frozen=True)
class QuantSpec:
    """One FakeQuantize's grid.

    Attributes:
        group: ``weights`` (input is a constant), ``activations`` or ``outputs`` (GNA).
        bits: bit width; asymmetric zero-point alignment uses ``2**bits - 1`` steps (POT quirk).
        mode: ``symmetric`` or ``asymmetric``.
        granularity: ``pertensor`` or ``perchannel``.
        level_low, level_high: the integer grid limits.
        levels: ``|level_high| + |level_low| + 1``.
        signed: True iff the config gave both limits with ``level_low < 0`` (forces signed
            symmetric activations, e.g. on GNA); otherwise the sign is decided by the data.
    """

    group: Group
    bits: int
    mode: Mode
    granularity: Granularity
    level_low: int
    level_high: int
    levels: int
    signed: bool
