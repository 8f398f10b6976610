"""What a run printed on stderr that is not torchpqt's: the check that a user sees torchpqt's own log lines only.

Used by tests/export/test_clean_output.py (the quickstart, the ONNX export) and tests/examples/ (every example
script), which run the code in a fresh interpreter with Python's default warning filters.
"""

from __future__ import annotations

import re

__all__ = ["foreign_lines"]

RECORD = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+): ")


def foreign_lines(stderr: str) -> list[str]:
    """stderr lines that are not part of a torchpqt log record (``LEVEL name: message`` and its indented
    continuation lines, the format the example scripts configure)."""
    out, ours = [], False
    for line in stderr.splitlines():
        m = RECORD.match(line)
        if m:
            ours = m.group(2) == "torchpqt" or m.group(2).startswith("torchpqt.")
        elif not line.startswith(" "):
            ours = False
        if not ours:
            out.append(line)
    return out
