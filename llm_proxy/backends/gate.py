"""The gate in front of the backend: a bounded number of requests at once, a bounded queue.

A GPU answers one or a few requests at a time; more only wait inside the
backend, holding connections. With ``backend.max_concurrency`` set, requests
beyond it wait here, in arrival order, and when ``backend.max_queue`` are
already waiting a new one gets 503 at once instead of waiting without end.
Each named backend has its own gate; the router (``router.py``) takes a slot
for each try (:meth:`Gate.acquire`) and gives it back when the reply is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext

from ..errors import Busy


class Gate:
    """At most ``limit`` holders at once (0: no limit) and at most ``queue`` waiting."""

    def __init__(self, limit: int, queue: int) -> None:
        self.limit = limit
        self.queue = queue
        self.active = 0
        self.waiting = 0
        self._slots = asyncio.Semaphore(limit) if limit > 0 else None

    def slot_if(self, gated: bool) -> AbstractAsyncContextManager[None]:
        """A slot for requests that make the backend generate; nothing for the rest."""
        return self.slot() if gated else nullcontext()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one backend slot for the body of the ``async with``; 503 when the queue is full."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    @property
    def load(self) -> int:
        """Requests running and waiting: what "least busy" compares."""
        return self.active + self.waiting

    async def acquire(self, name: str = "backend") -> None:
        """Take one slot (waiting in turn); :class:`Busy` (503) at once when the queue is full.

        ``name`` is the setting's section in the message (``backends.gpu``).
        """
        if self._slots is None:
            self.active += 1
            return
        if self._slots.locked() and self.waiting >= self.queue:
            raise Busy(
                f"the backend is busy: {self.active} requests running and {self.waiting} waiting "
                f"({name}.max_concurrency, {name}.max_queue); retry shortly"
            )
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.active += 1

    def release(self) -> None:
        """Give back the slot :meth:`acquire` took."""
        self.active -= 1
        if self._slots is not None:
            self._slots.release()
