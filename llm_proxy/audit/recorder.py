"""The single writer: exchanges queue up here and are written to the store in batches.

The store is SQLite's or PostgreSQL's (:mod:`.stores`); the writer asks it only
what :class:`~.stores.AuditStore` offers.

Handlers hand over a finished :class:`Exchange` with :meth:`Recorder.submit`,
which never waits. Backpressure is applied where waiting is harmless, before a
request starts (:meth:`Recorder.admit`), so no row is ever dropped. Closing
drains everything still queued.

A failed batch is one of two things (:func:`transient`):

- the database's trouble: locked past busy_timeout, an I/O error, a full disk,
  a file that cannot be opened. The rows are kept and the batch is retried
  until it lands; requests wait meanwhile (and /health/ready says why).
- the rows' trouble: anything else, such as a value SQLite refuses. Retrying
  would refuse the same batch forever and stop the trail, so the batch is split
  in halves until the rows that can be stored are, and each row that cannot is
  stored in reduced form (:meth:`Exchange.reduced`: metadata and the reason).
  Those are counted in :attr:`Recorder.reduced`. A reduced row refused in turn
  is logged at ERROR with its metadata and counted in :attr:`Recorder.lost`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import deque
from typing import Any

from .exchange import COLUMNS, Exchange
from .stores import AuditStore

log = logging.getLogger("llm_proxy.audit")

BATCH = 256  # rows per transaction at most
# Seconds the writer lets rows gather before a write. Every transaction costs a
# hand-over to the database thread, a WAL commit and a new FTS segment; at a
# thousand requests a second, batches of one row cost more than the requests.
GATHER = 0.01
RETRY_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)  # seconds, then stays at the last
WATCH = 1.0  # seconds between the idle writer's checks that the database file is still there
# What the log line of a lost row shows of it (never bodies: they may be what broke it).
METADATA = ("timestamp", "endpoint", "method", "status_code", "latency_ms", "request_id", "api")


class Recorder:
    """Queue plus one writer task that batches rows into transactions."""

    def __init__(self, store: AuditStore, limit: int) -> None:
        self.store = store
        self.limit = limit
        self.written = 0  # rows in the database, reduced ones included
        self.failures = 0  # failed attempts to write a batch
        self.reduced = 0  # rows stored as metadata only, their values refused
        self.lost = 0  # rows not stored at all (logged at ERROR)
        self.peak = 0
        self._queue: deque[Exchange] = deque()
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._warned = False
        self._ids: list[tuple[int, int | None]] = []  # what the last insert gave its rows: (id, turn_id)

    @property
    def depth(self) -> int:
        """Exchanges waiting to be written."""
        return len(self._queue)

    def start(self) -> None:
        """Start the writer task."""
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def admit(self) -> None:
        """Wait while the queue is over its limit (SQLite slower than traffic)."""
        if len(self._queue) < self.limit:
            return
        if not self._warned:
            log.warning(
                "audit queue is full (%d rows waiting): holding new requests until the database catches up",
                len(self._queue),
            )
            self._warned = True
        self._room.clear()
        await self._room.wait()

    def submit(self, exchange: Exchange) -> None:
        """Queue a finished exchange; never blocks, never drops."""
        self._queue.append(exchange)
        if len(self._queue) > self.peak:
            self.peak = len(self._queue)
        self._wakeup.set()

    async def close(self) -> None:
        """Write everything queued, then stop the writer."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                try:
                    async with asyncio.timeout(WATCH):
                        await self._wakeup.wait()
                except TimeoutError:
                    # Idle: notice a database file that went away all the same,
                    # so that /health/ready recovers without waiting for a row.
                    await self.store.follow()
                    continue
                if not self._closing:
                    await asyncio.sleep(GATHER)
                continue
            batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
            await self._write(batch)
            for exchange in batch:
                self._queue.popleft()
                exchange.stored()
            if len(self._queue) < self.limit:
                self._room.set()
                if self._warned and not self._queue:
                    log.warning("audit queue drained; requests flow again")
                    self._warned = False

    async def _write(self, batch: list[Exchange]) -> None:
        """Store one batch: every row lands, whole or reduced, unless the proxy stops first."""
        pairs: list[tuple[Exchange, tuple[Any, ...]]] = []
        for exchange in batch:
            try:
                pairs.append((exchange, exchange.row()))
            except Exception as exc:  # a value that even the edge's checks trip over
                # The rows before it first, so that the trail keeps its order.
                await self._land(pairs)
                pairs = []
                await self._land_reduced(exchange, exc)
        await self._land(pairs)

    async def _land(self, pairs: list[tuple[Exchange, tuple[Any, ...]]]) -> None:
        """Insert rows in one transaction; a batch refused for its rows is split in halves."""
        if not pairs:
            return
        refused = await self._insert([row for _, row in pairs])
        if refused is True:
            for (exchange, _), (row_id, turn_id) in zip(pairs, self._ids, strict=False):
                exchange.row_id, exchange.turn_id = row_id, turn_id
            return
        if refused is False:
            return
        if len(pairs) > 1:
            half = len(pairs) // 2
            await self._land(pairs[:half])
            await self._land(pairs[half:])
        else:
            await self._land_reduced(pairs[0][0], refused)

    async def _land_reduced(self, exchange: Exchange, exc: BaseException) -> None:
        """Store the metadata of an exchange whose row was refused, and why."""
        reason = _reason(exc)
        log.error("audit row refused (%s); storing its metadata only", reason)
        reduced = exchange.reduced(reason)
        refused = await self._insert([reduced])
        if refused is True:
            self.reduced += 1
            if self._ids:
                exchange.row_id = self._ids[0][0]
        elif refused is not False:  # never expected: a reduced row holds only checked metadata
            self.lost += 1
            shown = dict(zip(COLUMNS, reduced, strict=True))
            log.error("audit row lost (%s): %s", _reason(refused), {k: shown[k] for k in METADATA})

    async def _insert(self, rows: list[tuple[Any, ...]]) -> bool | BaseException:
        """Insert rows, retrying the database's errors until they land.

        True once written; the error when the rows themselves were refused;
        False when the proxy is stopping and gave up on them (they are logged).
        """
        attempt = 0
        while True:
            try:
                self._ids = await self.store.insert(rows) or []
            except Exception as exc:  # sqlite3 errors of every kind and the values' own
                self.failures += 1
                await self.store.rollback()
                if not self.store.transient(exc):
                    return exc
                if self._closing and attempt >= len(RETRY_DELAYS):
                    # Shutting down and SQLite still refuses: put the rows in the
                    # log rather than hang the exit or lose them silently.
                    for row in rows:
                        log.error("audit row not written: %r", self.store.redacted(row))
                    self.lost += len(rows)
                    return False
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                log.error("audit write of %d rows failed (%s); retrying in %.1fs", len(rows), exc, delay)
                attempt += 1
                await asyncio.sleep(delay)
            else:
                self.written += len(rows)
                return True


def _reason(exc: BaseException) -> str:
    """One line naming an error: its type and message."""
    text = str(exc)
    if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorname", None):
        text = f"{text} ({exc.sqlite_errorname})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
