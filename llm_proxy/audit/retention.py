"""Retention: delete the oldest rows in small batches and give the space back to the file system.

Two callers share the SQL here: the running proxy's background task
(:class:`Retention`, driven by ``database.retention_days`` / ``max_size_mb``)
and ``llm-proxy prune`` (:func:`prune`).

The background task uses the writer's own connection (through
:class:`~llm_proxy.audit.store.Store`, one transaction at a time under its
lock) rather than a second connection: a second writer would only contend for
SQLite's single write lock and sleep in busy_timeout, while taking turns on one
connection never waits on a lock at all. Each turn is one small batch, so the
audit writer waits at most one batch; handlers never wait on either (they only
queue exchanges). Deleting rows frees their full-text entries and blobs through
the triggers of migrations 0002 and 0003.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..config import DatabaseConfig
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


class Retention:
    """The proxy's background task: enforce the age and size limits now and every few minutes."""

    def __init__(self, store: Store, config: DatabaseConfig, every: float = CHECK_EVERY) -> None:
        self.store = store
        self.days = config.retention_days
        self.max_bytes = config.max_size_mb * 1024 * 1024
        self.every = every
        self.deleted = 0
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
            except sqlite3.Error as exc:  # a locked or full disk: try again next pass
                log.error("retention pass failed: %s", exc)
            await asyncio.sleep(self.every)

    async def once(self) -> int:
        """One pass: delete what the limits say, then shrink the file; returns rows deleted."""
        deleted = 0
        if self.days:
            before = cutoff(self.days)
            while n := await self.store.write(DELETE_OLDER, (before, BATCH)):
                deleted += n
                await asyncio.sleep(0)  # let the writer and handlers in between batches
        if deleted:
            await self._shrink()
        if self.max_bytes:
            while (used := await self._used()) > self.max_bytes:
                [(span,)] = await self.store.fetch(ID_SPAN)
                n = await self.store.write(DELETE_OLDEST, (size_batch(used, self.max_bytes, span),))
                if not n:
                    break
                deleted += n
                await self._shrink()
        if deleted:
            self.deleted += deleted
            log.info("retention: deleted %d old rows", deleted)
        return deleted

    async def _used(self) -> int:
        [(used,)] = await self.store.fetch(USED_BYTES)
        return int(used)

    async def _shrink(self) -> None:
        """Merge the search index and give free pages back, each in small steps."""
        while True:
            if await self.store.changes(MERGE_FTS) < 2:
                break
            await asyncio.sleep(0)
        while (await self.store.fetch("PRAGMA freelist_count"))[0][0]:
            await self.store.fetch(f"PRAGMA incremental_vacuum({VACUUM_PAGES})")
            await asyncio.sleep(0)
        # PASSIVE never waits for readers; the file shrinks once the WAL is checkpointed.
        await self.store.fetch("PRAGMA wal_checkpoint(PASSIVE)")


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
        deleted = 0
        if before:
            while n := _write(conn, DELETE_OLDER, (before, BATCH)):
                deleted += n
        if deleted:
            _shrink(conn)
        if max_bytes:
            while (used := conn.execute(USED_BYTES).fetchone()[0]) > max_bytes:
                span = conn.execute(ID_SPAN).fetchone()[0]
                n = _write(conn, DELETE_OLDEST, (size_batch(used, max_bytes, span),))
                if not n:
                    break
                deleted += n
                _shrink(conn)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return Pruned(deleted, size_before, _file_bytes(conn))
    finally:
        conn.close()


def _shrink(conn: sqlite3.Connection) -> None:
    while True:
        before = conn.total_changes
        _write(conn, MERGE_FTS, ())
        if conn.total_changes - before < 2:
            break
    while conn.execute("PRAGMA freelist_count").fetchone()[0]:
        conn.execute(f"PRAGMA incremental_vacuum({VACUUM_PAGES})").fetchall()


def _write(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> int:
    conn.execute("BEGIN IMMEDIATE")
    try:
        n = conn.execute(sql, params).rowcount
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return n


def _file_bytes(conn: sqlite3.Connection) -> int:
    page_count = conn.execute("PRAGMA page_count").fetchone()[0]
    return int(page_count * conn.execute("PRAGMA page_size").fetchone()[0])
