"""One sqlite3 connection on a thread of its own, fed functions by coroutines (datasette's writer).

:meth:`Connection.run` hands ``fn(conn)`` to the thread and awaits its result.
The thread runs the functions one at a time, in the order they came, so a
function that holds a transaction from ``BEGIN`` to ``COMMIT`` runs it in one
step, with no turn of the event loop in between: while the write lock is held,
a user's ``sqlite3 llm_proxy.db`` waits, and that wait stays as short as the
transaction itself. (aiosqlite offers the same thread, but one statement per
call; running a function there took its private ``Connection._execute``.)

Closing runs what was handed over before it, then closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_Call = tuple[Callable[[sqlite3.Connection], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class Connection:
    """A sqlite3 connection in autocommit mode (``isolation_level=None``), owned by one thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._closed: asyncio.Future[None] | None = None

    async def open(self, setup: Callable[[sqlite3.Connection], None]) -> None:
        """Start the thread, connect, and run ``setup(conn)`` there (pragmas)."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._closed = loop.create_future()
        thread = threading.Thread(
            target=self._serve, args=(loop, ready, self._closed, setup), name="audit-sqlite", daemon=True
        )
        thread.start()
        try:
            await ready
        except BaseException:
            self._closed = None
            raise

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)``, run on the connection's thread."""
        if self._closed is None or self._closed.done():
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((fn, loop, future))
        return await future

    async def close(self) -> None:
        """Run what was handed over, close the connection, end the thread."""
        if self._closed is None:
            return
        closed, self._closed = self._closed, None
        self._calls.put(None)
        await closed

    def _serve(
        self,
        loop: asyncio.AbstractEventLoop,
        ready: asyncio.Future[None],
        closed: asyncio.Future[None],
        setup: Callable[[sqlite3.Connection], None],
    ) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None)
        except BaseException as exc:
            _settle(loop, ready, None, exc)
            _settle(loop, closed, None, None)
            return
        try:
            setup(conn)
        except BaseException as exc:
            conn.close()
            _settle(loop, ready, None, exc)
            _settle(loop, closed, None, None)
            return
        _settle(loop, ready, None, None)
        try:
            while (call := self._calls.get()) is not None:
                fn, caller, future = call
                try:
                    result = fn(conn)
                except BaseException as exc:  # handed to the caller, whatever it is
                    _settle(caller, future, None, exc)
                else:
                    _settle(caller, future, result, None)
        finally:
            conn.close()
            _settle(loop, closed, None, None)


def _settle(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, exc: BaseException | None
) -> None:
    """Give ``future`` its outcome on its own loop (the caller may have been cancelled)."""

    def settle() -> None:
        if future.done():
            return
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(settle)
