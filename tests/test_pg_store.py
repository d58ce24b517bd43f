"""The PostgreSQL store against a real server: the same schema, several writers, an outage, secrets.

The server is Debian's PostgreSQL, started by tests/postgres.py as an
unprivileged user on a free 127.0.0.1 port. Tests that stop it start it again.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from llm_proxy.audit.exchange import Exchange
from llm_proxy.audit.migrate import available, migrate, migrations_dir
from llm_proxy.audit.pg_store import PostgresStore
from llm_proxy.audit.recorder import Recorder

from .postgres import PASSWORD, PostgresServer
from .trail import Trail

ROOT = Path(__file__).resolve().parent.parent


def chat(n: int, messages: list[dict[str, Any]], client: str = "10.0.0.7") -> Exchange:
    e = Exchange(endpoint="/api/chat", method="POST", backend_type="ollama", model="llama3.2")
    e.request_body = json.dumps({"model": "llama3.2", "messages": messages}).encode()
    e.prompt, e.response, e.status_code = f"prompt {n}", f"answer {n}", 200
    e.client_addr, e.user_agent = client, "HomeAssistant/2026.11"
    e.finish()
    return e


def say(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "You control the house."}, {"role": "user", "content": text}]


def pg_trail(postgres: PostgresServer, migrated: str, tmp_path: Path) -> Trail:
    return Trail("postgresql", postgres.database(migrated), tmp_path / "spool.db", postgres)


async def wait_for(check: Any, within: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        assert loop.time() < deadline, "not in time"
        await asyncio.sleep(0.05)


def test_both_dialects_have_the_same_migrations_and_columns(postgres: PostgresServer, tmp_path: Path) -> None:
    """A column added to one dialect is added to the other under the same number (CONTRIBUTING.md)."""
    stray = sorted(p.name for p in (ROOT / "migrations").glob("*.sql"))
    assert not stray, f"move {stray} to migrations/sqlite/ and add each one's twin to migrations/postgresql/"
    names = [p.name for p in available(migrations_dir("sqlite"))]
    assert names == [p.name for p in available(migrations_dir("postgresql"))]
    migrate(str(tmp_path / "audit.db"))
    with sqlite3.connect(tmp_path / "audit.db") as conn:
        sqlite_columns = [r[1] for r in conn.execute("PRAGMA table_info(logs)")]
        sqlite_full = [r[1] for r in conn.execute("PRAGMA table_info(logs_full)")]
    url = postgres.database()

    async def columns() -> tuple[list[str], list[str], list[str]]:
        store = PostgresStore(url, str(tmp_path / "spool.db"))
        applied = await store.open()
        await store.close()
        conn = await asyncpg.connect(url)
        try:
            sql = (
                "SELECT column_name FROM information_schema.columns WHERE table_name = $1 "
                "ORDER BY ordinal_position"
            )
            return (
                applied,
                [r[0] for r in await conn.fetch(sql, "logs")],
                [r[0] for r in await conn.fetch(sql, "logs_full")],
            )
        finally:
            await conn.close()

    applied, pg_columns, pg_full = asyncio.run(columns())
    assert applied == names
    assert pg_columns == sqlite_columns
    assert pg_full == sqlite_full  # the view is made again after the migrations: every column


async def test_several_writers_share_ids_and_turns(
    postgres: PostgresServer, migrated: str, tmp_path: Path
) -> None:
    """Two stores (two proxies) write at once: ids unique, no row lost, a turn spans both."""
    trail = pg_trail(postgres, migrated, tmp_path)
    a = PostgresStore(trail.target, str(tmp_path / "a.db"))
    b = PostgresStore(trail.target, str(tmp_path / "b.db"))
    await a.open()
    await b.open()
    try:

        async def write(store: PostgresStore, tag: str) -> None:
            for batch in range(10):
                rows = [chat(i, say(f"{tag} {batch} {i}"), client=f"{tag}-{i}").row() for i in range(20)]
                await store.insert(rows)

        await asyncio.gather(write(a, "a"), write(b, "b"))
        # One spoken request: round 1 through proxy a, round 2 (the tool's answer) through proxy b.
        first = say("turn on the kitchen light")
        call = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "HassTurnOn"}}]}
        second = [*first, call, {"role": "tool", "content": "done"}]
        await a.insert([chat(1, first, client="10.0.0.9").row()])
        await b.insert([chat(2, second, client="10.0.0.9").row()])
        await a.insert([chat(3, say("and now the heating"), client="10.0.0.9").row()])  # a new turn
    finally:
        await a.close()
        await b.close()
    rows = trail.rows()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 403
    assert sorted(r["prompt"] for r in rows[:400]) == sorted(
        f"prompt {i}" for i in range(20) for _ in range(20)
    )
    one, two, three = rows[-3:]
    assert one["turn_id"] == two["turn_id"] == one["id"]
    assert three["turn_id"] == three["id"] != one["id"]


async def test_an_outage_spools_rows_and_sends_them_in_order(
    postgres: PostgresServer, migrated: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trail = pg_trail(postgres, migrated, tmp_path)
    store = PostgresStore(trail.target, str(trail.spool))
    await store.open()
    recorder = Recorder(store, limit=100)
    recorder.start()
    try:
        for n in range(3):
            recorder.submit(chat(n, say(f"before {n}")))
        await wait_for(lambda: asyncio.to_thread(lambda: len(trail.rows()) == 3))
        postgres.stop()
        try:
            for n in range(3, 8):
                recorder.submit(chat(n, say(f"during {n}")))
            await wait_for(lambda: _true(store.spool.count == 5))
            assert await store.writable() is None  # every row is kept…
            note = store.degraded()  # …and /health/ready says where
            assert note is not None and note.startswith("spooling: PostgreSQL postgresql://llmproxy:***@")
            assert "5 rows wait in" in note and str(trail.spool) in note
            with sqlite3.connect(trail.spool) as conn:
                assert conn.execute("SELECT count(*) FROM spool").fetchone()[0] == 5
        finally:
            postgres.start()
        for n in range(8, 10):
            recorder.submit(chat(n, say(f"after {n}")))
        await wait_for(lambda: asyncio.to_thread(lambda: len(trail.rows()) == 10), within=30)
        assert store.degraded() is None
    finally:
        await recorder.close()
        await store.close()
    rows = trail.rows()
    assert [r["prompt"] for r in rows] == [f"prompt {n}" for n in range(10)]  # in order, once each
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    assert PASSWORD not in caplog.text and "does not take writes" in caplog.text


async def test_rows_spooled_when_the_proxy_stops_are_sent_by_the_next_start(
    postgres: PostgresServer, migrated: str, tmp_path: Path
) -> None:
    trail = pg_trail(postgres, migrated, tmp_path)
    store = PostgresStore(trail.target, str(trail.spool))
    await store.open()
    postgres.stop()
    try:
        await store.insert([chat(n, say(f"q {n}")).row() for n in range(4)])
        await store.close()  # the proxy stops while the server is down
        with sqlite3.connect(trail.spool) as conn:
            assert conn.execute("SELECT count(*) FROM spool").fetchone()[0] == 4
    finally:
        postgres.start()
    again = PostgresStore(trail.target, str(trail.spool))
    await again.open()
    try:
        await wait_for(lambda: asyncio.to_thread(lambda: len(trail.rows()) == 4))
        await wait_for(lambda: _true(again.spool.count == 0))
    finally:
        await again.close()
    assert [r["prompt"] for r in trail.rows()] == [f"prompt {n}" for n in range(4)]
    with sqlite3.connect(trail.spool) as conn:
        assert conn.execute("SELECT count(*) FROM spool").fetchone()[0] == 0


async def test_a_spooled_row_already_sent_is_not_sent_twice(
    postgres: PostgresServer, migrated: str, tmp_path: Path
) -> None:
    """Two proxies sharing one spool file, or a crash between PostgreSQL's commit and the spool's."""
    trail = pg_trail(postgres, migrated, tmp_path)
    store = PostgresStore(trail.target, str(trail.spool))
    await store.open()
    postgres.stop()
    try:
        await store.insert([chat(n, say(f"q {n}")).row() for n in range(3)])
        await store.close()
    finally:
        postgres.start()
    with sqlite3.connect(trail.spool) as conn:
        copy = conn.execute("SELECT key, row FROM spool ORDER BY seq").fetchall()
    first = PostgresStore(trail.target, str(trail.spool))
    await first.open()
    await wait_for(lambda: _true(first.spool.count == 0))
    await first.close()
    with sqlite3.connect(trail.spool) as conn:  # the same rows again, as if never deleted
        conn.executemany("INSERT INTO spool (key, row) VALUES (?, ?)", copy)
    second = PostgresStore(trail.target, str(trail.spool))
    await second.open()
    await wait_for(lambda: _true(second.spool.count == 0))
    await second.close()
    assert [r["prompt"] for r in trail.rows()] == ["prompt 0", "prompt 1", "prompt 2"]


async def _true(value: bool) -> bool:
    return value


def run_cli(
    *args: str, env: dict[str, str] | None = None, code: str | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    environment.pop("LLM_PROXY_CONFIG", None)
    command = ["-c", code] if code else ["-m", "llm_proxy"]
    return subprocess.run(
        [sys.executable, *command, *args], capture_output=True, text=True, timeout=60, env=environment
    )


def test_without_asyncpg_the_error_names_the_extra(tmp_path: Path, postgres: PostgresServer) -> None:
    hide = "import sys; sys.modules['asyncpg'] = None; from llm_proxy.cli.main import main; sys.exit(main())"
    config = tmp_path / "config.yaml"
    config.write_text(f"database:\n  url: {postgres.url()}\nserver:\n  port: 0\n")
    done = run_cli("serve", "--config", str(config), code=hide)
    assert done.returncode == 1
    assert "pip install 'llm-proxy[postgresql]'" in done.stderr
    assert PASSWORD not in done.stderr + done.stdout


def test_a_wrong_password_is_one_masked_line(tmp_path: Path, postgres: PostgresServer) -> None:
    wrong = postgres.url().replace(PASSWORD, "not-the-" + PASSWORD)
    done = run_cli("serve", "--port", "0", env={"LLM_PROXY_DATABASE_URL": wrong})
    assert done.returncode == 1, done.stderr
    assert "password authentication failed" in done.stderr
    assert "postgresql://llmproxy:***@127.0.0.1" in done.stderr
    assert PASSWORD not in done.stderr + done.stdout


def test_a_bad_url_is_a_config_error_without_the_password() -> None:
    done = run_cli("logs", env={"LLM_PROXY_DATABASE_URL": f"mysql://root:{PASSWORD}@db/x"})
    assert done.returncode == 2
    assert "database.url' must be a postgresql:// URL" in done.stderr and PASSWORD not in done.stderr


async def test_prune_and_migrate_commands_on_postgresql(
    postgres: PostgresServer, migrated: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llm_proxy.cli.main import main

    trail = pg_trail(postgres, migrated, tmp_path)
    store = PostgresStore(trail.target, str(trail.spool))
    await store.open()
    old = [chat(n, say(f"old {n}")) for n in range(250)]  # more than one delete batch
    for e in old:
        e.started -= 40 * 86400
    await store.insert([e.row() for e in old] + [chat(n, say(f"new {n}")).row() for n in range(3)])
    await store.close()
    assert main(["prune", "--db", trail.target, "--older-than", "30d", "--dry-run"]) == 0
    assert "would delete 250 exchanges" in capsys.readouterr().out
    assert main(["prune", "--db", trail.target, "--older-than", "30d"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("deleted 250 exchanges; postgresql://llmproxy:***@") and PASSWORD not in out
    assert [r["prompt"] for r in trail.rows()] == ["prompt 0", "prompt 1", "prompt 2"]
    assert main(["prune", "--db", trail.target, "--max-size-mb", "10"]) == 1
    assert "--max-size-mb applies to a SQLite file only" in capsys.readouterr().err
    assert main(["migrate", "--db", trail.target]) == 0
    assert capsys.readouterr().out.strip().endswith("is up to date")
    fresh = postgres.database()
    assert main(["migrate", "--db", fresh]) == 0
    assert "applied 0001_logs.sql" in capsys.readouterr().out
    assert main(["logs", "--db", postgres.url("nothing_here")]) == 1
    err = capsys.readouterr().err
    assert "cannot connect to postgresql://llmproxy:***@127.0.0.1" in err and PASSWORD not in err


async def test_the_running_proxys_retention_deletes_old_rows_in_postgresql(
    postgres: PostgresServer, migrated: str, tmp_path: Path
) -> None:
    from llm_proxy.audit.retention import Retention
    from llm_proxy.config import DatabaseConfig

    trail = pg_trail(postgres, migrated, tmp_path)
    store = PostgresStore(trail.target, str(trail.spool))
    await store.open()
    try:
        old = [chat(n, say(f"old {n}")) for n in range(450)]
        for e in old:
            e.started -= 10 * 86400
        await store.insert([e.row() for e in old] + [chat(9, say("new")).row()])
        assert await Retention(store, DatabaseConfig(retention_days=7)).once() == 450
    finally:
        await store.close()
    assert [r["prompt"] for r in trail.rows()] == ["prompt 9"]


async def test_proxies_starting_together_migrate_a_new_database_once(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    from llm_proxy.audit import pg_migrate

    url = postgres.database()
    conns = [await asyncpg.connect(url) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(pg_migrate.migrate(c) for c in conns))
        names = [p.name for p in available(migrations_dir("postgresql"))]
        # Each migration applied by one of them (whichever took its lock first), once.
        assert sorted(name for found in applied for name in found) == names
        recorded = await conns[0].fetch("SELECT name FROM _migrations ORDER BY name")
        assert [r[0] for r in recorded] == names
    finally:
        for c in conns:
            await c.close()


def test_the_spool_defaults_to_the_folder_of_database_path(tmp_path: Path) -> None:
    from llm_proxy.audit.stores import spool_path
    from llm_proxy.config import from_dict

    config = from_dict({"database": {"path": "/var/lib/llm-proxy/llm_proxy.db", "url": "postgresql://h/db"}})
    assert spool_path(config) == "/var/lib/llm-proxy/llm_proxy-spool.db"
    chosen = from_dict({"database": {"url": "postgresql://h/db", "spool": str(tmp_path / "s.db")}})
    assert spool_path(chosen) == str(tmp_path / "s.db")


async def test_a_spool_that_cannot_be_opened_is_one_clear_error(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    from llm_proxy.errors import AuditError

    store = PostgresStore(postgres.database(), str(tmp_path / "missing" / "spool.db"))
    with pytest.raises(AuditError, match=r"cannot open the spool .*missing/spool.db \(database.spool\)"):
        await store.open()


async def test_a_proxy_starts_while_the_server_is_down_and_catches_up(
    postgres: PostgresServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Down at start-up (not a refusal): the proxy serves, spools, migrates once it answers."""
    trail = Trail("postgresql", postgres.database(), tmp_path / "spool.db", postgres)  # never migrated
    store = PostgresStore(trail.target, str(trail.spool))
    postgres.stop()
    try:
        assert await store.open() == []
        await store.insert([chat(n, say(f"q {n}")).row() for n in range(3)])
        assert store.spool.count == 3
        assert (store.degraded() or "").startswith("spooling: PostgreSQL")
    finally:
        postgres.start()
    try:
        await wait_for(lambda: _true(store.spool.count == 0 and store.degraded() is None), within=30)
    finally:
        await store.close()
    assert [r["prompt"] for r in trail.rows()] == ["prompt 0", "prompt 1", "prompt 2"]
    assert "answers again (applied 0001_logs.sql" in caplog.text


async def test_rows_someone_inserted_with_their_own_ids_do_not_stop_the_writer(
    postgres: PostgresServer, migrated: str, tmp_path: Path
) -> None:
    trail = pg_trail(postgres, migrated, tmp_path)
    store = PostgresStore(trail.target, str(trail.spool))
    await store.open()
    try:
        await store.insert([chat(0, say("first")).row()])
        postgres.psql(  # a user's own rows, ids chosen by hand, ahead of the sequence
            "INSERT INTO logs (id, timestamp, endpoint, method) "
            "SELECT g, now(), '/by/hand', 'GET' FROM generate_series(2, 40) AS g",
            trail.target.rpartition("/")[2],
        )
        await store.insert([chat(n, say(f"q {n}")).row() for n in range(1, 11)])
    finally:
        await store.close()
    rows = trail.rows()
    assert [r["prompt"] for r in rows if r["endpoint"] == "/api/chat"] == [f"prompt {n}" for n in range(11)]
    assert [r["id"] for r in rows][-10:] == list(range(41, 51))


async def test_the_spool_and_the_server_hold_rows_redacted(
    postgres: PostgresServer, migrated: str, tmp_path: Path
) -> None:
    """database.redact covers PostgreSQL's rows and the spool file that waits for the server."""
    from llm_proxy.audit.redact import build

    secret = "anna.berg@example.org"
    trail = pg_trail(postgres, migrated, tmp_path)
    store = PostgresStore(trail.target, str(trail.spool), redactor=build(["email"]))
    await store.open()
    try:
        await store.insert([chat(0, say(f"write to {secret}")).row()])  # the server is up
        postgres.stop()
        try:
            await store.insert([chat(1, say(f"and to {secret} again")).row()])  # to the spool
            # The file, its WAL and its -shm: the row is there, its secret is not.
            spooled = b"".join(p.read_bytes() for p in trail.spool.parent.glob(trail.spool.name + "*"))
            assert b"[redacted:email]" in spooled and secret.encode() not in spooled
        finally:
            postgres.start()
        await wait_for(lambda: asyncio.to_thread(lambda: len(trail.rows()) == 2))
    finally:
        await store.close()
    bodies = json.dumps(trail.rows())
    assert secret not in bodies and bodies.count("[redacted:email]") >= 2
