"""Typed view of POT's hardware rule files.

The JSON files next to this module (``cpu.json``, ``gpu.json``, ``gna.json``, ``gna3.json``) are
copied unchanged from openvino-dev 2023.3 (``openvino/tools/pot/configs/hardware/``). They say,
per OpenVINO op type, which quantization configs its inputs (``activations``), constant inputs
(``weights``) and, on GNA, outputs (``outputs``) accept. This module parses them once into
frozen dataclasses; :mod:`torchpqt.hardware.select` picks one config per FakeQuantize from them.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any

from torchpqt.constants import GRANULARITIES, GROUPS, MODES
from torchpqt.errors import ConfigError

__all__ = [
    "GROUPS",
    "TARGET_DEVICES",
    "HardwareConfig",
    "OpRule",
    "QConfig",
    "load_hardware_config",
    "parse_hardware_config",
]

#: target_device -> rule file. POT: ``algorithms/quantization/utils.py::__HARDWARE_CONFIGS_MAP``.
#: NPU is left out: POT maps it to ``npu.json``, which 2023.3 does not ship. The keys are
#: ``torchpqt.constants.TARGET_DEVICES`` (a test keeps the two equal).
TARGET_DEVICES: Mapping[str, str] = MappingProxyType(
    {
        "ANY": "cpu.json",
        "CPU": "cpu.json",
        "CPU_SPR": "cpu.json",
        "GPU": "gpu.json",
        "GNA": "gna.json",
        "GNA3": "gna3.json",
        "GNA3.5": "gna3.json",
    }
)

_MIN_BITS, _MAX_BITS = 2, 32  # GNA's q32 configs are the widest POT knows; 1 bit has no grid


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class QConfig:
    """One quantization config as the hardware rules (or a user section) state it.

    Attributes:
        bits: bit width.
        mode: ``symmetric`` or ``asymmetric``.
        granularity: ``pertensor`` or ``perchannel``.
        level_low, level_high: explicit integer grid limits, or None where the config leaves
            them to be derived from ``bits`` (§3.4).
    """

    bits: int
    mode: str
    granularity: str
    level_low: int | None = None
    level_high: int | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.bits) or not _MIN_BITS <= self.bits <= _MAX_BITS:
            raise ConfigError(
                f"quantization config 'bits' must be an int in {_MIN_BITS}..{_MAX_BITS}, got {self.bits!r}"
            )
        if self.mode not in MODES:
            raise ConfigError(f"quantization config 'mode' must be one of {list(MODES)}, got {self.mode!r}")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(
                f"quantization config 'granularity' must be one of {list(GRANULARITIES)}, "
                f"got {self.granularity!r}"
            )
        for key in ("level_low", "level_high"):
            value = getattr(self, key)
            if value is not None and not _is_int(value):
                raise ConfigError(f"quantization config '{key}' must be an int or absent, got {value!r}")
        if self.level_low is not None and self.level_high is not None and self.level_low >= self.level_high:
            raise ConfigError(
                f"quantization config needs level_low < level_high, got {self.level_low} >= {self.level_high}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QConfig:
        """Builds a config from a POT-style dict; keys other than the five fields are an error."""
        unknown = sorted(set(data) - {"bits", "mode", "granularity", "level_low", "level_high"})
        if unknown:
            raise ConfigError(
                f"unknown quantization config keys {unknown}; allowed: bits, mode, granularity, "
                "level_low, level_high"
            )
        missing = [key for key in ("bits", "mode", "granularity") if key not in data]
        if missing:
            raise ConfigError(f"quantization config {dict(data)} lacks {missing}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The POT-style dict, without the level keys that are None."""
        out: dict[str, Any] = {"bits": self.bits, "mode": self.mode, "granularity": self.granularity}
        if self.level_low is not None:
            out["level_low"] = self.level_low
        if self.level_high is not None:
            out["level_high"] = self.level_high
        return out


def _freeze(value: Any) -> Any:
    """Lists become tuples and dicts read-only, so a parsed rule cannot be mutated."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    return value


@dataclass(frozen=True)
class OpRule:
    """The hardware rule of one op type.

    Attributes:
        type: OpenVINO op type (or POT's virtual ``DepthWiseConvolution``).
        activations, weights, outputs: the accepted configs per group, in the file's order.
        unified_scales: ``"all"`` (Concat on CPU/GPU), a tuple of port tuples (LSTM/GRU
            sequences), or None.
        attributes: the rule's ``attributes`` section as read-only data (lists become tuples).
    """

    type: str
    activations: tuple[QConfig, ...] = ()
    weights: tuple[QConfig, ...] = ()
    outputs: tuple[QConfig, ...] = ()
    unified_scales: str | tuple[tuple[int, ...], ...] | None = None
    attributes: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    @property
    def quantizable(self) -> bool:
        """True when the rule lists a config for any group; False for agnostic/listed-only ops."""
        return bool(self.activations or self.weights or self.outputs)

    def configs(self, group: str) -> tuple[QConfig, ...]:
        """The configs of ``group`` (``weights``, ``activations`` or ``outputs``)."""
        if group not in GROUPS:
            raise ConfigError(f"unknown quantization group {group!r}; allowed: {list(GROUPS)}")
        return getattr(self, group)


@dataclass(frozen=True)
class HardwareConfig:
    """The parsed rules of one target device.

    Attributes:
        target_device: the name asked for (``ANY`` stays ``ANY`` although it reads cpu.json).
        primary_bitwidth: bit width preferred when two consumers' configs differ only in bits
            (16 on GNA, 8 elsewhere).
        ops: op type -> :class:`OpRule`, in the file's order.
        input_priority_types: op types whose input FQ wins when FQs merge (GNA3: Convolution).
    """

    target_device: str
    primary_bitwidth: int
    ops: Mapping[str, OpRule] = field(hash=False)
    input_priority_types: tuple[str, ...] = ()

    def configs(self, op_type: str, group: str) -> tuple[QConfig, ...]:
        """The configs ``op_type`` accepts for ``group``; empty when the type is not listed."""
        rule = self.ops.get(op_type)
        return rule.configs(group) if rule is not None else ()


def _expand(entry: Mapping[str, Any]) -> Iterator[QConfig]:
    """POT: ``HardwareConfig.from_json`` expands list-valued fields by a Cartesian product in key order."""
    values = [v if isinstance(v, list) else [v] for v in entry.values()]
    for combo in itertools.product(*values):
        yield QConfig.from_dict(dict(zip(entry.keys(), combo)))


def _op_configs(refs: Any, named: Mapping[str, list[QConfig]], op_type: str) -> tuple[QConfig, ...]:
    out: list[QConfig] = []
    for ref in refs if isinstance(refs, list) else [refs]:
        if isinstance(ref, str):
            if ref not in named:
                raise ConfigError(f"hardware rule of {op_type!r} names unknown config {ref!r}")
            out.extend(named[ref])
        else:
            out.extend(_expand(ref))
    return tuple(out)


def _parse_op(op: Mapping[str, Any], named: Mapping[str, list[QConfig]]) -> OpRule:
    op_type = op["type"]
    quant = op.get("quantization", {})
    groups = {g: _op_configs(quant[g], named, op_type) for g in GROUPS if g in quant}
    attributes = _freeze(op.get("attributes", {}))
    return OpRule(
        type=op_type, unified_scales=attributes.get("unified_scales"), attributes=attributes, **groups
    )


def parse_hardware_config(data: Mapping[str, Any], target_device: str) -> HardwareConfig:
    """Builds a :class:`HardwareConfig` from the JSON structure of a POT rule file."""
    named = {
        name: list(_expand(entry)) for name, entry in data.get("config", {}).get("quantization", {}).items()
    }
    ops: dict[str, OpRule] = {}
    for op in data.get("operations", []):
        rule = _parse_op(op, named)
        if rule.type in ops:
            # POT: HardwareConfig.get would raise on such a file later; say so at load time instead.
            raise ConfigError(f"hardware rules for {target_device!r} list op type {rule.type!r} twice")
        ops[rule.type] = rule
    return HardwareConfig(
        target_device=target_device,
        primary_bitwidth=data.get("primary_bitwidth", 8),
        ops=MappingProxyType(ops),
        input_priority_types=tuple(data.get("input_priority_types", ())),
    )


def load_hardware_config(target_device: str) -> HardwareConfig:
    """Loads the hardware rules of a target device (parsed once, then cached).

    Args:
        target_device: ``ANY``, ``CPU``, ``CPU_SPR`` (cpu.json), ``GPU`` (gpu.json), ``GNA``
            (gna.json), ``GNA3`` or ``GNA3.5`` (gna3.json).

    Returns:
        The parsed, immutable rules.

    Raises:
        ConfigError: ``target_device`` is not one of the values above.
    """
    if not isinstance(target_device, str) or target_device not in TARGET_DEVICES:
        hint = " (POT 2023.3 does not ship npu.json)" if target_device == "NPU" else ""
        raise ConfigError(
            f"target_device={target_device!r} is not supported{hint}; use one of {list(TARGET_DEVICES)}"
        )
    return _load(target_device)


@functools.cache
def _load(target_device: str) -> HardwareConfig:
    text = resources.files(__package__).joinpath(TARGET_DEVICES[target_device]).read_text(encoding="utf-8")
    return parse_hardware_config(json.loads(text), target_device)
