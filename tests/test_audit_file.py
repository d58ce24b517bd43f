"""The database going away is noticed, never silent: rows go to the file the path names.

Deleting, moving or replacing llm_proxy.db while the proxy runs used to leave
the writer writing into a file nobody could find, and /health/ready said ok.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from llm_proxy import config as config_mod
from llm_proxy.audit.migrate import available
from llm_proxy.server import state
from llm_proxy.server.app import create_app

from .conftest import Writer, read_rows
from .ollama_double import OllamaDouble
from .test_audit_poison import good


def query(db: Path, sql: str) -> list[Any]:
    """What ``sql`` reads from the file at ``db``, read-only: polling never creates the file."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.OperationalError:
        return []  # no file (yet)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql)]
    except sqlite3.OperationalError:
        return []  # no table (yet)
    finally:
        conn.close()


async def until(check: Any, within: float = 15.0) -> Any:
    """``await check()`` until it is truthy or the time is up; returns its last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await check()
        if value or loop.time() > deadline:
            return value
        await asyncio.sleep(0.02)


async def rows_when(db: Path, expected: int) -> list[dict[str, Any]]:
    """The rows of ``logs`` in the file at ``db`` once there are ``expected``."""

    async def rows() -> list[dict[str, Any]] | None:
        found = query(db, "SELECT * FROM logs ORDER BY id")
        return found if len(found) >= expected else None

    return await until(rows) or query(db, "SELECT * FROM logs ORDER BY id")


def migrations(db: Path) -> list[str]:
    return [r["name"] for r in query(db, "SELECT name FROM _migrations ORDER BY name")]


EVERY = [p.name for p in available()]


@pytest.mark.parametrize("leftovers", ["kept", "deleted"], ids=["rm db", "rm db db-wal db-shm"])
async def test_a_deleted_database_is_recreated_and_the_rows_go_there(
    writer: Writer, caplog: pytest.LogCaptureFixture, leftovers: str
) -> None:
    recorder, db = writer
    recorder.submit(good(0))
    assert len(await rows_when(db, 1)) == 1
    with caplog.at_level(logging.WARNING, logger="llm_proxy.audit"):
        os.unlink(db)
        if leftovers == "deleted":
            os.unlink(f"{db}-wal")
            os.unlink(f"{db}-shm")
        recorder.submit(good(1))
        found = await rows_when(db, 1)
    assert [r["prompt"] for r in found] == ["good 1"]
    assert migrations(db) == EVERY
    assert f"audit database {db} was deleted or moved away while the proxy ran" in caplog.text
    assert caplog.records[0].levelname == "ERROR"
    recorder.submit(good(2))  # and it goes on in the new file
    assert [r["prompt"] for r in await rows_when(db, 2)] == ["good 1", "good 2"]


async def test_a_moved_database_keeps_its_rows_and_the_path_gets_a_new_file(writer: Writer) -> None:
    recorder, db = writer
    for n in range(3):
        recorder.submit(good(n))
    assert len(await rows_when(db, 3)) == 3
    moved = db.with_name("moved.db")
    db.rename(moved)  # the -wal file stays behind, named after the path
    recorder.submit(good(3))
    assert [r["prompt"] for r in await rows_when(db, 1)] == ["good 3"]
    assert [r["prompt"] for r in read_rows(moved, 3)] == ["good 0", "good 1", "good 2"]


async def test_a_replaced_database_is_upgraded_and_written(
    writer: Writer, caplog: pytest.LogCaptureFixture
) -> None:
    recorder, db = writer
    recorder.submit(good(0))
    assert len(await rows_when(db, 1)) == 1
    other = db.with_name("other.db")
    sqlite3.connect(other).close()  # an empty database, as a restore from nothing would leave
    with caplog.at_level(logging.ERROR, logger="llm_proxy.audit"):
        other.replace(db)
        recorder.submit(good(1))
        found = await rows_when(db, 1)
    assert [r["prompt"] for r in found] == ["good 1"]
    assert migrations(db) == EVERY
    assert "was replaced by another file while the proxy ran" in caplog.text


async def test_a_database_deleted_while_idle_is_recreated_without_waiting_for_a_row(writer: Writer) -> None:
    _, db = writer
    os.unlink(db)

    async def migrated() -> bool:
        return migrations(db) == EVERY

    assert await until(migrated)


async def probe(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/health/ready") as resp:
        return resp.status, await resp.json()


async def probe_until(url: str, status: int) -> tuple[int, dict[str, Any]]:
    """/health/ready's answer once it has ``status`` (or the time is up)."""
    last: tuple[int, dict[str, Any]] = (0, {})

    async def answered() -> bool:
        nonlocal last
        last = await probe(url)
        return last[0] == status

    await until(answered)
    return last


async def test_ready_is_503_while_the_database_cannot_be_recreated_and_the_rows_wait(
    make_proxy: Any, ollama_double: tuple[OllamaDouble, str], tmp_path: Path
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    db = folder / "llm_proxy.db"
    proxy = await make_proxy(ollama_double[1], database={"path": str(db)})
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/api/tags") as resp:
        assert resp.status == 200
    assert len(await rows_when(db, 1)) == 1
    folder.rename(tmp_path / "elsewhere")  # the folder is gone: nothing can be created there
    status, body = await probe(proxy.url)
    assert status == 503
    assert body["checks"]["database"].startswith(f"database file {db} is missing")
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/api/tags") as resp:
        assert resp.status == 200  # the client is answered; its row waits
    (tmp_path / "elsewhere").rename(folder)
    status, body = await probe_until(proxy.url, 200)
    assert (status, body["checks"]["database"]) == (200, "ok")
    rows = await rows_when(db, 2)
    assert [r["endpoint"] for r in rows] == ["/api/tags", "/api/tags"]


def chat(n: int) -> dict[str, Any]:
    """A chat request whose row needs new pages in the file."""
    content = f"{n} Turn on the kitchen light. " * 1000
    return {"model": "llama3.2", "messages": [{"role": "user", "content": content}], "stream": False}


async def test_ready_is_503_while_the_disk_is_full_and_the_waiting_rows_land_after(
    make_proxy: Any, ollama_double: tuple[OllamaDouble, str]
) -> None:
    proxy = await make_proxy(ollama_double[1])
    store = proxy.app[state.RECORDER].store
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/api/tags") as resp:
        assert resp.status == 200
    assert len(await rows_when(proxy.db, 1)) == 1
    # SQLite's own limit on the file's size stands in for a full disk: its writes
    # then fail with SQLITE_FULL, as on a disk with no space left.
    [(pages,)] = await store.run(lambda conn: conn.execute("PRAGMA page_count").fetchall())
    await store.run(lambda conn: conn.execute(f"PRAGMA max_page_count = {pages}").fetchall())
    async with aiohttp.ClientSession() as http:
        for n in range(3):
            async with http.post(f"{proxy.url}/api/chat", json=chat(n)) as resp:
                assert resp.status == 200  # the clients are answered; their rows wait
    status, body = await probe_until(proxy.url, 503)
    assert status == 503
    assert body["checks"]["database"].endswith("the last write failed: database or disk is full")
    await store.run(lambda conn: conn.execute("PRAGMA max_page_count = 1073741823").fetchall())  # space again
    status, body = await probe_until(proxy.url, 200)
    assert status == 200
    rows = await rows_when(proxy.db, 4)
    assert [r["endpoint"] for r in rows] == ["/api/tags"] + ["/api/chat"] * 3
    assert [r["prompt"][:2] for r in rows[1:]] == ["0 ", "1 ", "2 "]


async def test_ready_is_503_when_free_space_runs_low(
    make_proxy: Any, ollama_double: tuple[OllamaDouble, str]
) -> None:
    proxy = await make_proxy(ollama_double[1])
    store = proxy.app[state.RECORDER].store
    free = os.statvfs(proxy.db.parent)
    store.min_free = free.f_bavail * free.f_frsize + 2**30  # the threshold above what is free
    status, body = await probe(proxy.url)
    assert status == 503
    assert body["checks"]["database"].startswith("disk almost full: ")
    assert body["checks"]["database"].endswith(f"KiB free for database {proxy.db}")


async def test_the_shutdown_line_counts_what_was_written(
    tmp_path: Path, ollama_double: tuple[OllamaDouble, str], caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "llm_proxy.db"
    raw = {"backend": {"type": "ollama", "endpoint": ollama_double[1]}, "database": {"path": str(db)}}
    server = TestServer(create_app(config_mod.from_dict(raw)), host="127.0.0.1")
    await server.start_server()
    with caplog.at_level(logging.INFO, logger="llm_proxy"):
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(2):
                    async with http.get(server.make_url("/api/tags")) as resp:
                        assert resp.status == 200
                await rows_when(db, 2)
                os.unlink(db)
                async with http.get(server.make_url("/api/tags")) as resp:
                    assert resp.status == 200
        finally:
            await server.close()
    assert "audit trail closed: 3 rows written (0 reduced), 0 lost" in caplog.text
    assert len(query(db, "SELECT * FROM logs")) == 1  # the third, in the new file
