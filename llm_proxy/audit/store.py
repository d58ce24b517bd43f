"""The SQLite database behind the audit trail: connection settings and inserts."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import aiosqlite

from .exchange import COLUMNS
from .migrate import migrate

_INSERT = f"INSERT INTO logs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


class Store:
    """One aiosqlite connection that writes ``logs`` rows in batches."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> list[str]:
        """Apply pending migrations, then open the writer connection; returns migrations applied."""
        applied = migrate(self.path)
        db = await aiosqlite.connect(self.path)
        # WAL lets `sqlite3 llm_proxy.db` read while we write; busy_timeout makes
        # our writes wait out a user's brief write lock instead of failing.
        # synchronous=NORMAL is durable across process crashes in WAL mode.
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA busy_timeout=10000")
        await db.execute("PRAGMA synchronous=NORMAL")
        self._db = db
        return applied

    async def insert(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert rows in one transaction."""
        assert self._db is not None, "Store.open() was not awaited"
        await self._db.executemany(_INSERT, rows)
        await self._db.commit()

    async def rollback(self) -> None:
        """Abandon a failed transaction so the next batch starts clean."""
        if self._db is not None:
            await self._db.rollback()

    async def close(self) -> None:
        """Close the connection (checkpointing the WAL)."""
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def writable(self, wait: float = 2.0) -> str | None:
        """``None`` when a write transaction can start now, else why not (for /health/ready)."""
        # A connection of its own: BEGIN on the writer's connection could land inside
        # one of its batches. mode=rw never creates a file that has gone missing.
        try:
            async with aiosqlite.connect(f"file:{self.path}?mode=rw", uri=True, timeout=wait) as db:
                await db.execute("BEGIN IMMEDIATE")
                await db.rollback()
        except sqlite3.Error as exc:
            return f"database {self.path} is not writable: {exc}"
        return None

    async def count(self) -> int:
        """Number of rows in ``logs``."""
        assert self._db is not None
        async with self._db.execute("SELECT COUNT(*) FROM logs") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0


def row_dicts(cursor_rows: Iterable[Sequence[Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """Rows as dicts keyed by column name."""
    return [dict(zip(names, r, strict=True)) for r in cursor_rows]
