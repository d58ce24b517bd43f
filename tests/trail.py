"""An audit trail in either store, read back as a user would: ``sqlite3`` on the file, SQL on the server.

The ``trail`` fixture (tests/conftest.py) gives a :class:`Trail` per store, so
one test proves the behaviour on SQLite and on a real PostgreSQL server. Rows
read back from PostgreSQL are shown as SQLite shows them (the timestamp as its
text, ``stream`` as 0/1), so that both are held to the same expectations.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from llm_proxy.audit.pg_store import PostgresStore
from llm_proxy.audit.store import Store
from llm_proxy.audit.when import stamp

from .postgres import PostgresServer


@dataclass
class Trail:
    """Where a test's rows go: a SQLite file, or a database of the test PostgreSQL server."""

    kind: str  # "sqlite" or "postgresql"
    target: str  # the file's path or the database's URL
    spool: Path  # where the PostgreSQL store spools while the server is down
    server: PostgresServer | None = None

    @property
    def postgres(self) -> bool:
        return self.kind == "postgresql"

    def store(self, **settings: Any) -> Store | PostgresStore:
        """A store for this trail (``store_bodies=``, ``max_body_kb=``), not opened yet."""
        if self.postgres:
            return PostgresStore(self.target, str(self.spool), **settings)
        return Store(self.target, **settings)

    def database(self) -> dict[str, str]:
        """The ``database`` config section that points the proxy here."""
        if self.postgres:
            return {"url": self.target, "spool": str(self.spool)}
        return {"path": self.target}

    def query(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        """Rows of a query (``?`` placeholders), as dicts; [] while the table is not there yet."""
        if not self.postgres:
            conn = sqlite3.connect(self.target)
            conn.row_factory = sqlite3.Row
            try:
                return [dict(r) for r in conn.execute(sql, params)]
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise
            finally:
                conn.close()
        return _in_thread(_pg_query(self.target, sql, params))

    def rows(self, expected: int = 0, within: float = 10.0) -> list[dict[str, Any]]:
        """Every row of ``logs_full``, oldest first, once ``expected`` are there (or the time is up)."""
        deadline = time.monotonic() + within
        while True:
            found = self.query("SELECT * FROM logs_full ORDER BY id")
            if len(found) >= expected or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    async def wait_rows(self, expected: int, within: float = 10.0) -> list[dict[str, Any]]:
        """Like :meth:`rows`, letting the event loop (and the writer on it) run meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            found = await asyncio.to_thread(self.query, "SELECT * FROM logs_full ORDER BY id")
            if len(found) >= expected or loop.time() > deadline:
                return found
            await asyncio.sleep(0.02)


def _placeholders(sql: str) -> str:
    """SQLite's ``?`` as PostgreSQL's ``$1``, ``$2``…"""
    count = iter(range(1, 1000))
    return re.sub(r"\?", lambda _: f"${next(count)}", sql)


async def _pg_query(url: str, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        try:
            records = await conn.fetch(_placeholders(sql), *params)
        except asyncpg.UndefinedTableError:
            return []
        return [{k: _as_sqlite(v) for k, v in r.items()} for r in records]
    finally:
        await conn.close()


def _as_sqlite(value: Any) -> Any:
    if isinstance(value, datetime):
        return stamp(value)
    if isinstance(value, bool):
        return int(value)
    return value


def _in_thread(coro: Any) -> Any:
    """Run a coroutine to its end on a loop of its own (callable from inside a running loop)."""
    result: list[Any] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
