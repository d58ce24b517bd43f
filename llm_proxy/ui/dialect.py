"""The UI's SQL where SQLite and PostgreSQL differ, one helper per difference.

SQLite's path stays what it was, query for query (its cursor is iterated
directly, its FTS5 index walked by rowid, its unary ``+`` kept); PostgreSQL's
goes through :meth:`~..audit.pg_query.PgReader.execute`, which takes the same
``?`` placeholders and gives values as SQLite shows them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..audit.pg_query import SEARCH, words
from ..audit.query import Reader, fts_query
from ..errors import AuditError
from .signin import Refused


def sqlite(reader: Reader) -> bool:
    """Whether ``reader`` reads a SQLite file."""
    return reader.dialect.name == "sqlite"


def rows(reader: Reader, sql: str, params: Sequence[Any] = ()) -> Iterable[tuple[Any, ...]]:
    """The rows of a query with ``?`` placeholders (SQLite: its cursor, as before)."""
    if sqlite(reader):
        return reader.conn.execute(sql, params)
    return reader.execute(sql, params)


def value(reader: Reader, sql: str, params: Sequence[Any] = ()) -> Any:
    """The first column of the first row (None when there is none)."""
    found = next(iter(rows(reader, sql, params)), None)
    return None if found is None else found[0]


def plus(reader: Reader) -> str:
    """SQLite's unary ``+`` that keeps it reading rows in id order, not an index's (PostgreSQL: none)."""
    return "+" if sqlite(reader) else ""


def search(reader: Reader, text: str) -> tuple[str, str, str, list[Any]]:
    """Full-text search: the FROM, the id column to page by, the condition and its parameters."""
    try:
        if sqlite(reader):
            if "logs_fts" not in reader.tables:
                raise Refused(400, "this database has no search index yet: run 'llm-proxy migrate'")
            source = "logs_fts JOIN logs ON logs.id = logs_fts.rowid"
            return source, "logs_fts.rowid", "logs_fts MATCH ?", [fts_query(text)]
        if "logs_search" not in reader.tables:
            raise Refused(400, "this database has no search index yet: run 'llm-proxy migrate --db'")
        found = words(text)
        if not found:  # only punctuation: FTS5 finds nothing for it either
            return "logs", "logs.id", "1 = 0", []
        return "logs", "logs.id", f"{SEARCH} @@ plainto_tsquery('simple', ?)", [found]
    except AuditError as exc:
        raise Refused(400, str(exc)) from None


def bucket(reader: Reader, since: Any, width: int) -> tuple[str, list[Any]]:
    """A row's bucket: ``width``-second steps from ``since``; the SQL and its parameters.

    SQLite: half a millisecond more, so a row stamped on a boundary falls in the bucket it starts
    (julianday's float arithmetic may land just below it).
    """
    if sqlite(reader):
        return "CAST(((julianday(timestamp) - julianday(?)) * 86400.0 + 0.0005) / ? AS INTEGER)", [
            since,
            width,
        ]
    # PostgreSQL's interval arithmetic is exact (numeric microseconds): no half millisecond needed.
    return f"CAST(floor(extract(epoch FROM timestamp - ?::timestamptz) / {int(width)}) AS BIGINT)", [since]
