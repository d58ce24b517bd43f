"""Values on their way into PostgreSQL: checked against each column's type, in one array per column.

Both the writer (:mod:`.pg_store`) and the copy (:mod:`.pg_import`) insert a
batch as one ``INSERT … SELECT * FROM unnest($1::bigint[], $2::text[], …)``:
one parameter per column, whatever the number of rows. The types are read
from the table when a connection opens (:data:`COLUMN_TYPES`), so a column a
migration adds needs no code here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..errors import AuditError

COLUMN_TYPES = """
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
WHERE attrelid = 'logs'::regclass AND attnum > 0 AND NOT attisdropped
"""
# Sorted: two writers taking the same blobs take them in the same order, never in a circle.
INSERT_BLOBS = (
    "INSERT INTO blobs (hash, data) SELECT * FROM unnest($1::text[], $2::text[]) AS b (hash, data) "
    "ORDER BY hash ON CONFLICT DO NOTHING"
)


def placeholders(sql: str) -> str:
    """SQLite's ``?`` placeholders as PostgreSQL's ``$1``, ``$2``… (for SQL holding no other ``?``)."""
    count = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _: f"${next(count)}", sql)


def text(value: Any) -> Any:
    """Text as PostgreSQL takes it: NUL, which its text cannot hold, as U+FFFD."""
    if type(value) is str:
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if value is None:
        return None
    raise TypeError(f"{type(value).__name__} where text belongs")


class Insert:
    """The INSERT for a batch: one array parameter per column, unnest()ed into rows, types from the table."""

    def __init__(self, types: dict[str, str], columns: Sequence[str]) -> None:
        missing = [c for c in columns if c not in types]
        if missing:
            raise AuditError(f"the PostgreSQL logs table lacks columns {', '.join(missing)}")
        arrays = ", ".join(f"${i}::{types[c]}[]" for i, c in enumerate(columns, 1))
        names = ", ".join(f'"{c}"' for c in columns)
        self.sql = f"INSERT INTO logs ({names}) SELECT * FROM unnest({arrays})"
        self.convert = [_converter(types[c]) for c in columns]

    def arrays(self, rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
        columns = zip(*rows, strict=True)
        return [[convert(v) for v in column] for convert, column in zip(self.convert, columns, strict=True)]


def _converter(sql_type: str) -> Any:
    """A function that checks one value for a column of ``sql_type`` and makes it what asyncpg sends.

    Strict: a list where a scalar belongs would make the column's array
    parameter two-dimensional, and unnest() would then flatten it into the
    wrong rows. TypeError is the row's trouble: the writer splits the batch.
    """
    if sql_type.startswith("timestamp"):
        return _when
    if sql_type in ("text", "character varying"):
        return text
    if sql_type == "boolean":
        return _scalar(bool)
    if sql_type in ("bigint", "integer", "smallint"):
        return _scalar(int)
    if sql_type in ("double precision", "real"):
        return _scalar(float, int)
    return _scalar(str, int, float, bool)


def _scalar(*kinds: type) -> Any:
    def check(value: Any) -> Any:
        if value is None or isinstance(value, kinds):
            return value
        raise TypeError(f"{type(value).__name__} where {kinds[0].__name__} belongs")

    return check


def _when(value: Any) -> Any:
    if type(value) is not str:
        raise TypeError(f"{type(value).__name__} where a timestamp belongs")
    return datetime.fromisoformat(value)
