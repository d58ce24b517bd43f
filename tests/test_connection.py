"""The writer's connection thread: functions run in order, one step each, errors reach the caller."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from llm_proxy.audit.connection import Connection


def table(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE t (n INTEGER)")


async def opened(path: Path) -> Connection:
    db = Connection(str(path))
    await db.open(table)
    return db


def count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM t").fetchone()[0])


async def test_an_error_reaches_the_caller_and_the_connection_goes_on(tmp_path: Path) -> None:
    db = await opened(tmp_path / "a.db")
    with pytest.raises(sqlite3.OperationalError, match="no such table: nowhere"):
        await db.run(lambda conn: conn.execute("SELECT * FROM nowhere"))
    await db.run(lambda conn: conn.execute("INSERT INTO t VALUES (1)"))
    await db.close()
    assert count(tmp_path / "a.db") == 1


async def test_a_cancelled_caller_leaves_its_function_whole(tmp_path: Path) -> None:
    """Cancelling the await does not cut a transaction in half: the thread finishes it."""
    db = await opened(tmp_path / "a.db")
    started, release = threading.Event(), threading.Event()

    def slow(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        started.set()
        release.wait(10)
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("COMMIT")

    waiting = asyncio.create_task(db.run(slow))
    await asyncio.to_thread(started.wait, 10)
    waiting.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await db.run(lambda conn: conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]) == 1
    await db.close()


async def test_close_runs_what_was_handed_over_first(tmp_path: Path) -> None:
    db = await opened(tmp_path / "a.db")
    insert = "INSERT INTO t VALUES (1)"
    # gather starts them in order: fifty calls are handed over, then the close.
    await asyncio.gather(*(db.run(lambda conn: conn.execute(insert)) for _ in range(50)), db.close())
    assert count(tmp_path / "a.db") == 50
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        await db.run(lambda conn: None)


async def test_a_file_that_cannot_be_opened_fails_open(tmp_path: Path) -> None:
    db = Connection(str(tmp_path / "missing" / "a.db"))
    with pytest.raises(sqlite3.OperationalError, match="unable to open"):
        await db.open(table)
    await db.close()  # nothing to close: no error either
