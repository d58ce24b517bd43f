"""Retention: ``llm-proxy prune`` and the running proxy delete exactly the old rows and shrink the file."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import ollama
import pytest

from llm_proxy.cli.main import main

from .conftest import MakeProxy, Proxy
from .ollama_double import OllamaDouble

OLD = "2020-01-01T00:00:00.000Z"


async def fill(proxy: Proxy, n: int, size: int = 20_000) -> None:
    """``n`` chats whose messages are large and all different (nothing to share between them)."""
    c = ollama.AsyncClient(host=proxy.url)
    for i in range(n):
        text = f"note{i} " + os.urandom(size // 2).hex()
        await c.chat(model="llama3.2", messages=[{"role": "user", "content": text}])
    await proxy.wait_rows(n)


async def eventually(check: Callable[[], bool], within: float = 10.0) -> None:
    """Wait, bounded, until ``check()`` holds (the background task runs on its own)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            return
        await asyncio.sleep(0.05)


def file_bytes(db: Path) -> int:
    """What the database takes on disk: the file and its write-ahead log."""
    wal = Path(f"{db}-wal")
    return os.path.getsize(db) + (os.path.getsize(wal) if wal.exists() else 0)


@contextmanager
def connect(db: str | Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection, committed and closed at the end (so the WAL can go away)."""
    with closing(sqlite3.connect(db)) as conn, conn:
        yield conn


def age(db: Path, ids: list[int]) -> None:
    """Make rows look old, as time passing would."""
    with connect(db) as conn:
        conn.executemany("UPDATE logs SET timestamp = ? WHERE id = ?", [(OLD, i) for i in ids])


def ids(db: Path) -> list[int]:
    with connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM logs ORDER BY id")]


def orphans(db: Path) -> int:
    """Blobs no row names any more (there should never be any)."""
    with connect(db) as conn:
        return int(
            conn.execute(
                "SELECT COUNT(*) FROM blobs WHERE hash NOT IN ("
                " SELECT json_extract(j.value, '$[0]')"
                " FROM logs, json_each(coalesce(logs.request_parts, '[]')) AS j"
                " WHERE j.type = 'array')"
            ).fetchone()[0]
        )


async def test_prune_deletes_exactly_the_old_rows_and_shrinks_the_file(
    proxy: Proxy, capsys: pytest.CaptureFixture[str]
) -> None:
    await fill(proxy, 12)
    age(proxy.db, list(range(1, 9)))
    db = str(proxy.db)

    assert main(["prune", "--older-than", "30d", "--dry-run", "--db", db]) == 0
    assert capsys.readouterr().out.startswith("would delete 8 exchanges older than")
    assert ids(proxy.db) == list(range(1, 13))

    size_before = file_bytes(proxy.db)
    assert main(["prune", "--older-than", "30d", "--db", db]) == 0  # the proxy is still running
    out = capsys.readouterr().out
    assert out.startswith(f"deleted 8 exchanges; {db}: ")
    assert ids(proxy.db) == [9, 10, 11, 12]
    assert file_bytes(proxy.db) < size_before * 0.5
    assert orphans(proxy.db) == 0
    with connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 4  # one message each
        assert conn.execute("SELECT COUNT(*) FROM blobs WHERE refs != 1").fetchone()[0] == 0
    # The search index forgot the deleted rows.
    assert main(["logs", "--db", db, "--json", "-q", "note1"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["logs", "--db", db, "--json", "-q", "note9"]) == 0
    assert capsys.readouterr().out.startswith('{"id":10,')

    # The proxy goes on writing after a prune.
    await ollama.AsyncClient(host=proxy.url).chat(
        model="llama3.2", messages=[{"role": "user", "content": "hi"}]
    )
    assert (await proxy.wait_rows(5))[-1]["id"] == 13  # ids are never reused

    assert main(["prune", "--db", db]) == 1
    assert "say what to delete" in capsys.readouterr().err
    assert main(["prune", "--older-than", "soon", "--db", db]) == 1
    assert "--older-than" in capsys.readouterr().err


async def test_the_running_proxy_enforces_retention_days(
    make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str]
) -> None:
    first = await make_proxy(ollama_double[1])
    await fill(first, 6, size=2_000)
    age(first.db, [1, 2, 3, 4])
    await first.server.close()

    proxy = await make_proxy(ollama_double[1], database={"retention_days": 30})
    await eventually(lambda: ids(proxy.db) == [5, 6])  # the first pass runs at start-up
    assert ids(proxy.db) == [5, 6]
    await ollama.AsyncClient(host=proxy.url).chat(
        model="llama3.2", messages=[{"role": "user", "content": "new"}]
    )
    assert [r["id"] for r in await proxy.wait_rows(3)] == [5, 6, 7]
    assert orphans(proxy.db) == 0


async def test_the_running_proxy_enforces_max_size(
    make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str]
) -> None:
    first = await make_proxy(ollama_double[1])
    await fill(first, 60, size=40_000)  # about 2.4 MB of distinct messages
    await first.server.close()
    size_before = file_bytes(first.db)
    assert size_before > 2 * 1024 * 1024

    proxy = await make_proxy(ollama_double[1], database={"max_size_mb": 1})

    def used() -> tuple[int, int]:
        with connect(proxy.db) as conn:
            pages, free, size = conn.execute(
                "SELECT p.page_count, f.freelist_count, s.page_size"
                " FROM pragma_page_count() p, pragma_freelist_count() f, pragma_page_size() s"
            ).fetchone()
        return (pages - free) * size, free

    await eventually(lambda: used()[0] <= 1024 * 1024 and not used()[1])  # trimmed, then vacuumed
    in_use, free_pages = used()
    assert in_use <= 1024 * 1024 and free_pages == 0
    kept = ids(proxy.db)
    assert kept[-1] == 60 and kept == list(range(kept[0], 61)) and len(kept) < 60  # the newest stay
    await proxy.server.close()
    assert file_bytes(proxy.db) < size_before / 2
    assert orphans(proxy.db) == 0
