"""JSON with comments, as POT's CLI reads it (jstyleson): ``//`` and ``/* */`` comments, trailing commas.

A tiny scanner instead of a dependency. Comments become spaces and keep their newlines, so the
line/column of a JSON syntax error still points at the right place in the user's file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torchpqt.errors import CliError

__all__ = ["loads_jsonc", "read_jsonc", "strip_comments"]


def _blank(text: str) -> str:
    # Keep newlines so that error line numbers do not move.
    return "".join(ch if ch == "\n" else " " for ch in text)


def _position(text: str, index: int) -> str:
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return f"line {line} column {column}"


def _string_end(text: str, start: int) -> int:
    """Index just past the JSON string opening at ``start`` (or len(text) if unterminated)."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i + 1
        i += 1
    return len(text)


def strip_comments(text: str) -> str:
    """Replace ``//`` and ``/* */`` comments outside strings by spaces.

    Raises:
        CliError: a ``/*`` comment is never closed.
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            end = _string_end(text, i)
            out.append(text[i:end])
            i = end
        elif text.startswith("//", i):
            end = text.find("\n", i)
            end = len(text) if end < 0 else end
            out.append(_blank(text[i:end]))
            i = end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise CliError(f"unterminated /* comment at {_position(text, i)}; close it with */")
            out.append(_blank(text[i : end + 2]))
            i = end + 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _strip_trailing_commas(text: str) -> str:
    # Runs after strip_comments, so only whitespace can sit between a comma and the bracket.
    out = list(text)
    i = 0
    while i < len(text):
        if text[i] == '"':
            i = _string_end(text, i)
            continue
        if text[i] == ",":
            j = i + 1
            while j < len(text) and text[j] in " \t\r\n":
                j += 1
            if j < len(text) and text[j] in "}]":
                out[i] = " "
        i += 1
    return "".join(out)


def loads_jsonc(text: str, source: str = "<config>") -> Any:
    """Parse JSON that may contain comments and trailing commas.

    Raises:
        CliError: the text is not valid JSON; the message gives ``source:line:column``.
    """
    clean = _strip_trailing_commas(strip_comments(text))
    try:
        return json.loads(clean)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{source}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg}); fix the syntax at that position"
        ) from exc


def read_jsonc(path: Path) -> Any:
    """Read a JSON-with-comments file.

    Raises:
        CliError: the file is missing, unreadable or not valid JSON.
    """
    if not path.is_file():
        raise CliError(f"config file '{path}' does not exist; pass an existing JSON file to -c/--config")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read config file '{path}': {exc}; pass a readable UTF-8 JSON file") from exc
    try:
        return loads_jsonc(text, str(path))
    except CliError as exc:
        if "unterminated" in str(exc):
            raise CliError(f"{path}: {exc}") from exc
        raise
