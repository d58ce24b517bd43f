"""Retention: delete the oldest rows in small batches and give the space back to the file system.

One implementation, :func:`plan`, run by two drivers: the running proxy's
background task (:class:`Retention`, driven by ``database.retention_days`` /
``max_size_mb``) and ``llm-proxy prune`` (:func:`prune`). A plan is a
generator of steps, each a small function of a ``sqlite3`` connection; the
driver runs a step and sends its result back, which decides the next one.
``prune`` runs the steps on a connection of its own, one after the other.

The background task runs them on the writer's own connection (through
:meth:`~llm_proxy.audit.store.Store.run`, one step at a time under its lock)
rather than a second connection: a second writer would only contend for
SQLite's single write lock and sleep in busy_timeout, while taking turns on one
connection never waits on a lock at all. Each step is one small batch, so the
audit writer waits at most one batch; handlers never wait on either (they only
queue exchanges). Deleting rows frees their full-text entries and blobs through
the triggers of migrations 0002 and 0003.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import sqlite3
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..config import DatabaseConfig
from .pg_errors import describe
from .pg_store import PostgresStore
from .store import Store
from .when import stamp

log = logging.getLogger("llm_proxy.audit")

BATCH = 200  # rows per delete transaction
VACUUM_PAGES = 256  # pages returned to the file system per step
MERGE_PAGES = 256  # pages of full-text index merged per step
CHECK_EVERY = 600.0  # seconds between background passes

# FTS5 records a deletion as a tombstone; the space comes back only when
# segments are merged. A negative N merges whatever segments there are, a step
# at a time; fewer than two changes means there was nothing left to do.
# https://www.sqlite.org/fts5.html#the_merge_command
MERGE_FTS = f"INSERT INTO logs_fts (logs_fts, rank) VALUES ('merge', -{MERGE_PAGES})"

DELETE_OLDER = (
    "DELETE FROM logs WHERE id IN (SELECT id FROM logs WHERE timestamp < ? ORDER BY timestamp LIMIT ?)"
)
DELETE_OLDEST = "DELETE FROM logs WHERE id IN (SELECT id FROM logs ORDER BY id LIMIT ?)"
ID_SPAN = "SELECT coalesce(max(id) - min(id) + 1, 0) FROM logs"  # about the row count, without a scan
COUNT_OLDER = "SELECT COUNT(*) FROM logs WHERE timestamp < ?"
USED_BYTES = (
    "SELECT (p.page_count - f.freelist_count) * s.page_size "
    "FROM pragma_page_count() AS p, pragma_freelist_count() AS f, pragma_page_size() AS s"
)

# One step of a plan: a function of the connection, run by whichever driver.
Step = Callable[[sqlite3.Connection], Any]
Plan = Generator[Step, Any, int]


def cutoff(days: float, now: datetime | None = None) -> str:
    """The timestamp before which rows are older than ``days``."""
    return stamp((now or datetime.now(UTC)) - timedelta(days=days))


def size_batch(used: int, max_bytes: int, rows: int) -> int:
    """How many of the oldest rows to delete next to come down to ``max_bytes``.

    The share of rows to go is the share of bytes over the limit, so big rows
    are not deleted by the hundred when a few suffice; the size is measured
    again after every batch.
    """
    share = (used - max_bytes) / used if used else 0.0
    return max(1, min(BATCH, math.ceil(rows * share)))


def plan(before: str | None, max_bytes: int) -> Plan:
    """Delete rows older than ``before`` (a timestamp), then the oldest while the data passes
    ``max_bytes`` (0: no limit), shrinking the file after each; returns the rows deleted."""
    deleted = 0
    if before:
        while n := (yield functools.partial(_write, sql=DELETE_OLDER, params=(before, BATCH))):
            deleted += n
        if deleted:
            yield from _shrink()
    if max_bytes:
        while (used := (yield _used_bytes)) > max_bytes:
            span = yield _id_span
            rows = size_batch(used, max_bytes, span)
            n = yield functools.partial(_write, sql=DELETE_OLDEST, params=(rows,))
            if not n:
                break
            deleted += n
            yield from _shrink()
    return deleted


def _shrink() -> Generator[Step, Any, None]:
    """Merge the search index and give free pages back, each in small steps."""
    while (yield _merge_fts) >= 2:
        pass
    while (yield _free_pages):
        yield _vacuum_some
    # PASSIVE never waits for readers; the file shrinks once the WAL is checkpointed.
    yield _checkpoint


def run(conn: sqlite3.Connection, steps: Plan) -> int:
    """Run a plan's steps on ``conn``, one after the other; returns the plan's result."""
    try:
        step = next(steps)
        while True:
            step = steps.send(step(conn))
    except StopIteration as done:
        return int(done.value)


class Retention:
    """The proxy's background task: enforce the age and size limits now and every few minutes."""

    def __init__(
        self, store: Store | PostgresStore, config: DatabaseConfig, every: float = CHECK_EVERY
    ) -> None:
        self.store = store
        self.days = config.retention_days
        self.max_bytes = config.max_size_mb * 1024 * 1024
        self.every = every
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        """Whether any limit is configured."""
        return bool(self.days or self.max_bytes)

    def start(self) -> None:
        """Start the background task when a limit is configured."""
        if self.enabled:
            self._task = asyncio.create_task(self._run(), name="audit-retention")

    async def close(self) -> None:
        """Stop the task, abandoning at most one small batch."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.once()
            except Exception as exc:  # a locked or full disk, a server away: try again next pass
                log.error("retention pass failed: %s", describe(exc))
            await asyncio.sleep(self.every)

    async def once(self) -> int:
        """One pass: delete what the limits say, then shrink the file; returns rows deleted."""
        if isinstance(self.store, PostgresStore):  # no file to shrink: autovacuum reuses the space
            deleted = await self.store.retain(cutoff(self.days), BATCH) if self.days else 0
            if deleted:
                log.info("retention: deleted %d old rows", deleted)
            return deleted
        steps = plan(cutoff(self.days) if self.days else None, self.max_bytes)
        try:
            step = next(steps)
            while True:
                # Each step takes the store's lock for itself: the writer's
                # batches get their turns in between.
                step = steps.send(await self.store.run(step))
        except StopIteration as done:
            deleted = int(done.value)
        if deleted:
            log.info("retention: deleted %d old rows", deleted)
        return deleted


@dataclass(frozen=True, slots=True)
class Pruned:
    """What ``llm-proxy prune`` did."""

    deleted: int
    bytes_before: int
    bytes_after: int


def prune(path: str, before: str | None, max_bytes: int = 0, dry_run: bool = False) -> Pruned:
    """Delete rows older than ``before`` (a timestamp) and/or beyond ``max_bytes``; shrink the file."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    try:
        conn.execute("PRAGMA busy_timeout=10000")
        size_before = _file_bytes(conn)
        if dry_run:
            n = conn.execute(COUNT_OLDER, (before,)).fetchone()[0] if before else 0
            return Pruned(n, size_before, size_before)
        deleted = run(conn, plan(before, max_bytes))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return Pruned(deleted, size_before, _file_bytes(conn))
    finally:
        conn.close()


def _write(conn: sqlite3.Connection, sql: str, params: tuple[object, ...] = ()) -> int:
    """One writing statement in a transaction that takes the write lock up front; the rows it changed."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        n = conn.execute(sql, params).rowcount
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return n


def _merge_fts(conn: sqlite3.Connection) -> int:
    """One step of the index merge; every change it made (the merge's are not rows of logs)."""
    before = conn.total_changes
    _write(conn, MERGE_FTS)
    return conn.total_changes - before


def _used_bytes(conn: sqlite3.Connection) -> int:
    return int(conn.execute(USED_BYTES).fetchone()[0])


def _id_span(conn: sqlite3.Connection) -> int:
    return int(conn.execute(ID_SPAN).fetchone()[0])


def _free_pages(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA freelist_count").fetchone()[0])


def _vacuum_some(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA incremental_vacuum({VACUUM_PAGES})").fetchall()


def _checkpoint(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _file_bytes(conn: sqlite3.Connection) -> int:
    page_count = conn.execute("PRAGMA page_count").fetchone()[0]
    return int(page_count * conn.execute("PRAGMA page_size").fetchone()[0])
