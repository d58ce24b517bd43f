"""``llm-proxy logs delete``: after it the text is not in the database, its WAL or its search index."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import ollama
import pytest

from . import ha_turn
from .conftest import MakeProxy, read_rows
from .llama_double import LlamaServerDouble
from .ollama_double import OllamaDouble
from .planted import cli, files_of, fts_hits, leaks, rows_of, traffic
from .process import serve


async def test_deleted_text_is_gone_from_every_file_while_the_proxy_runs(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    double = LlamaServerDouble()
    backend = await aiohttp_server(double.app(), host="127.0.0.1")
    async with serve(tmp_path, str(backend.make_url("")).rstrip("/"), backend={"type": "openai"}) as served:
        await traffic(served.url, double)
        # A conversation that stays: its system prompt is a blob of its own.
        client = ollama.AsyncClient(host=served.url)
        kept = [{"role": "system", "content": ha_turn.SYSTEM}, {"role": "user", "content": "kitchen light"}]
        await client.chat(model="smollm2", messages=kept, stream=False)
        rows = await rows_of(served.db, 6)
        db = str(served.db)
        # Without redaction the planted values are in the files: the check below can fail.
        assert any(leaks(data) for data in files_of(served.db).values())
        assert fts_hits(served.db)

        out = cli("logs", "delete", "--db", db, "-q", "zqxj", "--dry-run").decode()
        assert out.startswith("4 exchanges match: ids ")
        assert len(read_rows(served.db, 0)) == 6  # a dry run deletes nothing
        out = cli("logs", "delete", "--db", db, "-q", "zqxj", "--yes").decode()
        assert "deleted 4 exchanges" in out and "WAL emptied" in out, out
        # The refused request has no prompt to search for: by status, after saying no once.
        refused = [r["id"] for r in rows if r["status_code"] == 400]
        out = cli("logs", "delete", "--db", db, "--status", "400", stdin=b"n\n", code=1).decode()
        assert f"1 exchange matches: id {refused[0]}" in out and "nothing deleted" in out
        out = cli("logs", "delete", "--db", db, str(refused[0]), stdin=b"y\n").decode()
        assert "deleted 1 exchanges" in out

        for name, data in files_of(served.db).items():
            assert leaks(data) == [], name
        assert fts_hits(served.db) == []
        # What was not deleted is whole, and the proxy goes on recording.
        left = read_rows(served.db, 0)
        assert [r["prompt"] for r in left] == ["kitchen light"]
        body = cli("logs", "show", str(left[0]["id"]), "--request", "--db", db)
        assert ha_turn.SYSTEM.encode() in body.replace(b"\\n", b"\n")
        await client.chat(model="smollm2", messages=kept, stream=False)
        assert len(await rows_of(served.db, 2)) == 2
        assert await served.stop() == 0
    for name, data in files_of(served.db).items():
        assert leaks(data) == [], name
    with closing(sqlite3.connect(served.db)) as conn:
        # Only the kept conversation's pieces are left, each used by its rows.
        assert conn.execute("SELECT COUNT(*) FROM blobs WHERE refs <= 0").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] > 0


async def test_selection_by_key_model_turn_and_age(
    make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str]
) -> None:
    keys = [{"name": "ha", "key": "k-ha"}, {"name": "laptop", "key": "k-laptop"}]
    proxy = await make_proxy(ollama_double[1], auth={"keys": keys}, models={"mappings": {"qwen": "llama3.2"}})
    for key, model in (("k-ha", "llama3.2"), ("k-laptop", "llama3.2"), ("k-laptop", "qwen")):
        client = ollama.AsyncClient(host=proxy.url, headers={"Authorization": f"Bearer {key}"})
        await client.generate(model=model, prompt=f"hello from {key}", stream=False)
    await rows_of(proxy.db, 3)
    db = str(proxy.db)
    assert "no exchange matches" in cli("logs", "delete", "--db", db, "--older-than", "1d", "--yes").decode()
    with closing(sqlite3.connect(proxy.db)) as conn, conn:  # one exchange from last year
        conn.execute("UPDATE logs SET timestamp = '2025-06-01T12:00:00.000Z' WHERE id = 1")
    out = cli("logs", "delete", "--db", db, "--older-than", "30d", "--yes").decode()
    assert (
        out.startswith("1 exchange matches: id 1, 2025-06-01T12:00:00.000Z") and "deleted 1 exchanges" in out
    )
    ha = ollama.AsyncClient(host=proxy.url, headers={"Authorization": "Bearer k-ha"})
    await ha.generate(model="llama3.2", prompt="hello again", stream=False)  # ha's row, in place of it
    await rows_of(proxy.db, 3)
    out = cli("logs", "delete", "--db", db, "--key", "laptop", "--model", "qwen", "--yes").decode()
    assert "deleted 1 exchanges" in out
    assert [r["key_name"] for r in read_rows(proxy.db, 0)] == ["laptop", "ha"]
    cli("logs", "delete", "--db", db, "--key", "laptop", "--yes")
    assert [r["key_name"] for r in read_rows(proxy.db, 0)] == ["ha"]
    # Nothing selected is refused, and so is an answer that never comes.
    err = cli("logs", "delete", "--db", db, code=1)
    assert err == b""
    cli("logs", "delete", "--db", db, "--key", "ha", stdin=b"", code=1)
    assert len(read_rows(proxy.db, 0)) == 1


async def test_a_turn_goes_whole(make_proxy: MakeProxy, aiohttp_server: Any) -> None:
    double = LlamaServerDouble()
    backend = await aiohttp_server(double.app(), host="127.0.0.1")
    proxy = await make_proxy(str(backend.make_url("")).rstrip("/"), "openai")
    capture = ha_turn.Capture()
    client = ha_turn.client(proxy.url, capture)
    messages = ha_turn.start_messages()
    await ha_turn.spoken_request(client, double, messages, "turn on the kitchen light", 3)
    await ha_turn.spoken_request(client, double, messages, "and the garage", 2)
    rows = await rows_of(proxy.db, 5)
    turn, other = rows[0]["turn_id"], rows[3]["id"]
    assert [r["turn_id"] for r in rows] == [turn, turn, turn, other, other]
    out = cli("logs", "delete", "--db", str(proxy.db), "--turn", str(turn), "--yes").decode()
    assert out.startswith(f"3 exchanges match: ids {turn} to {turn + 2}")
    assert [r["turn_id"] for r in read_rows(proxy.db, 0)] == [other, other]
    with closing(sqlite3.connect(proxy.db)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM blobs WHERE refs <= 0").fetchone()[0] == 0


def test_on_a_postgresql_trail_it_says_what_to_do_and_shows_no_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from llm_proxy.cli.main import main

    url = "postgresql://u:sekrit@127.0.0.1:1/x"
    assert main(["logs", "delete", "--db", url, "--model", "m", "--yes"]) == 1
    err = capsys.readouterr().err
    assert "works on SQLite files" in err and "DELETE FROM logs" in err
    assert "sekrit" not in err and "postgresql://u:***@127.0.0.1:1/x" in err
