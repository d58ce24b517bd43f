"""The outage spool: rows PostgreSQL could not take wait in a local SQLite file, in order.

A row goes in as the writer had it (the values of :data:`~.exchange.COLUMNS`,
before ids, turns or compaction, which need the database), with a random key.
:class:`~.pg_store.PostgresStore` sends the oldest first once the server
answers again, and records each key in ``_spooled`` in the same transaction
as its row: a row whose key is there already is not sent again, so a crash
between that commit and the delete here, or two proxies sharing one spool
file, never doubles a row. The file survives a stop (SIGTERM while the server
is down); the next start sends what it holds. It is created 0600, as the
trail: it holds prompts and answers.
"""

from __future__ import annotations

import functools
import sqlite3
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from .connection import Connection
from .migrate import create_private

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spool ("
    "seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, row BLOB NOT NULL)"
)
Spooled = tuple[int, str, tuple[Any, ...]]  # (seq, key, row)


class Spool:
    """An append-only queue of rows in an SQLite file, read oldest first."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0  # rows waiting (this process's view; other processes may add)
        self._db: Connection | None = None

    async def open(self) -> int:
        """Create or open the file; returns how many rows wait in it."""
        create_private(self.path)
        db = Connection(self.path)
        await db.open(_setup)
        self._db = db
        self.count = await db.run(_count)
        return self.count

    async def append(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Keep ``rows`` (durably: committed before this returns)."""
        records = [(uuid.uuid4().hex, orjson.dumps(list(row))) for row in rows]
        await self._open().run(functools.partial(_append, records=records))
        self.count += len(records)

    async def oldest(self, limit: int) -> list[Spooled]:
        """Up to ``limit`` of the oldest rows."""
        found: list[tuple[int, str, bytes]] = await self._open().run(functools.partial(_oldest, limit=limit))
        return [(seq, key, tuple(orjson.loads(row))) for seq, key, row in found]

    async def remove(self, seqs: Sequence[int]) -> None:
        """Forget rows that were sent."""
        await self._open().run(functools.partial(_remove, seqs=list(seqs)))
        self.count = await self._open().run(_count)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    def _open(self) -> Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError(f"the spool {self.path} is not open")
        return self._db


def _setup(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA synchronous=FULL")  # a spooled row must survive a power cut too
    conn.execute(SCHEMA)


def _count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM spool").fetchone()[0])


def _append(conn: sqlite3.Connection, records: list[tuple[str, bytes]]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany("INSERT INTO spool (key, row) VALUES (?, ?)", records)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _oldest(conn: sqlite3.Connection, limit: int) -> list[tuple[int, str, bytes]]:
    return conn.execute("SELECT seq, key, row FROM spool ORDER BY seq LIMIT ?", (limit,)).fetchall()


def _remove(conn: sqlite3.Connection, seqs: list[int]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany("DELETE FROM spool WHERE seq = ?", [(s,) for s in seqs])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
