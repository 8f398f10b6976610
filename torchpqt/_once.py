"""Log a message once per public call (``plan``, ``prepare``, ``convert``, ``quantize``), not once per process.

A model with a hundred FakeQuantize logs a repeated warning once, and the next call logs it again, so the
user of a notebook or a test sees it every time it applies.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator

logger = logging.getLogger("torchpqt")

_SCOPE: contextvars.ContextVar[set | None] = contextvars.ContextVar("torchpqt_logged_once", default=None)
# Direct calls of internal helpers outside any public call share this set; tests clear it (tests/conftest.py).
_OUTSIDE: set = set()


@contextlib.contextmanager
def call_scope() -> Iterator[None]:
    """One public call: messages logged once inside it are logged again by the next call. Nested calls
    (``quantize`` calling ``prepare``) share the outer call's scope."""
    if _SCOPE.get() is not None:
        yield
        return
    token = _SCOPE.set(set())
    try:
        yield
    finally:
        _SCOPE.reset(token)


def log_once(key, level: int, message: str, *args) -> None:
    """``logger.log(level, message, *args)`` unless ``key`` was logged already in this call."""
    seen = _SCOPE.get()
    seen = _OUTSIDE if seen is None else seen
    if key in seen:
        return
    seen.add(key)
    logger.log(level, message, *args)


def forget() -> None:
    """Forget what was logged outside a public call (test isolation)."""
    _OUTSIDE.clear()
