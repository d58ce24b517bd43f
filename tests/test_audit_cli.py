"""``llm-proxy logs`` / ``logs show`` / ``logs export`` / ``stats``, on databases the real proxy wrote."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import ollama
import orjson
import pytest

from llm_proxy.audit.compact import blob_names
from llm_proxy.audit.migrate import available, migrate, migrations_dir
from llm_proxy.cli.main import main

from . import ha_turn
from .conftest import MakeProxy, Proxy
from .llama_double import LlamaServerDouble
from .ollama_double import OllamaDouble

ROOT = Path(__file__).resolve().parent.parent


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI in-process, as a user would call it; returns (exit code, stdout, stderr)."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_process(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """The CLI as a separate process (``python -m llm_proxy``), stdout as bytes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LLM_PROXY_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "llm_proxy", *args], capture_output=True, timeout=60, cwd=cwd, env=env
    )


def json_ids(capsys: pytest.CaptureFixture[str], db: Path | str, *args: str) -> list[int]:
    code, out, err = run(capsys, "logs", "--db", str(db), "--json", *args)
    assert code == 0, err
    return [json.loads(line)["id"] for line in out.splitlines()]


def say(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def test_logs_filters_and_formats(
    trail_proxy: Proxy, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = trail_proxy
    monkeypatch.setenv("COLUMNS", "200")  # the table fits the terminal; make it a wide one
    c = ollama.AsyncClient(host=proxy.url)
    await c.chat(model="llama2", messages=say("Turn on the kitchen light"))
    await c.generate(model="llama3.2", prompt="Why is the grass green?")
    with pytest.raises(ollama.ResponseError):
        await c.chat(model="nope", messages=say("anyone there?"))
    await c.embed(model="nomic-embed-text", input="embed me")
    await proxy.wait_rows(4)
    db = proxy.target

    assert json_ids(capsys, db) == [4, 3, 2, 1]  # newest first
    assert json_ids(capsys, db, "-n", "2") == [4, 3]
    assert json_ids(capsys, db, "--model", "llama2") == [1]
    assert json_ids(capsys, db, "-m", "llama3.2") == [2, 1]  # the backend's name matches too
    assert json_ids(capsys, db, "--endpoint", "generate") == [2]
    assert json_ids(capsys, db, "--endpoint", "/api/embed") == [4]
    assert json_ids(capsys, db, "--status", "404") == [3]
    assert json_ids(capsys, db, "--status", "4xx") == [3]
    assert json_ids(capsys, db, "--status", "200") == [4, 2, 1]
    assert json_ids(capsys, db, "--errors") == [3]
    assert json_ids(capsys, db, "--since", "1h") == [4, 3, 2, 1]
    assert json_ids(capsys, db, "--until", "1h") == []
    assert json_ids(capsys, db, "--since", "2999-01-01") == []
    assert json_ids(capsys, db, "--until", "2999-01-01T00:00:00Z") == [4, 3, 2, 1]

    code, out, _ = run(capsys, "logs", "--db", str(db), "--json", "-n", "1", "--model", "llama2")
    row = json.loads(out)
    assert row["prompt"] == "Turn on the kitchen light" and row["response"] == "The sky is blue."
    assert json.loads(row["request_body"])["messages"] == say("Turn on the kitchen light")
    assert row["prompt_tokens"] == 26 and row["completion_tokens"] == 5
    assert "request_parts" not in row and "backend_request_parts" not in row

    code, out, _ = run(capsys, "logs", "--db", str(db))
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:2] == ["ID", "TIME"] and len(lines) == 5
    assert "Turn on the kitchen light → The sky is blue." in out
    assert "model 'nope' not found" in lines[2]

    monkeypatch.setenv("COLUMNS", "105")
    code, out, _ = run(capsys, "logs", "--db", str(db))
    assert all(len(line) <= 105 for line in out.splitlines())
    assert out.splitlines()[-1].endswith("Turn on the kitchen ligh…")

    code, out, _ = run(capsys, "logs", "--db", str(db), "--full", "--errors")
    assert "error:\nmodel 'nope' not found" in out and "prompt:\nanyone there?" in out

    for bad, message in ((("--status", "abc"), "--status wants"), (("--since", "yesterday"), "neither")):
        code, _, err = run(capsys, "logs", "--db", str(db), *bad)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1


async def test_full_text_search(trail_proxy: Proxy, capsys: pytest.CaptureFixture[str]) -> None:
    proxy = trail_proxy
    c = ollama.AsyncClient(host=proxy.url)
    await c.chat(model="llama2", messages=say("Turn on the kitchen light"))
    await c.chat(model="llama2", messages=say("Is the kitchen window open? The kitchen, the kitchen!"))
    await c.generate(model="llama3.2", prompt="What is the weather tomorrow")
    await proxy.wait_rows(3)
    db = proxy.target

    assert json_ids(capsys, db, "-q", "kitchen") == [2, 1]  # ranked: more mentions first
    assert json_ids(capsys, db, "-q", "kitchen light") == [1]  # every word must match
    assert json_ids(capsys, db, "-q", "kitchen-light") == [1]  # no FTS syntax error
    assert json_ids(capsys, db, "-q", "garage") == []
    assert sorted(json_ids(capsys, db, "-q", "sky")) == [1, 2, 3]  # answers are searched too
    assert json_ids(capsys, db, "-q", "kitchen", "--endpoint", "generate") == []
    assert json_ids(capsys, db, "-q", "weather", "--model", "llama3.2") == [3]
    code, out, _ = run(capsys, "logs", "--db", str(db), "-q", "window")
    assert code == 0 and "Is the kitchen window open?" in out


async def test_turns_show_and_compact_storage(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Home Assistant's ten-round tool loop: one turn, exact bytes back, ≤ 25 % of the bytes stored."""
    double = llama_double[0]
    capture = ha_turn.Capture()
    ha = ha_turn.client(oproxy.url, capture)
    messages = ha_turn.start_messages()
    await ha_turn.spoken_request(ha, double, messages, "Turn on the kitchen light", rounds=10)
    other = ha_turn.Capture()  # another client meanwhile: a turn of its own
    await ha_turn.client(oproxy.url, other, agent="other-client/1.0").chat(
        model="smollm2", messages=say("hello")
    )
    await ha_turn.spoken_request(ha, double, messages, "And the hallway light", rounds=2)
    rows = await oproxy.wait_rows(13)
    assert [r["turn_id"] for r in rows] == [1] * 10 + [11] + [12] * 2

    assert json_ids(capsys, oproxy.db, "--turn", "1") == list(range(1, 11))  # in order
    assert json_ids(capsys, oproxy.db, "--turn", "12") == [12, 13]

    ha_ids = [*range(1, 11), 12, 13]
    for row_id, sent in zip(ha_ids, capture.bodies, strict=True):
        shown = run_process(
            "logs", "show", str(row_id), "--request", "--db", str(oproxy.db), cwd=oproxy.db.parent
        )
        assert shown.returncode == 0 and shown.stdout == sent  # byte for byte
    chat_requests = [body for path, body in double.requests if path == "/v1/chat/completions"]
    code, out, _ = run(capsys, "logs", "show", "10", "--backend-request", "--db", str(oproxy.db))
    assert orjson.loads(out) == chat_requests[9]

    # Stored compactly, yet plain SQL gets the request back through the logs_full view.
    conn = sqlite3.connect(oproxy.db)
    stored = conn.execute(
        "SELECT request_body, request_parts FROM logs WHERE turn_id = 1 ORDER BY id"
    ).fetchall()
    assert all(body is None and parts for body, parts in stored)
    full = [
        r[0] for r in conn.execute("SELECT full_request_body FROM logs_full WHERE turn_id = 1 ORDER BY id")
    ]
    assert [f.encode() for f in full] == capture.bodies[:10]
    names = {name for _, parts in stored for name in blob_names(parts)}
    blob_bytes = sum(
        len(conn.execute("SELECT data FROM blobs WHERE hash = ?", (n,)).fetchone()[0]) for n in names
    )
    compact = blob_bytes + sum(len(parts) for _, parts in stored)
    whole = sum(len(b) for b in capture.bodies[:10])
    assert compact <= 0.25 * whole, (compact, whole)
    conn.close()

    code, out, _ = run(capsys, "logs", "show", "1", "--db", str(oproxy.db))
    assert code == 0
    for part in ("--- client request ---", "--- backend request ---", "--- tool calls ---", '"HassTurnOn"'):
        assert part in out
    assert "turn:       1  (llm-proxy logs --turn 1)" in out and "latency" in out
    assert f"prompt {rows[0]['prompt_tokens']}, completion {rows[0]['completion_tokens']}" in out
    code, out, _ = run(capsys, "logs", "show", "1", "--json", "--db", str(oproxy.db))
    assert json.loads(out)["request_body"].encode() == capture.bodies[0]
    code, out, _ = run(capsys, "logs", "--db", str(oproxy.db), "show", "11", "--json")  # --db before show
    assert code == 0 and json.loads(out)["user_agent"] == "other-client/1.0"
    code, _, err = run(capsys, "logs", "show", "99", "--db", str(oproxy.db))
    assert code == 1 and err.strip() == "llm-proxy: no exchange with id 99"


async def test_stats_against_known_exchanges(trail_proxy: Proxy, capsys: pytest.CaptureFixture[str]) -> None:
    proxy = trail_proxy
    c = ollama.AsyncClient(host=proxy.url)
    for i in range(4):
        if i % 2:
            await c.chat(model="llama2", messages=say(f"question {i}"))
        else:
            async for _ in await c.chat(model="llama2", messages=say(f"question {i}"), stream=True):
                pass
    await c.generate(model="llama3.2", prompt="Why?")
    with pytest.raises(ollama.ResponseError):
        await c.chat(model="nope", messages=say("hi"))
    rows = await proxy.wait_rows(6)
    assert len(rows) == 6

    code, out, _ = run(capsys, "stats", "--db", str(proxy.target), "--json")
    assert code == 0
    result = json.loads(out)
    by_model = {s["model"]: s for s in result["by_model"]}
    by_endpoint = {s["endpoint"]: s for s in result["by_endpoint"]}
    assert set(by_model) == {"llama2", "llama3.2", "nope"}
    llama2 = by_model["llama2"]
    assert (llama2["requests"], llama2["errors"]) == (4, 0)
    assert (llama2["prompt_tokens"], llama2["completion_tokens"]) == (4 * 26, 4 * 5)
    latencies = sorted(r["latency_ms"] for r in rows if r["model"] == "llama2")
    ttfts = sorted(r["ttft_ms"] for r in rows if r["model"] == "llama2")

    def rank(values: list[int], p: float) -> int:
        return values[math.ceil(p / 100 * len(values)) - 1]

    assert llama2["latency_ms_p50"] == rank(latencies, 50) == latencies[1]
    assert llama2["latency_ms_p95"] == llama2["latency_ms_p99"] == latencies[3]
    assert (llama2["ttft_ms_p50"], llama2["ttft_ms_p95"]) == (rank(ttfts, 50), rank(ttfts, 95))
    timed = [r for r in rows if r["model"] == "llama2" and r["latency_ms"]]
    ms = sum(r["latency_ms"] for r in timed)
    expected_rate = round(sum(r["completion_tokens"] for r in timed) * 1000 / ms, 1) if ms else None
    assert llama2["tokens_per_s"] == expected_rate
    assert (by_model["nope"]["requests"], by_model["nope"]["errors"]) == (1, 1)
    assert by_model["nope"]["completion_tokens"] == 0
    assert (by_endpoint["/api/chat"]["requests"], by_endpoint["/api/chat"]["errors"]) == (5, 1)
    assert by_endpoint["/api/generate"]["requests"] == 1

    code, out, _ = run(capsys, "stats", "--db", str(proxy.target), "--json", "--since", "2999-01-01")
    assert json.loads(out)["by_model"] == [] and json.loads(out)["since"] == "2999-01-01T00:00:00.000Z"
    code, out, _ = run(capsys, "stats", "--db", str(proxy.target), "--model", "llama2")
    assert code == 0 and "llama2" in out and "/api/chat" in out and "nope" not in out


async def test_export_jsonl_and_csv(
    trail_oproxy: Proxy, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    oproxy = trail_oproxy
    c = ollama.AsyncClient(host=oproxy.url)
    big = "A long system prompt. " * 100  # big enough to be stored compactly
    for i in range(3):
        await c.chat(model="smollm2", messages=[{"role": "system", "content": big}, *say(f"q{i}")])
    await c.generate(model="smollm2", prompt="once upon a time")
    await oproxy.wait_rows(4)
    out_file = tmp_path / "all.jsonl"
    code, _, err = run(capsys, "logs", "export", "--db", str(oproxy.target), "-o", str(out_file))
    assert code == 0 and "exported 4 exchanges" in err
    exported = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["id"] for r in exported] == [1, 2, 3, 4]  # oldest first
    for r in exported:
        code, shown, _ = run(capsys, "logs", "show", str(r["id"]), "--json", "--db", str(oproxy.target))
        assert json.loads(shown) == r  # complete, bodies reassembled
    assert json.loads(exported[0]["request_body"])["messages"][0]["content"] == big
    assert json.loads(exported[0]["backend_request"])["messages"][0]["content"] == big

    code, out, _ = run(
        capsys, "logs", "export", "--db", str(oproxy.target), "--format", "csv", "--endpoint", "chat"
    )
    table = list(csv.reader(io.StringIO(out)))
    assert table[0][:3] == ["id", "timestamp", "endpoint"] and "request_parts" not in table[0]
    assert [row[0] for row in table[1:]] == ["1", "2", "3"]
    body = table[1][table[0].index("request_body")]
    assert json.loads(body)["messages"][1]["content"] == "q0"


async def test_metadata_mode_stores_no_text(
    make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str], capsys: pytest.CaptureFixture[str]
) -> None:
    proxy = await make_proxy(ollama_double[1], database={"store_bodies": "metadata"})
    secrets = {"Authorization": "Bearer sk-secret-1", "Cookie": "session=cookie-secret-2",
               "X-API-Key": "key-secret-3"}  # fmt: skip
    c = ollama.AsyncClient(host=proxy.url, headers=secrets)
    await c.chat(model="llama3.2", messages=say("my private diary entry " * 80))
    await c.generate(model="llama3.2", prompt="another private thought", stream=False)
    rows = await proxy.wait_rows(2)
    for row in rows:
        for column in ("prompt", "response", "request_body", "backend_request", "response_body", "thinking"):
            assert row[column] is None, column
        assert row["status_code"] == 200 and row["latency_ms"] is not None
        assert (row["prompt_tokens"], row["completion_tokens"]) == (26, 5)
        assert row["model"] == "llama3.2"
    conn = sqlite3.connect(proxy.db)
    dump = "\n".join(conn.iterdump())
    conn.close()
    for secret in ("private", "sky is blue", "sk-secret-1", "cookie-secret-2", "key-secret-3"):
        assert secret not in dump
    code, out, _ = run(capsys, "logs", "--db", str(proxy.db))
    assert code == 0 and "llama3.2" in out


async def test_headers_are_never_stored(proxy: Proxy) -> None:
    secrets = {"Authorization": "Bearer sk-secret-1", "Cookie": "session=cookie-secret-2",
               "X-API-Key": "key-secret-3"}  # fmt: skip
    c = ollama.AsyncClient(host=proxy.url, headers=secrets)
    await c.chat(model="llama2", messages=say("hello"))
    rows = await proxy.wait_rows(1)
    assert rows[0]["prompt"] == "hello"  # full mode keeps the text
    conn = sqlite3.connect(proxy.db)
    dump = "\n".join(conn.iterdump())
    conn.close()
    assert not any(s in dump for s in ("sk-secret-1", "cookie-secret-2", "key-secret-3"))


@pytest.mark.parametrize(
    "command",
    [["logs"], ["logs", "show", "1"], ["logs", "export"], ["stats"], ["prune", "--older-than", "1d"]],
)
def test_a_missing_database_is_one_line_and_stays_missing(tmp_path: Path, command: list[str]) -> None:
    db = tmp_path / "nothing-here.db"
    result = run_process(*command, "--db", str(db), cwd=tmp_path)
    err = result.stderr.decode().strip()
    assert result.returncode == 1 and result.stdout == b""
    assert err == f"llm-proxy: no database at {db}" + err[len(f"llm-proxy: no database at {db}") :]
    assert len(err.splitlines()) == 1
    assert not db.exists() and list(tmp_path.iterdir()) == []


def test_reading_an_old_database_does_not_migrate_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    shutil.copy(migrations_dir() / "0001_logs.sql", folder)
    db = tmp_path / "old.db"
    migrate(str(db), folder)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO logs (timestamp, endpoint, method, model, prompt, response, status_code, latency_ms)"
            " VALUES ('2026-01-01T00:00:00.000Z', '/api/generate', 'POST', 'llama2', 'old question',"
            " 'old answer', 200, 42)"
        )
    before = db.read_bytes()
    assert json_ids(capsys, db) == [1]
    code, out, _ = run(capsys, "stats", "--db", str(db), "--json")
    assert code == 0 and json.loads(out)["by_model"][0]["latency_ms_p50"] == 42
    code, _, err = run(capsys, "logs", "--db", str(db), "-q", "old")
    assert code == 1 and "run 'llm-proxy migrate'" in err
    assert db.read_bytes() == before
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM _migrations")] == ["0001_logs.sql"]


async def test_a_database_from_the_previous_schema_upgrades(
    make_proxy: MakeProxy,
    ollama_double: tuple[OllamaDouble, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    shutil.copy(migrations_dir() / "0001_logs.sql", folder)
    db = tmp_path / "llm_proxy.db"  # where make_proxy keeps its database
    migrate(str(db), folder)
    with sqlite3.connect(db) as conn:  # a row as the Go proxy wrote them
        conn.execute(
            "INSERT INTO logs (timestamp, endpoint, method, model, prompt, response, status_code, latency_ms,"
            " stream, backend_type) VALUES ('2026-01-01T00:00:00.000Z', '/api/generate', 'POST', 'llama2',"
            " 'the old garden question', 'tomatoes', 200, 42, 0, 'openai')"
        )
    proxy = await make_proxy(ollama_double[1])
    await ollama.AsyncClient(host=proxy.url).chat(model="llama3.2", messages=say("a new garden question"))
    await proxy.wait_rows(2)
    assert sorted(json_ids(capsys, db, "-q", "garden")) == [1, 2]  # the old row was indexed too
    assert json_ids(capsys, db, "-q", "tomatoes") == [1]
    with sqlite3.connect(db) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY name")]
        assert names == [p.name for p in available()]
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental from now on


async def test_turns_follow_each_client(trail_proxy: Proxy, capsys: pytest.CaptureFixture[str]) -> None:
    proxy = trail_proxy
    """Another client's request in the middle of a turn neither joins nor breaks it."""
    a = ha_turn.client(proxy.url, ha_turn.Capture(), agent="home-assistant/2026.11")
    b = ha_turn.client(proxy.url, ha_turn.Capture(), agent="open-webui/1.0")
    system = {"role": "system", "content": "You are a voice assistant."}
    asked = {"role": "user", "content": "Turn on the kitchen light"}
    call = {"function": {"name": "HassTurnOn", "arguments": {"area": "kitchen"}}}
    called = {"role": "assistant", "content": "", "tool_calls": [call]}
    result = {"role": "tool", "content": '{"success": true}'}
    await a.chat(model="llama2", messages=[system, asked])
    await b.chat(model="llama2", messages=[system, asked])  # same words, other client
    await a.chat(model="llama2", messages=[system, asked, called, result])
    done = {"role": "assistant", "content": "Done."}
    await a.chat(model="llama2", messages=[system, asked, called, result, done])
    await a.chat(model="llama2", messages=[system, asked, called, result, done, say("Thanks")[0]])
    await a.chat(model="llama2", messages=[system, {"role": "user", "content": "What time is it?"}])
    await a.generate(model="llama2", prompt="no turns here")
    rows = await proxy.wait_rows(7)
    assert [r["turn_id"] for r in rows] == [1, 2, 1, 1, 5, 6, None]
    assert json_ids(capsys, proxy.target, "--turn", "1") == [1, 3, 4]
