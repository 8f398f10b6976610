"""Hardware rules (POT's ``configs/hardware/*.json``, shipped unchanged) and config selection.

``load_hardware_config(target_device)`` gives the typed rules; ``consumer_candidates``,
``select_by_preset`` / ``select_unified`` and ``resolve_spec`` turn them into one
:class:`~torchpqt.quant.spec.QuantSpec` per FakeQuantize (spec §1.3, §3, §7.3, §8).
"""

from torchpqt.hardware.config import (
    GROUPS,
    TARGET_DEVICES,
    HardwareConfig,
    OpRule,
    QConfig,
    load_hardware_config,
    parse_hardware_config,
)
from torchpqt.hardware.select import (
    PRESETS,
    consumer_candidates,
    intersect_configs,
    resolve_spec,
    select_by_preset,
    select_unified,
    transformer_matmul_qconfig,
)
from torchpqt.hardware.user import USER_KEYS, apply_user_section

__all__ = [
    "GROUPS",
    "PRESETS",
    "TARGET_DEVICES",
    "USER_KEYS",
    "HardwareConfig",
    "OpRule",
    "QConfig",
    "apply_user_section",
    "consumer_candidates",
    "intersect_configs",
    "load_hardware_config",
    "parse_hardware_config",
    "resolve_spec",
    "select_by_preset",
    "select_unified",
    "transformer_matmul_qconfig",
]
