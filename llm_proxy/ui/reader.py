"""Read-only connections to the audit database, on threads of their own.

The UI never writes: each worker thread opens the file with ``mode=ro`` (which
never creates, migrates or locks it for writing), so a page open all day costs
the writer nothing but WAL readers' marks. A file replaced under the proxy
(the writer follows it, see ``audit/store.py``) is followed here too: each call
compares the path's inode with the one its connection has open.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar
from urllib.parse import quote

from ..audit.query import Reader
from .signin import Refused

T = TypeVar("T")
THREADS = 2  # queries of the UI at once; more wait their turn


class Store(Protocol):
    """What the UI reads through: ``await store.run(fn)`` calls ``fn(reader)`` off the event loop."""

    async def run(self, fn: Callable[[Reader], T]) -> T: ...

    async def shut(self) -> None: ...


class Database:
    """``await db.run(fn)`` calls ``fn(reader)`` on a worker thread's read-only connection."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="ui-reader")
        self._local = threading.local()

    async def run(self, fn: Callable[[Reader], T]) -> T:
        """``fn`` with a reader, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._call, fn)

    def _call(self, fn: Callable[[Reader], T]) -> T:
        return fn(self._reader())

    def _reader(self) -> Reader:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise Refused(503, f"no database at {self.path} yet") from None
        identity = (st.st_dev, st.st_ino)
        held: tuple[tuple[int, int], Reader] | None = getattr(self._local, "held", None)
        if held is not None and held[0] == identity:
            return held[1]
        if held is not None:
            held[1].close()
        uri = f"file:{quote(os.path.abspath(self.path))}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        reader = Reader(conn, tables)
        self._local.held = (identity, reader)
        return reader

    def close(self) -> None:
        """Stop the worker threads (their connections close with them)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def shut(self) -> None:
        """:meth:`close`, as :class:`Store` has it."""
        self.close()
