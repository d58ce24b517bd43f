"""New exchanges, pushed to the open pages as they are written (Server-Sent Events).

The recording middleware calls :meth:`Feed.publish` as it hands each finished
exchange to the writer. With no page open that is one length check and
nothing else. With pages open it wakes one task, which reads the rows written
since the last it saw with one query, whatever the number of pages, and offers
them to every page's queue. A page's queue holds ``ui.viewer_queue`` rows; one
that falls further behind gets a ``resync`` event instead and reloads its list.
At most ``ui.max_viewers`` pages listen at once. On a PostgreSQL trail other
proxies may write too: while pages listen, the task also looks every
:data:`POLL` seconds, with the same one query.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from ..audit.exchange import Exchange
from ..audit.query import Reader
from . import listing
from .reader import Store
from .signin import Refused

CATCH_UP = 5.0  # seconds the feed waits for published exchanges to land in the database
STEP = 0.05  # seconds between two looks while it waits
BATCH = 100  # rows read per query
POLL = 2.0  # seconds between looks for other proxies' rows (PostgreSQL)


class Viewer:
    """One open page: a bounded queue of events."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.events: deque[dict[str, Any]] = deque()
        self.ready = asyncio.Event()
        self.closed = False

    def offer(self, rows: list[dict[str, Any]]) -> None:
        """Queue rows; past the limit, everything queued gives way to one ``resync``."""
        if len(self.events) + len(rows) > self.limit:
            self.events.clear()
            self.events.append({"type": "resync"})
        else:
            self.events.extend({"type": "exchange", "exchange": row} for row in rows)
        self.ready.set()

    def close(self) -> None:
        """Make the page's stream end."""
        self.closed = True
        self.ready.set()

    async def next(self, within: float) -> list[dict[str, Any]] | None:
        """The events queued (waiting up to ``within`` seconds); None when closed."""
        if not self.events and not self.closed:
            self.ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await self.ready.wait()
        if self.closed:
            return None
        taken = list(self.events)
        self.events.clear()
        return taken


class Feed:
    """The pages listening, and the one task that brings them new rows."""

    def __init__(self, db: Store, max_viewers: int, queue: int, poll: float | None = None) -> None:
        self.db = db
        # Seconds between looks for rows this proxy did not publish (other proxies writing the same
        # PostgreSQL trail); None: only this proxy writes, its hook is enough.
        self.poll = poll
        self.max_viewers = max_viewers
        self.queue = queue
        self.viewers: set[Viewer] = set()
        self._pending = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last: int = 0

    @property
    def last(self) -> int:
        """The newest id offered to the pages: a page that joins now gets every row after it."""
        return self._last

    def publish(self, exchange: Exchange) -> None:
        """The recording hook: an exchange was handed to the writer."""
        if not self.viewers:
            return
        self._pending += 1
        self._wake.set()

    async def join(self) -> Viewer:
        """A new page; Refused(503) when ``ui.max_viewers`` are open."""
        if len(self.viewers) >= self.max_viewers:
            raise Refused(503, f"{self.max_viewers} pages already follow the live list (ui.max_viewers)")
        if not self.viewers:
            self._last = await self.db.run(_last_id)
            self._pending = 0
        viewer = Viewer(self.queue)
        self.viewers.add(viewer)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="ui-feed")
        return viewer

    def leave(self, viewer: Viewer) -> None:
        """A page went away."""
        self.viewers.discard(viewer)
        if not self.viewers:
            self._wake.set()  # the task sees nobody listens, and ends

    async def close(self) -> None:
        """End every page's stream (at shutdown) and the task."""
        for viewer in list(self.viewers):
            viewer.close()
        self.viewers.clear()
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.viewers:
            try:
                async with asyncio.timeout(self.poll):
                    await self._wake.wait()
            except TimeoutError:
                await self._look()  # one query for every page, whoever wrote the rows
                continue
            self._wake.clear()
            deadline = loop.time() + CATCH_UP
            while self._pending > 0 and self.viewers:
                await asyncio.sleep(STEP)
                try:
                    rows = await self.db.run(lambda r: _since(r, self._last))
                except Exception:  # a database that went away: try again with the next exchange
                    rows = []
                if rows:
                    self._last = max(self._last, rows[-1]["id"])
                    self._pending = max(0, self._pending - len(rows))
                    for viewer in list(self.viewers):
                        viewer.offer(rows)
                    deadline = loop.time() + CATCH_UP
                elif loop.time() > deadline:
                    self._pending = 0  # not recorded after all (the writer is stopping), or read already

    async def _look(self) -> None:
        try:
            rows = await self.db.run(lambda r: _since(r, self._last))
        except Exception:  # the database is away: the next look tries again
            return
        if rows and self.viewers:
            self._last = max(self._last, rows[-1]["id"])
            for viewer in list(self.viewers):
                viewer.offer(rows)


def _since(reader: Reader, last: int) -> list[dict[str, Any]]:
    """Rows written after id ``last``, oldest first (the order they came in)."""
    found = listing.exchanges(reader, listing.Query(limit=BATCH, after=last))
    return list(reversed(found["exchanges"]))


def _last_id(reader: Reader) -> int:
    return listing.newest(reader)
