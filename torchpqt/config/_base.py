"""Validation at construction and JSON in/out, shared by every config dataclass."""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from torchpqt.config._checks import Check, _fail, _unknown_key
from torchpqt.errors import ConfigError

# The key path of the object being parsed, so that __post_init__ can name `params.weights.bits`
# rather than `QuantizerConfig.bits` when the object comes from JSON.
_PATH: contextvars.ContextVar[str | None] = contextvars.ContextVar("torchpqt_config_path", default=None)


def _meta(check: Check, *, json: str | None = None, flat: bool = False) -> dict[str, Any]:
    """Field metadata: the value check, the JSON key when it is not the field name (POT's dotted
    lr names), and ``flat`` for a sub-config whose keys sit directly in the parent's JSON."""
    return {"check": check, "json": json, "flat": flat}


def _json_name(f: dataclasses.Field) -> str:
    return f.metadata.get("json") or f.name


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _to_json(value: Any) -> Any:
    if isinstance(value, _Config):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    return value


class _Config:
    """Validation at construction and JSON in/out, shared by every config dataclass."""

    def __post_init__(self) -> None:
        path = _PATH.get() or type(self).__name__
        for f in fields(self):  # type: ignore[arg-type]
            value = f.metadata["check"](f"{path}.{_json_name(f)}", getattr(self, f.name))
            object.__setattr__(self, f.name, value)
        self._check(path)

    def _check(self, path: str) -> None:
        """Rules across fields; each field on its own is already valid here."""

    @classmethod
    def _json_keys(cls) -> dict[str, str]:
        """JSON key -> field name, leaving out fields whose keys sit flat in this object."""
        return {_json_name(f): f.name for f in fields(cls) if not f.metadata.get("flat")}  # type: ignore[arg-type]

    @classmethod
    def _parse(cls, raw: Any, path: str) -> Any:
        if not isinstance(raw, Mapping):
            raise _fail(path, raw, "a JSON object (dict)")
        kwargs = cls._kwargs(raw, path)
        token = _PATH.set(path)
        try:
            return cls(**kwargs)
        finally:
            _PATH.reset(token)

    @classmethod
    def _kwargs(cls, raw: Mapping[str, Any], path: str, extra_keys: tuple[str, ...] = ()) -> dict[str, Any]:
        """Maps JSON keys to constructor arguments; unknown or missing keys are errors."""
        names = cls._json_keys()
        for key in raw:
            if key not in names:
                raise _unknown_key(path, key, [*names, *extra_keys])
        for f in fields(cls):  # type: ignore[arg-type]
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required and _json_name(f) not in raw:
                raise ConfigError(f"{path}.{_json_name(f)}: required key is missing.")
        return {names[k]: v for k, v in raw.items()}

    def to_dict(self, full: bool = False) -> dict[str, Any]:
        """The POT JSON of this object: the keys that were given (differ from the default), or all."""
        return {
            _json_name(f): _to_json(getattr(self, f.name))
            for f in fields(self)  # type: ignore[arg-type]
            if full or getattr(self, f.name) != _default(f)
        }
