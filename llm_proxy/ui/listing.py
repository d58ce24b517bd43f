"""The exchanges list: newest first, keyset pages, filters and full-text search.

Pages are keyset pages (``before=<id>``), never ``OFFSET``: the thousandth
page of a million rows costs what the first does. A search walks the FTS5
index by rowid, newest first, so it too stops after one page of matches.

One request examines at most :data:`SCAN` ids, newest first: a filter that
matches rarely (a key that was used once, an error a month ago) answers with
what it found in that window and ``next`` pointing below it, so no request
reads the whole table; the page asks again for the next window. The filters
are read from the rows in id order (the unary ``+`` keeps SQLite from
sorting an index's matches instead), which is what makes the window a bound.
Every row in the list is a summary: the text columns are cut to
:data:`SNIPPET` characters in SQL, so a page never carries the bodies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..audit.query import Reader
from ..audit.when import parse_when
from . import dialect
from .signin import Refused

SNIPPET = 200  # characters of prompt, answer and error in a list row
SCAN = 50_000  # ids one list request examines at most
# A row's id comes when it is written, its timestamp when its request began: a
# row from `since` on has an id no lower than that of a row started this much earlier.
SLACK = timedelta(days=1)
SUMMARY = (
    "id", "timestamp", "endpoint", "method", "model", "status_code", "latency_ms", "ttft_ms",
    "api", "key_name", "turn_id", "stream", "prompt_tokens", "completion_tokens", "client_addr",
    "backend_name",
)  # fmt: skip
SNIPPETS = ("prompt", "response", "error")
STATUS_CLASSES = {"1xx", "2xx", "3xx", "4xx", "5xx", "error"}


@dataclass
class Query:
    """One list request's filters and page."""

    limit: int
    before: int | None = None
    after: int | None = None
    model: str | None = None
    endpoint: str | None = None
    status: str | None = None
    api: str | None = None
    key: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None
    # Filled in while building the SQL.
    params: list[Any] = field(default_factory=list)


def parse(params: Mapping[str, str], page_size: int) -> Query:
    """A :class:`Query` from the URL's parameters; Refused(400) naming a bad one."""
    query = Query(limit=min(_int(params, "limit", 50), page_size))
    if query.limit < 1:
        raise Refused(400, "'limit' must be at least 1")
    query.before = _int(params, "before", None)
    query.after = _int(params, "after", None)
    for name in ("model", "endpoint", "api", "key"):
        value = params.get(name, "").strip()
        if value:
            setattr(query, name, value)
    status = params.get("status", "").strip().lower()
    if status:
        if status not in STATUS_CLASSES and not (status.isdigit() and 100 <= int(status) <= 599):
            raise Refused(
                400, f"'status' must be a code such as 404, a class such as 5xx, or error; got {status!r}"
            )
        query.status = status
    for name in ("since", "until"):
        value = params.get(name, "").strip()
        if value:
            try:
                setattr(query, name, parse_when(value))
            except ValueError as exc:
                raise Refused(400, f"'{name}': {exc}") from None
    text = params.get("q", "").strip()
    if text:
        query.text = text
    return query


def _int(params: Mapping[str, str], name: str, default: int | None) -> Any:
    value = params.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or len(value) > 18:
        raise Refused(400, f"'{name}' must be a whole number, got {value[:40]!r}")
    return int(value)


def exchanges(reader: Reader, query: Query) -> dict[str, Any]:
    """One page of summaries, newest first, and the ``before`` of the next page (or None)."""
    clauses: list[str] = []
    params: list[Any] = []
    columns, plus, time = reader.columns, dialect.plus(reader), reader.dialect.time
    if query.text:
        source, key, clause, found = dialect.search(reader, query.text)
        clauses.append(clause)
        params += found
    else:
        source, key = "logs", "logs.id"
    if query.model:
        clauses.append(f"({plus}logs.model IN (?, ?) OR logs.backend_model = ?)")
        params += [query.model, f"{query.model}:latest", query.model]
    if query.endpoint:
        clauses.append(f"{plus}logs.endpoint = ?")
        params.append(query.endpoint)
    if query.api:
        clauses.append("logs.api = ?")
        params.append(query.api)
    if query.key:
        clauses.append("logs.key_name = ?" if "key_name" in columns else "1 = 0")
        params += [query.key] if "key_name" in columns else []
    if query.status == "error":
        clauses.append("(logs.error IS NOT NULL OR logs.status_code >= 400)")
    elif query.status:
        low = int(query.status[0]) * 100 if query.status.endswith("xx") else int(query.status)
        high = low + 99 if query.status.endswith("xx") else low
        clauses.append(f"{plus}logs.status_code BETWEEN ? AND ?")
        params += [low, high]
    if query.since:
        clauses.append(f"{plus}logs.timestamp >= ?")
        params.append(time(query.since))
    if query.until:
        clauses.append(f"{plus}logs.timestamp < ?")
        params.append(time(query.until))
    floor = 0
    if query.after is not None:
        clauses.append(f"{key} > ?")
        params.append(query.after)
    else:
        top = query.before if query.before is not None else newest(reader) + 1
        floor = _floor(reader, query.since) if query.since else 0
        low = max(floor, top - SCAN)
        clauses.append(f"{key} < ? AND {key} >= ?")
        params += [top, low]
    shown = [f"logs.{c}" if c in columns else "NULL" for c in SUMMARY]
    shown += [f"substr(logs.{c}, 1, {SNIPPET})" for c in SNIPPETS]
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    # Newer than a known row (the live list catching up): oldest first, so none is skipped.
    order = "ASC" if query.after is not None else "DESC"
    sql = f"SELECT {', '.join(shown)} FROM {source} {where} ORDER BY {key} {order} LIMIT ?"
    rows = list(dialect.rows(reader, sql, [*params, query.limit + 1]))
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    names = (*SUMMARY, *SNIPPETS)
    found = [dict(zip(names, r, strict=True)) for r in rows]
    if query.after is not None:
        found.reverse()
    for row in found:
        row["stream"] = None if row["stream"] is None else bool(row["stream"])
    following = None
    if query.after is None:
        if more:
            following = found[-1]["id"]
        elif low > floor:  # this window is done; older ids are left to look at
            following, more = low, True
    return {"exchanges": found, "next": following, "more": more}


def newest(reader: Reader) -> int:
    """The newest id (0: none yet)."""
    return int(dialect.value(reader, "SELECT coalesce(max(id), 0) FROM logs"))


def _floor(reader: Reader, since: datetime) -> int:
    """An id below every row whose request began at ``since`` or later."""
    found = dialect.value(
        reader,
        "SELECT id FROM logs WHERE timestamp >= ? ORDER BY timestamp LIMIT 1",
        (reader.dialect.time(since - SLACK),),
    )
    return int(found) if found is not None else newest(reader) + 1
