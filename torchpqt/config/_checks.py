"""Value checks for the config dataclasses: each takes (key path, value), returns the value normalized
or raises :class:`~torchpqt.errors.ConfigError` naming the key path, what was given and what is allowed."""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

from torchpqt.errors import ConfigError

# Keys written one level too high are a common slip; say where they belong.
_SECTION_KEYS = {
    "a 'weights' or 'activations' section": ("bits", "mode", "granularity", "level_low", "level_high"),
    "a range_estimator's 'min' or 'max'": ("type", "outlier_prob", "aggregator", "clipping_value"),
    "the 'ignored' section": ("skip_model", "scope", "operations"),
}
_MISPLACED = {key: f"; it belongs inside {where}." for where, keys in _SECTION_KEYS.items() for key in keys}

Check = Callable[[str, Any], Any]  # (key path, value) -> normalized value, or raises ConfigError


def _closest(word: Any, options: Any) -> str:
    options = [str(o) for o in options]
    same_case = [o for o in options if o.lower() == str(word).lower()]
    match = same_case or difflib.get_close_matches(str(word), options, n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _fail(path: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{path}: expected {expected}, got {value!r}")


def _unknown_key(path: str, key: Any, known: Any) -> ConfigError:
    where = f"{path}.{key}" if path else str(key)
    hint = _closest(key, known) or _MISPLACED.get(str(key), "")
    listing = (
        f" Valid keys there: {', '.join(sorted(known))}."
        if len(known) <= 12
        else " The README's Configuration reference lists every key."
    )
    return ConfigError(f"Unknown key {where}{hint or '.'}{listing}")


def _integer(low: int | None = None, high: int | None = None) -> Check:
    span = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"

    def check(path: str, value: Any) -> int:
        # Booleans are ints in Python; `bits: true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise _fail(path, value, span)
        if (low is not None and value < low) or (high is not None and value > high):
            raise _fail(path, value, span)
        return int(value)

    return check


def _real(low: float | None = None, high: float | None = None, *, strict: bool = False) -> Check:
    """A finite number in [low, high], or in (low, high) when strict."""
    op = ("<", ">") if strict else ("<=", ">=")
    bounds = [f"{op[1]} {low}" if low is not None else "", f"{op[0]} {high}" if high is not None else ""]
    span = "a finite number " + " and ".join(b for b in bounds if b)

    def check(path: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise _fail(path, value, span.strip())
        below = low is not None and (value <= low if strict else value < low)
        above = high is not None and (value >= high if strict else value > high)
        if below or above:
            raise _fail(path, value, span)
        return float(value)

    return check


def _boolean(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, value, "true or false")
    return value


def _choice(*allowed: str) -> Check:
    def check(path: str, value: Any) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise ConfigError(
                f"{path}: got {value!r}{_closest(value, allowed)} Allowed: {', '.join(allowed)}."
            )
        return value

    return check


def _optional(check: Check) -> Check:
    return lambda path, value: None if value is None else check(path, value)


def _section(cls: type) -> Check:
    def check(path: str, value: Any) -> Any:
        return value if isinstance(value, cls) else cls._parse(value, path)

    return check


def _sequence(item: Check, what: str) -> Check:
    def check(path: str, value: Any) -> tuple:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
            raise _fail(path, value, f"a list of {what} (write [{value!r}] for a single entry)")
        return tuple(item(f"{path}[{i}]", v) for i, v in enumerate(value))

    return check
