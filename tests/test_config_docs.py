"""docs/configuration.md documents every configuration field with its real default.

The fields are found by walking the msgspec Structs from ``DaemonConfig`` down. Each field has a
dotted path (``nats.tls.ca_file``, ``algorithms.limits.max_drawdown``); it is documented in the
section of the longest table that is a prefix of that path (headings `` ## `[nats]` ``,
`` ## `[[algorithms]]` ``, ``## Top level``), in a row ``| `tls.ca_file` | type | default |
meaning |``. Defaults are written as ``render()`` writes them: `required`, `absent` (None), or a
TOML-like literal in backticks, durations as ISO-8601 (`` `PT0.1S` ``, `` `P7D` ``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest

from rampart.config import DaemonConfig

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
TOP_LEVEL = ""


def table_of(t: mi.Type) -> mi.StructType | None:
    """The Struct a field holds (alone, optional, or a list of them), if any."""
    if isinstance(t, mi.UnionType):
        return next((s for s in t.types if isinstance(s, mi.StructType)), None)
    if isinstance(t, mi.ListType):
        t = t.item_type
    return t if isinstance(t, mi.StructType) else None


def walk(struct: mi.StructType, prefix: str = "") -> Iterator[tuple[str, mi.Field, bool]]:
    """(dotted path, field, holds a table) of every field, nested tables' fields included."""
    for field in struct.fields:
        path = prefix + field.encode_name
        nested = table_of(field.type)
        yield path, field, nested is not None
        if nested is not None:
            yield from walk(nested, path + ".")


def iso_duration(d: timedelta) -> str:
    hours, rest = divmod(d - timedelta(days=d.days), timedelta(hours=1))
    minutes, rest = divmod(rest, timedelta(minutes=1))
    parts = ((hours, "H"), (minutes, "M"), (rest.total_seconds(), "S"))
    time = "".join(f"{n:g}{unit}" for n, unit in parts if n)
    days = f"{d.days}D" if d.days else ""
    return f"P{days}T{time}" if time else f"P{days}" if days else "PT0S"


def render(field: mi.Field) -> str:
    """A field's default as the doc writes it."""
    if field.required:
        return "required"
    value: Any = field.default
    if value is msgspec.NODEFAULT:
        value = field.default_factory()
    if value is None:
        return "absent"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, timedelta):
        text = iso_duration(value)
    elif isinstance(value, datetime):
        assert value.utcoffset() == timedelta(0), "render UTC datetimes only"
        text = value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    elif isinstance(value, float):
        mantissa, _, exponent = f"{value:g}".partition("e")
        text = f"{mantissa}e{int(exponent)}" if exponent else mantissa
    else:  # str, int, list, dict
        text = json.dumps(value)
    return f"`{text}`"


def doc_tables() -> dict[str, dict[str, str]]:
    """Table path ("" for the top level) -> field -> documented default."""
    tables: dict[str, dict[str, str]] = {}
    rows: dict[str, str] | None = None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            names = re.findall(r"`\[\[?([\w.]+)\]\]?`", line)
            assert len(names) <= 1, f"one table per heading: {line!r}"
            name = names[0] if names else TOP_LEVEL if line == "## Top level" else None
            rows = None if name is None else tables.setdefault(name, {})
        elif rows is not None and (row := re.match(r"\| `([\w.]+)` \|", line)):
            cells = [c.strip() for c in line.split("|")[1:-1]]
            assert row[1] not in rows, f"documented twice: {line!r}"
            rows[row[1]] = cells[2]
    return tables


TABLES = doc_tables()
ROOT = mi.type_info(DaemonConfig)
assert isinstance(ROOT, mi.StructType)
FIELDS = list(walk(ROOT))


def where(path: str) -> tuple[str, str]:
    """(table, row name) of a field: the longest documented table that contains it."""
    for table in sorted(TABLES, key=len, reverse=True):
        if table == TOP_LEVEL or path.startswith(table + "."):
            return table, path.removeprefix(table + ".") if table else path
    raise AssertionError("docs/configuration.md has no `## Top level` section")


@pytest.mark.parametrize(
    ("path", "default"),
    [(path, render(field)) for path, field, is_table in FIELDS if not is_table],
)
def test_every_field_is_documented_with_its_default(path: str, default: str) -> None:
    table, row = where(path)
    heading = f"[{table}]" if table else "Top level"
    documented = TABLES[table]
    assert row in documented, f"docs/configuration.md, {heading}: no row for `{row}`"
    assert documented[row] == default, f"docs/configuration.md, {heading}, `{row}`"


def test_every_documented_field_exists() -> None:
    paths = {path for path, _, _ in FIELDS}
    for table, rows in TABLES.items():
        for row in rows:
            assert (f"{table}.{row}" if table else row) in paths, f"[{table}] `{row}`"


def test_defaults_render_as_documented() -> None:
    assert [
        iso_duration(timedelta(**kw))
        for kw in ({"seconds": 3}, {"milliseconds": 100}, {"days": 7}, {"minutes": 15}, {})
    ] == ["PT3S", "PT0.1S", "P7D", "PT15M", "PT0S"]
    assert iso_duration(timedelta(days=1, hours=2, seconds=1.5)) == "P1DT2H1.5S"
