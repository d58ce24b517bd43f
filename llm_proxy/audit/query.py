"""The read side of the audit trail: filters, full-text search, one exchange, stats, export.

Everything here opens the database read-only (``mode=ro``), so reading never
creates, migrates or locks it, and works while the proxy writes. A database
from an older schema is read as far as it goes (no ``-q`` before migration
0002, no turns before 0003).

The SQL is written once, with ``?`` placeholders; :class:`Dialect` holds what
differs between SQLite and PostgreSQL (full-text search, how a time is
compared), and :mod:`.pg_query` runs it on PostgreSQL (``--db postgresql://…``).
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from ..errors import AuditError
from .compact import join
from .when import stamp

# Columns that exist only to store a body compactly; readers see the body itself.
PART_COLUMNS = {"request_body": "request_parts", "backend_request": "backend_request_parts"}
BLOB_CACHE = 256  # blobs kept while exporting: a turn's system prompt and tools are reused


def connect(path: str) -> Reader:
    """Open the SQLite file at ``path`` read-only; AuditError with one clear line if it is not there.

    (:func:`.reading.connect` takes a ``postgresql://`` URL too.)
    """
    if not os.path.exists(path):
        raise AuditError(f"no database at {path} (the proxy creates it on start; use --db PATH or --config)")
    uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        conn.execute("PRAGMA busy_timeout=5000")
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as exc:
        raise AuditError(f"cannot read {path}: {exc}") from None
    if "logs" not in names:
        conn.close()
        raise AuditError(f"{path} has no logs table: is it an llm-proxy database?")
    return Reader(conn, names)


@dataclass
class Filters:
    """What ``logs``, ``logs export`` and ``stats`` select."""

    model: str | None = None
    endpoint: str | None = None
    status: str | None = None  # "404", or a class such as "5xx"
    errors: bool = False
    since: datetime | None = None
    until: datetime | None = None
    query: str | None = None  # full-text search
    turn: int | None = None
    backend: str | None = None  # the named backend that answered
    key: str | None = None  # the name of the API key the requests came with
    ids: tuple[int, ...] = ()  # only these exchanges
    succeeded: bool = False  # only exchanges without an error, status below 400 (no 499s)
    originals: bool = False  # no replays (rows with replay_of set)


@dataclass
class _Where:
    clauses: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)

    def add(self, clause: str, *params: Any) -> None:
        self.clauses.append(clause)
        self.params.extend(params)

    def sql(self) -> str:
        return f"WHERE {' AND '.join(self.clauses)}" if self.clauses else ""


class Dialect:
    """SQLite's SQL where the dialects differ (:class:`~.pg_query.PgDialect` is PostgreSQL's)."""

    name = "sqlite"
    search_table = "logs_fts"  # what must exist for -q

    def time(self, when: datetime) -> Any:
        """A point in time as ``logs.timestamp`` compares with it (SQLite: its text)."""
        return stamp(when)

    def search(self, w: _Where, text: str) -> None:
        """Add the full-text condition: every word of ``text``, taken literally."""
        w.add("logs_fts MATCH ?", fts_query(text))

    def search_source(self) -> str:
        return "logs JOIN logs_fts ON logs_fts.rowid = logs.id"

    def rank(self, text: str) -> tuple[str, list[Any]]:
        """ORDER BY for best match first, and its parameters."""
        return "logs_fts.rank, logs.id DESC", []


class Reader:
    """A read-only connection to an audit database."""

    dialect: Dialect = Dialect()

    def __init__(self, conn: Any, tables: set[str], columns: list[str] | None = None) -> None:
        self.conn = conn
        self.tables = tables
        self.columns = (
            columns if columns is not None else [r[1] for r in conn.execute("PRAGMA table_info(logs)")]
        )
        # What a reader sees: the stored columns minus the compaction recipes.
        self.shown = [c for c in self.columns if c not in PART_COLUMNS.values()]
        self._blobs: OrderedDict[str, str] = OrderedDict()

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        """Rows of a query with ``?`` placeholders, one at a time."""
        try:
            yield from self.conn.execute(sql, params)
        except sqlite3.OperationalError as exc:
            raise AuditError(f"cannot read: {exc}") from None

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """The first row of a query, or None."""
        return next(iter(self.execute(sql, params)), None)

    # -- selecting -------------------------------------------------------------

    def _where(self, f: Filters) -> _Where:
        w = _Where()
        if f.model:
            w.add("(logs.model IN (?, ?) OR logs.backend_model = ?)", f.model, f"{f.model}:latest", f.model)
        if f.endpoint:
            endpoint = f.endpoint if f.endpoint.startswith("/") else f"/api/{f.endpoint}"
            w.add("logs.endpoint = ?", endpoint)
        if f.status:
            low, high = _status_range(f.status)
            w.add("logs.status_code BETWEEN ? AND ?", low, high)
        if f.errors:
            w.add("(logs.error IS NOT NULL OR logs.status_code >= 400)")
        if f.originals and "replay_of" in self.columns:
            w.add("logs.replay_of IS NULL")
        if f.succeeded:
            w.add("(logs.error IS NULL AND coalesce(logs.status_code, 200) < 400)")
        if f.since:
            w.add("logs.timestamp >= ?", self.dialect.time(f.since))
        if f.until:
            w.add("logs.timestamp < ?", self.dialect.time(f.until))
        if f.ids:
            w.add(f"logs.id IN ({', '.join('?' * len(f.ids))})", *f.ids)
        if f.key:
            if "key_name" not in self.columns:
                raise AuditError("this database has no key names yet: run 'llm-proxy migrate' to upgrade it")
            w.add("logs.key_name = ?", f.key)
        if f.turn is not None:
            if "turn_id" not in self.columns:
                raise AuditError("this database has no turns yet: run 'llm-proxy migrate' to upgrade it")
            w.add("logs.turn_id = ?", f.turn)
        if f.backend:
            if "backend_name" not in self.columns:
                raise AuditError(
                    "this database has no backend names yet: run 'llm-proxy migrate' to upgrade it"
                )
            w.add("logs.backend_name = ?", f.backend)
        if f.query:
            if self.dialect.search_table not in self.tables:
                raise AuditError("this database has no search index yet: run 'llm-proxy migrate' to add it")
            self.dialect.search(w, f.query)
        return w

    def ids(self, f: Filters) -> Iterator[int]:
        """The ids of the matching exchanges, oldest first."""
        w = self._where(f)
        source = "logs JOIN logs_fts ON logs_fts.rowid = logs.id" if f.query else "logs"
        try:
            cursor = self.conn.execute(f"SELECT logs.id FROM {source} {w.sql()} ORDER BY logs.id", w.params)
        except sqlite3.OperationalError as exc:
            raise AuditError(f"cannot search: {exc}") from None
        for (row_id,) in cursor:
            yield int(row_id)

    def turn_ends(self, f: Filters) -> set[int]:
        """The id of the last matching round of each turn; a row outside any turn is its own."""
        w = self._where(f)
        source = "logs JOIN logs_fts ON logs_fts.rowid = logs.id" if f.query else "logs"
        turn = "logs.turn_id" if "turn_id" in self.columns else "NULL"
        sql = f"SELECT MAX(logs.id) FROM {source} {w.sql()} GROUP BY coalesce({turn}, -logs.id)"
        try:
            return {int(r[0]) for r in self.conn.execute(sql, w.params)}
        except sqlite3.OperationalError as exc:
            raise AuditError(f"cannot search: {exc}") from None

    def rows(
        self, f: Filters, limit: int | None = None, oldest_first: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Matching exchanges, complete, one at a time (constant memory).

        Newest first unless ``oldest_first``; with a search, best match first.
        """
        w = self._where(f)
        source = self.dialect.search_source() if f.query else "logs"
        params = list(w.params)
        if f.query and not oldest_first:
            order, more = self.dialect.rank(f.query)
            params += more
        else:
            order = "logs.id" if oldest_first else "logs.id DESC"
        sql = (
            f"SELECT {', '.join(f'logs.{c}' for c in self.columns)} FROM {source} {w.sql()} ORDER BY {order}"
        )
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        for values in self.execute(sql, params):
            yield self._complete(dict(zip(self.columns, values, strict=True)))

    def get(self, row_id: int) -> dict[str, Any]:
        """One exchange, complete; AuditError when there is no such id."""
        values = self.one(
            f"SELECT {', '.join(f'logs.{c}' for c in self.columns)} FROM logs WHERE id = ?", (row_id,)
        )
        if values is None:
            raise AuditError(f"no exchange with id {row_id}")
        return self._complete(dict(zip(self.columns, values, strict=True)))

    def _complete(self, row: dict[str, Any]) -> dict[str, Any]:
        """Put compacted bodies back together; drop the recipe columns."""
        for column, parts in PART_COLUMNS.items():
            recipe = row.pop(parts, None)
            if recipe is not None and row.get(column) is None:
                row[column] = join(recipe, self._blob)
        return row

    def _blob(self, key: str) -> str:
        if key in self._blobs:
            self._blobs.move_to_end(key)
            return self._blobs[key]
        found = self.one("SELECT data FROM blobs WHERE hash = ?", (key,))
        if found is None:
            raise AuditError(f"the database is missing blob {key}: it was deleted by hand")
        self._blobs[key] = found[0]
        if len(self._blobs) > BLOB_CACHE:
            self._blobs.popitem(last=False)
        return str(found[0])

    # -- stats -----------------------------------------------------------------

    def stats(self, f: Filters) -> dict[str, Any]:
        """Per model, endpoint, API key and backend: counts, errors, latency, TTFT, tokens, cache.

        ``cache`` sums up the answer cache: of the requests that qualified for
        it, how many were hits, and what the hits spared the backend.
        """
        w = self._where(f)
        source = self.dialect.search_source() if f.query else "logs"
        # Columns a database from before their migration lacks read as NULL.
        optional = ", ".join(
            f"logs.{c}" if c in self.columns else "NULL"
            for c in ("key_name", "cache_hit", "cache_saved_ms", "cache_saved_tokens", "backend_name")
        )
        sql = (
            "SELECT logs.model, logs.endpoint, logs.latency_ms, logs.ttft_ms, logs.prompt_tokens, "
            "logs.completion_tokens, (logs.error IS NOT NULL OR logs.status_code >= 400), "
            f"{optional} FROM {source} {w.sql()}"
        )
        by_model: dict[str, _Group] = {}
        by_endpoint: dict[str, _Group] = {}
        by_key: dict[str, _Group] = {}
        by_backend: dict[str, _Group] = {}
        cache = _Cache()
        for row in self.execute(sql, w.params):
            model, endpoint, latency, ttft, p_tok, c_tok, failed, key, hit, saved_ms, saved_tok, backend = row
            named = (by_model, model), (by_endpoint, endpoint), (by_key, key), (by_backend, backend)
            for groups, name in ((groups, name or "-") for groups, name in named):
                group = groups.get(name)
                if group is None:
                    group = groups[name] = _Group()
                group.add(latency, ttft, p_tok, c_tok, bool(failed), hit)
            cache.add(hit, saved_ms, saved_tok)
        return {
            "by_model": [{"model": k, **g.summary()} for k, g in sorted(by_model.items())],
            "by_endpoint": [{"endpoint": k, **g.summary()} for k, g in sorted(by_endpoint.items())],
            "by_backend": [{"backend": k, **g.summary()} for k, g in sorted(by_backend.items())],
            "by_key": [{"key": k, **g.summary()} for k, g in sorted(by_key.items())],
            "cache": cache.summary(),
        }


class _Cache:
    """The answer cache over the selected rows."""

    def __init__(self) -> None:
        self.qualified = self.hits = self.saved_ms = self.saved_tokens = 0

    def add(self, hit: int | None, saved_ms: int | None, saved_tokens: int | None) -> None:
        if hit is None:
            return
        self.qualified += 1
        if hit:
            self.hits += 1
            self.saved_ms += saved_ms or 0
            self.saved_tokens += saved_tokens or 0

    def summary(self) -> dict[str, Any]:
        return {
            "qualified": self.qualified,
            "hits": self.hits,
            "hit_rate": _rate(self.hits, self.qualified),
            "saved_ms": self.saved_ms,
            "saved_tokens": self.saved_tokens,
        }


def _rate(part: int, whole: int) -> float | None:
    """``part`` of ``whole`` as a fraction rounded to 3 places; None of nothing."""
    return round(part / whole, 3) if whole else None


class _Group:
    """Running numbers for one model, endpoint or key."""

    def __init__(self) -> None:
        self.requests = self.errors = 0
        self.prompt_tokens = self.completion_tokens = 0
        self.timed_tokens = self.timed_ms = 0  # completion tokens and latency of rows having both
        self.cached = self.hits = 0  # rows that qualified for the answer cache; those it answered
        self.latencies: list[int] = []
        self.ttfts: list[int] = []

    def add(
        self,
        latency: int | None,
        ttft: int | None,
        p_tok: int | None,
        c_tok: int | None,
        failed: bool,
        hit: int | None = None,
    ) -> None:
        self.requests += 1
        self.errors += failed
        if latency is not None:
            self.latencies.append(latency)
        if ttft is not None:
            self.ttfts.append(ttft)
        self.prompt_tokens += p_tok or 0
        self.completion_tokens += c_tok or 0
        if c_tok and latency and not hit:  # a hit's tokens came from memory, not at the model's pace
            self.timed_tokens += c_tok
            self.timed_ms += latency
        if hit is not None:
            self.cached += 1
            self.hits += bool(hit)

    def summary(self) -> dict[str, Any]:
        self.latencies.sort()
        self.ttfts.sort()
        return {
            "requests": self.requests,
            "errors": self.errors,
            "latency_ms_p50": percentile(self.latencies, 50),
            "latency_ms_p95": percentile(self.latencies, 95),
            "latency_ms_p99": percentile(self.latencies, 99),
            "ttft_ms_p50": percentile(self.ttfts, 50),
            "ttft_ms_p95": percentile(self.ttfts, 95),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens_per_s": round(self.timed_tokens * 1000 / self.timed_ms, 1) if self.timed_ms else None,
            "cache_hits": self.hits,
            "cache_hit_rate": _rate(self.hits, self.cached),
        }


def percentile(ordered: list[int], p: float) -> int | None:
    """Nearest-rank percentile of sorted values: the smallest value with p% of values at or below it."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def fts_query(text: str) -> str:
    """A user's words as an FTS5 query: each word quoted, all must match (no query syntax surprises)."""
    words = text.split()
    if not words:
        raise AuditError("the search text is empty")
    return " ".join('"' + w.replace('"', '""') + '"' for w in words)


def _status_range(text: str) -> tuple[int, int]:
    t = text.strip().lower()
    if len(t) == 3 and t[0] in "12345" and t[1:] == "xx":
        return int(t[0]) * 100, int(t[0]) * 100 + 99
    if t.isdigit() and 100 <= int(t) <= 599:
        return int(t), int(t)
    raise AuditError(f"--status wants a code such as 404 or a class such as 5xx, got {text!r}")
