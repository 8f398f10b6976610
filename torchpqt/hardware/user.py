"""How the user's ``weights`` / ``activations`` sections narrow the hardware candidates (spec §1.3).

POT (``fake_quantize_configuration.py::read_all_fake_quantize_configurations``) keeps the
hardware configs that contain the user's dict as a subset. When none does, POT uses the user's
partial dict as the only config and crashes with ``KeyError`` if ``mode`` or ``granularity`` is
missing. torchpqt completes such a dict from the first hardware candidate instead.

The library passes the section as the :class:`~torchpqt.config.QuantizerConfig` it is (validated when
the config was built); a POT-JSON dict is accepted too, and checked here, for direct callers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from torchpqt._once import log_once
from torchpqt.config import QuantizerConfig
from torchpqt.constants import GRANULARITIES, GROUPS, MODES, QUANTIZER_KEYS
from torchpqt.errors import ConfigError
from torchpqt.hardware.config import QConfig, _is_int

__all__ = ["USER_KEYS", "apply_user_section"]

#: The only keys of a user section that take part in the matching.
USER_KEYS: tuple[str, ...] = QUANTIZER_KEYS

_ALLOWED = {"mode": MODES, "granularity": GRANULARITIES}


def _check_value(group: str, key: str, value: Any) -> None:
    if key in _ALLOWED:
        if value not in _ALLOWED[key]:
            raise ConfigError(f"{group}.{key}={value!r} is not allowed; use one of {list(_ALLOWED[key])}")
    elif key == "bits":
        if not _is_int(value) or not 2 <= value <= 32:
            raise ConfigError(f"{group}.bits={value!r} is not allowed; use an int in 2..32")
    elif not _is_int(value):
        raise ConfigError(f"{group}.{key}={value!r} is not allowed; use an int")


def _user_keys(user: QuantizerConfig | Mapping[str, Any], group: str) -> dict[str, Any]:
    """The matching keys of a user section, validated; other keys (range_estimator, ...) are ignored."""
    if isinstance(user, QuantizerConfig):  # validated when the config was built
        return {key: getattr(user, key) for key in USER_KEYS if getattr(user, key) is not None}
    if not isinstance(user, Mapping):
        raise ConfigError(f"{group} section must be a dict, got {type(user).__name__}")
    wanted = {key: user[key] for key in USER_KEYS if key in user and user[key] is not None}
    for key, value in wanted.items():
        _check_value(group, key, value)
    low, high = wanted.get("level_low"), wanted.get("level_high")
    if low is not None and high is not None and low >= high:
        raise ConfigError(f"{group}.level_low={low} must be below {group}.level_high={high}")
    return wanted


def _matches(config: QConfig, wanted: Mapping[str, Any]) -> bool:
    # POT: _is_subset; a key the config does not carry (level_low of q8_a) is a mismatch.
    return all(getattr(config, key) == value for key, value in wanted.items())


def _complete(wanted: Mapping[str, Any], base: QConfig) -> QConfig:
    """Fills the keys the user left out from ``base``.

    The grid limits of ``base`` are kept only while bits and mode stay those of ``base``:
    an 8-bit ``-127..127`` must not survive a switch to 4 bits, where §3.4 derives them.
    """
    merged: dict[str, Any] = {"bits": base.bits, "mode": base.mode, "granularity": base.granularity}
    if wanted.get("bits", base.bits) == base.bits and wanted.get("mode", base.mode) == base.mode:
        merged.update(level_low=base.level_low, level_high=base.level_high)
    merged.update(wanted)
    return QConfig(**merged)


def _fallback(wanted: Mapping[str, Any], candidates: Sequence[QConfig], group: str) -> QConfig:
    if all(key in wanted for key in ("bits", "mode", "granularity")):
        # POT: a complete user dict that matches nothing is used as is.
        return QConfig(**wanted)
    if not candidates:
        raise ConfigError(
            f"{group} section {dict(wanted)} lacks bits/mode/granularity and there is no hardware config "
            f"to complete it from; give all three"
        )
    return _complete(wanted, candidates[0])


def apply_user_section(
    candidates: Sequence[QConfig], user: QuantizerConfig | Mapping[str, Any] | None, group: str
) -> list[QConfig]:
    """Narrows one consumer's hardware candidates by the user's section (§1.3).

    Args:
        candidates: the hardware configs of one consumer op for ``group``, in file order.
        user: the user's ``weights``/``activations`` section (a QuantizerConfig or a POT-JSON dict), or
            None. Only ``bits``, ``mode``, ``granularity``, ``level_low`` and ``level_high`` count; other
            keys are ignored.
        group: ``weights``, ``activations`` or ``outputs`` (names the section in errors).

    Returns:
        The candidates that agree with every given key, in order. When none does, a single
        config: the user's dict used as is when it names bits, mode and granularity (as POT
        does), otherwise completed from ``candidates[0]`` (POT crashes there with KeyError).

    Raises:
        ConfigError: a user value is invalid, or a partial dict has nothing to complete from.
    """
    if group not in GROUPS:
        raise ConfigError(f"unknown quantization group {group!r}; allowed: {list(GROUPS)}")
    if user is None:
        return list(candidates)
    wanted = _user_keys(user, group)
    kept = [config for config in candidates if _matches(config, wanted)]
    if kept:
        return kept
    chosen = _fallback(wanted, candidates, group)
    # once per (group, user keys) and call: a model with 100 FQs logs it once
    log_once(
        ("hardware.user", group, tuple(sorted(wanted.items()))),
        logging.WARNING,
        "%s config %s is not listed by the hardware rules (candidates %s); using %s",
        group,
        dict(wanted),
        [c.to_dict() for c in candidates],
        chosen.to_dict(),
    )
    return [chosen]
