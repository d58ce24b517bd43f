"""The UI's reads on a PostgreSQL audit trail (``database.url``): a small asyncpg pool, read-only.

Behind the same ``run(fn)`` seam as SQLite's :class:`~.reader.Database`: ``fn``
is the same synchronous code, handed a :class:`~..audit.pg_query.PgReader`,
and runs on one of :data:`~.reader.THREADS` worker threads. Its queries go
back to the proxy's own event loop, where the pool's connections live, one
at a time; the worker waits for each. Each call takes one connection for one
``READ ONLY`` transaction (REPEATABLE READ: the counts and rows of one answer
agree), so nothing the UI does can write, and at most ``THREADS``
connections are ever open, however many pages ask at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..audit.dburl import asyncpg, masked, remember_secret
from ..audit.pg_errors import describe
from ..audit.pg_query import _COLUMNS, _NAMES, Loop, PgReader
from ..audit.query import Reader
from ..errors import AuditError
from .reader import THREADS
from .signin import Refused

T = TypeVar("T")
CONNECT = 10.0  # seconds to wait for a connection (from the pool or the server)
SCHEMA = 60.0  # seconds the table and column names read are trusted
READ_ONLY: dict[str, Any] = {"isolation": "repeatable_read", "readonly": True}
# Plan each query for its own values: a generic plan cannot tell a rare search word from a common
# one (walk the ids newest first, or look the word up in the index), and picks one for both.
SETTINGS = {"plan_cache_mode": "force_custom_plan", "application_name": "llm-proxy web UI"}


class _OnLoop(Loop):
    """The proxy's own loop, run into from a worker thread (no thread of its own to stop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def stop(self) -> None:
        pass


class PgDatabase:
    """``await db.run(fn)`` calls ``fn(reader)`` with a read-only transaction on the PostgreSQL trail."""

    def __init__(self, url: str) -> None:
        self.url = url
        remember_secret(url)
        self._threads = ThreadPoolExecutor(THREADS, thread_name_prefix="ui-pg-reader")
        self._pool: Any = None
        self._opening: asyncio.Lock | None = None
        self._schema: tuple[set[str], list[str]] | None = None
        self._schema_read = 0.0

    async def _open(self) -> Any:
        if self._pool is not None:
            return self._pool
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                pg = asyncpg()
                self._pool = await pg.create_pool(
                    self.url, min_size=0, max_size=THREADS, timeout=CONNECT, command_timeout=60,
                    server_settings=SETTINGS,
                )  # fmt: skip
        return self._pool

    async def run(self, fn: Callable[[Reader], T]) -> T:
        """``fn`` with a reader on one connection's read-only transaction; Refused(503) if none."""
        loop = asyncio.get_running_loop()
        try:
            pool = await self._open()
            async with pool.acquire(timeout=CONNECT) as conn, conn.transaction(**READ_ONLY):
                fresh = self._schema is not None and time.monotonic() - self._schema_read < SCHEMA
                tables, columns = self._schema if fresh and self._schema else await self._read_schema(conn)
                reader = PgReader(conn, tables, columns, _OnLoop(loop), self.url)
                work = loop.run_in_executor(self._threads, fn, reader)
                try:
                    return await asyncio.shield(work)
                except asyncio.CancelledError:
                    # The worker still uses the connection: let it finish before it goes back.
                    with contextlib.suppress(Exception):
                        await work
                    raise
        except (Refused, AuditError):
            raise
        except Exception as exc:
            if isinstance(exc, OSError | TimeoutError) or type(exc).__module__.startswith("asyncpg"):
                raise Refused(503, f"cannot read {masked(self.url)}: {describe(exc)}") from None
            raise

    async def _read_schema(self, conn: Any) -> tuple[set[str], list[str]]:
        tables = {r[0] for r in await conn.fetch(_NAMES)}
        if "logs" not in tables:
            raise Refused(503, f"{masked(self.url)} has no logs table yet")
        columns = [r[0] for r in await conn.fetch(_COLUMNS)]
        # Kept a while: a migration (another proxy's, or this one's once the server is back) adds columns.
        self._schema, self._schema_read = (tables, columns), time.monotonic()
        return tables, columns

    async def shut(self) -> None:
        """Close the pool's connections and stop the worker threads."""
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), CONNECT)
        self._threads.shutdown(wait=False, cancel_futures=True)
