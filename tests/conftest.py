"""Every test starts with nothing logged-once: a message a test expects is never swallowed by an earlier
test's run (public calls log once per call anyway; this covers direct calls of internal helpers)."""

import pytest

from torchpqt import _once


@pytest.fixture(autouse=True)
def _forget_logged_once():
    _once.forget()
    yield
