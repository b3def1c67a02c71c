"""JSON syntax errors with a line and column, for people who edit JSON files by hand.

msgspec reports where a document is malformed as a byte offset (``JSON is malformed: trailing
comma in object (byte 372)``) and a truncated document without one (``Input data was
truncated``); :func:`describe` turns either into ``invalid JSON at line 14, column 5: ...``.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

_MALFORMED: Final = re.compile(r"^JSON is malformed: (?P<what>.*) \(byte (?P<pos>\d+)\)$")
_TRUNCATED: Final = "Input data was truncated"


def line_column(data: bytes, pos: int) -> tuple[int, int]:
    """The 1-based line and column (in characters) of byte offset ``pos`` in ``data``."""
    pos = max(0, min(pos, len(data)))
    start = data.rfind(b"\n", 0, pos) + 1
    line = data.count(b"\n", 0, pos) + 1
    return line, len(data[start:pos].decode("utf-8", errors="replace")) + 1


def describe(data: bytes | str, exc: msgspec.DecodeError) -> str:
    """What is wrong with the JSON document ``data``, and where, for a syntax error ``exc`` that
    msgspec raised decoding it (a :class:`msgspec.ValidationError`, a document of the wrong
    shape, is returned as it is: its message names the field path)."""
    if isinstance(exc, msgspec.ValidationError):
        return str(exc)
    raw = data.encode() if isinstance(data, str) else bytes(data)
    text = str(exc)
    if text == _TRUNCATED:
        if not raw.strip():
            return "invalid JSON: the file is empty"
        end = len(raw.rstrip())
        line, col = line_column(raw, end)
        return (
            f"invalid JSON at line {line}, column {col}: the document ends before it is complete "
            "(truncated? a missing closing bracket or quote?)"
        )
    m = _MALFORMED.match(text)
    if m is None:
        return f"invalid JSON: {text}"
    pos = int(m["pos"])
    if m["what"].startswith("trailing comma"):
        # msgspec points at the bracket after the comma: point at the comma itself
        comma = raw.rfind(b",", 0, pos)
        if comma >= 0 and not raw[comma + 1 : pos].strip():
            pos = comma
    line, col = line_column(raw, pos)
    return f"invalid JSON at line {line}, column {col}: {m['what']}"
