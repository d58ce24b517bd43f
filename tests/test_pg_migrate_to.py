"""``llm-proxy migrate --to postgresql://…``: a SQLite trail copied whole, resumably, into a real server."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from llm_proxy.audit import pg_import
from llm_proxy.audit.exchange import Exchange
from llm_proxy.audit.pg_store import PostgresStore
from llm_proxy.audit.store import Store
from llm_proxy.cli.main import main

from .postgres import PASSWORD, PostgresServer
from .trail import Trail

SYSTEM = {"role": "system", "content": "You control the lights of this house. " * 40}  # compacted
COMPARED = ("id", "timestamp", "endpoint", "model", "prompt", "response", "status_code", "stream",
            "turn_id", "full_request_body", "request_parts", "tool_calls", "key_name")  # fmt: skip


def spoken(n: int, rounds: int) -> list[Exchange]:
    """One spoken request of ``rounds`` rounds (one turn), as Home Assistant sends them."""
    messages: list[dict[str, Any]] = [SYSTEM, {"role": "user", "content": f"turn on light {n}"}]
    out = []
    for r in range(rounds):
        e = Exchange(endpoint="/api/chat", method="POST", backend_type="ollama", model="llama3.2")
        e.request_body = json.dumps({"model": "llama3.2", "messages": messages}).encode()
        e.prompt, e.response, e.status_code, e.stream = f"light {n}", f"round {r}", 200, r % 2 == 0
        e.client_addr, e.user_agent, e.key_name = "10.0.0.5", "HomeAssistant/2026.11", "ha"
        e.tool_calls = [{"function": {"name": "HassTurnOn", "arguments": {"n": n}}}]
        e.finish()
        out.append(e)
        messages = [*messages, {"role": "assistant", "content": "", "tool_calls": e.tool_calls},
                    {"role": "tool", "content": "ok"}]  # fmt: skip
    return out


async def sqlite_trail(path: Path, turns: int) -> None:
    store = Store(str(path))
    await store.open()
    for n in range(turns):
        await store.insert([e.row() for e in spoken(n, 3)])
    await store.close()


def sqlite_rows(path: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [{c: r[c] for c in COMPARED} for r in conn.execute("SELECT * FROM logs_full ORDER BY id")]
    finally:
        conn.close()


def pg_rows(trail: Trail) -> list[dict[str, Any]]:
    return [{c: r[c] for c in COMPARED} for r in trail.rows()]


async def test_a_trail_is_copied_whole_with_its_ids_turns_and_bodies(
    postgres: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "llm_proxy.db"
    await sqlite_trail(db, 400)  # 1200 rows: three batches
    trail = Trail("postgresql", postgres.database(), tmp_path / "spool.db", postgres)  # a new, empty one
    assert main(["migrate", "--db", str(db), "--to", trail.target]) == 0
    captured = capsys.readouterr()
    assert f"{db}: 1,200 rows" in captured.out
    assert "1,200 rows copied from it (1,200 in this run), 1,200 rows in all" in captured.out
    assert "copying: 1,200/1,200 rows (100%)" in captured.err  # the progress, a line a tenth
    assert PASSWORD not in captured.out + captured.err
    copied = pg_rows(trail)
    assert copied == sqlite_rows(db)  # ids kept, turns, compact bodies whole through logs_full
    assert [r["turn_id"] for r in copied[:6]] == [1, 1, 1, 4, 4, 4]
    # The proxies that write there next take ids after the copied ones, and turns go on.
    store = PostgresStore(trail.target, str(trail.spool))
    await store.open()
    await store.insert([spoken(999, 1)[0].row()])
    await store.close()
    assert trail.rows()[-1]["id"] == 1201
    [(blobs,)] = [tuple(r.values()) for r in trail.query("SELECT count(*) FROM blobs WHERE refs = 1201")]
    assert blobs == 1  # the system prompt, stored once, named by every row


async def test_an_interrupted_copy_carries_on_where_it_stopped(
    postgres: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "llm_proxy.db"
    await sqlite_trail(db, 500)  # 1500 rows
    trail = Trail("postgresql", postgres.database(), tmp_path / "spool.db", postgres)
    calls = []

    def progress(done: int, total: int) -> None:
        calls.append(done)
        if done >= 1000:
            raise KeyboardInterrupt  # Ctrl-C after the second batch committed

    with pytest.raises(KeyboardInterrupt):
        pg_import.copy(str(db), trail.target, progress)
    assert calls == [0, 500, 1000]
    assert len(trail.rows()) == 1000
    assert main(["migrate", "--db", str(db), "--to", trail.target]) == 0
    out = capsys.readouterr().out
    assert "carried on from an earlier run: 1,000 rows were there already" in out
    assert "1,500 rows copied from it (500 in this run), 1,500 rows in all" in out
    assert pg_rows(trail) == sqlite_rows(db)  # none twice, none missing
    assert main(["migrate", "--db", str(db), "--to", trail.target]) == 0  # a third run: nothing to do
    assert "(0 in this run)" in capsys.readouterr().out


async def test_ids_already_taken_are_shifted_with_their_turns(
    postgres: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trail = Trail("postgresql", postgres.database(), tmp_path / "spool.db", postgres)
    store = PostgresStore(trail.target, str(trail.spool))  # a proxy wrote here first
    await store.open()
    await store.insert([e.row() for e in spoken(100, 2)])
    db = tmp_path / "llm_proxy.db"
    await sqlite_trail(db, 2)
    assert main(["migrate", "--db", str(db), "--to", trail.target]) == 0
    assert "copied ids (and turn ids) are the file's plus 2" in capsys.readouterr().out
    await store.insert([spoken(101, 1)[0].row()])  # the proxy goes on writing: after the copied ids
    await store.close()
    rows = trail.rows()
    assert [(r["id"], r["turn_id"]) for r in rows] == [(1, 1), (2, 1), (3, 3), (4, 3), (5, 3), (6, 6), (7, 6),
                                                        (8, 6), (9, 9)]  # fmt: skip
    source = sqlite_rows(db)
    assert [r["prompt"] for r in rows[2:8]] == [r["prompt"] for r in source]


def test_copying_needs_a_file_and_a_postgresql_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["migrate", "--db", str(tmp_path / "none.db"), "--to", "postgresql://u:pw@127.0.0.1:1/x"]) == 1
    )
    assert "no database at" in capsys.readouterr().err
    assert main(["migrate", "--to", "mysql://u:secretpw@h/x"]) == 1
    err = capsys.readouterr().err
    assert "--to wants a postgresql:// URL" in err and "secretpw" not in err
