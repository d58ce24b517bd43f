"""The single writer: exchanges queue up here and are written to SQLite in batches.

Handlers hand over a finished :class:`Exchange` with :meth:`Recorder.submit`,
which never waits. Backpressure is applied where waiting is harmless, before a
request starts (:meth:`Recorder.admit`), so no row is ever dropped. Closing
drains everything still queued.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from .exchange import Exchange
from .store import Store

log = logging.getLogger("llm_proxy.audit")

BATCH = 256  # rows per transaction at most
# Seconds the writer lets rows gather before a write. Every transaction costs a
# hand-over to aiosqlite's thread, a WAL commit and a new FTS segment; at a
# thousand requests a second, batches of one row cost more than the requests.
GATHER = 0.01
RETRY_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)  # seconds, then stays at the last


class Recorder:
    """Queue plus one writer task that batches rows into transactions."""

    def __init__(self, store: Store, limit: int) -> None:
        self.store = store
        self.limit = limit
        self.written = 0
        self.failures = 0
        self.peak = 0
        self._queue: deque[Exchange] = deque()
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._warned = False

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
                "audit queue is full (%d rows waiting): holding new requests until SQLite catches up",
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
                await self._wakeup.wait()
                if not self._closing:
                    await asyncio.sleep(GATHER)
                continue
            batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
            await self._write(batch)
            for _ in batch:
                self._queue.popleft()
            if len(self._queue) < self.limit:
                self._room.set()
                if self._warned and not self._queue:
                    log.warning("audit queue drained; requests flow again")
                    self._warned = False

    async def _write(self, batch: list[Exchange]) -> None:
        """Insert one batch, retrying until it lands: rows are never dropped."""
        rows = [e.row() for e in batch]
        attempt = 0
        while True:
            try:
                await self.store.insert(rows)
                self.written += len(rows)
                return
            except Exception as exc:  # sqlite3 errors of every kind: keep the rows, retry
                self.failures += 1
                if self._closing and attempt >= len(RETRY_DELAYS):
                    # Shutting down and SQLite still refuses: put the rows in the
                    # log rather than hang the exit or lose them silently.
                    for row in rows:
                        log.error("audit row not written: %r", row)
                    return
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                log.error("audit write of %d rows failed (%s); retrying in %.1fs", len(rows), exc, delay)
                await self.store.rollback()
                attempt += 1
                await asyncio.sleep(delay)
