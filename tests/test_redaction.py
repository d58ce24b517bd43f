"""Redaction before storage: planted secrets never reach the files, yet reach client and backend."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import openai
import orjson
import pytest

from llm_proxy import config as config_mod
from llm_proxy.audit.redact import build, iban_valid, luhn
from llm_proxy.errors import ConfigError

from . import ha_turn
from .conftest import MakeProxy
from .llama_double import LlamaServerDouble
from .planted import PATTERNS, SEARCHED, SECRETS, answer_stream, files_of, leaks, prose
from .process import serve

REDACT = {"redact": {"detectors": ["all"], "patterns": PATTERNS}}


# -- the detectors, as pure functions ------------------------------------------------


def test_each_detector_finds_its_kind_and_leaves_look_alikes() -> None:
    r = build(["all"], PATTERNS)
    assert r is not None
    text = r.text(prose("note"))
    assert text is not None
    for kind in ("email", "phone", "card", "iban", "api_key", "bearer", "ticket"):
        assert f"[redacted:{kind}]" in text, (kind, text)
    assert leaks(text.encode()) == []
    # Dates, times, measurements, a number failing Luhn, an IBAN with a wrong checksum stay.
    kept = (
        "on 2026-11-22 at 03:12:45 it was 21.5 °C; order 4539148803436468; DE89 3704 0044 0532 0130 01; "
        "version 1.2.3; year 2026; call me later"
    )
    assert r.text(kept) == kept


def test_checksums() -> None:
    assert luhn("4539148803436467") and not luhn("4539148803436468")
    assert iban_valid("GB82WEST12345698765432") and not iban_valid("GB82WEST12345698765433")
    assert not iban_valid("DE8937040044053201300")  # one character short for Germany


def test_only_the_chosen_detectors_run() -> None:
    r = build(["email"])
    assert r is not None
    assert r.text("a@example.com +49 30 98765432") == "[redacted:email] +49 30 98765432"
    assert build([]) is None


def test_json_bodies_stay_json_and_escaped_secrets_are_found() -> None:
    r = build(["all"])
    assert r is not None
    # The e-mail written with a JSON escape for "@", a card number as a bare number.
    body = (
        '{"messages": [{"role": "user", "content": "line\\nzqxj.planted\\u0040example.org"}], '
        '"n": 4539148803436467}'
    )
    out = r.json_text(body)
    assert out is not None
    assert orjson.loads(out) == {
        "messages": [{"role": "user", "content": "line\n[redacted:email]"}],
        "n": "[redacted:card]",
    }
    untouched = '{"model": "smollm2",  "messages": [{"role": "user", "content": "hello"}]}'
    assert r.json_text(untouched) is untouched  # bytes kept when nothing is found


@pytest.mark.parametrize(
    ("redact", "message"),
    [
        ({"detectors": ["emails"]}, "unknown detector 'emails'"),
        ({"patterns": {"Bad Kind": "x"}}, "lowercase letters"),
        ({"patterns": {"x": "("}}, "not a regular expression"),
        ({"patterns": {"x": "a*"}}, "matches the empty string"),
        ({"detectors": "email"}, "must be a list of strings"),
    ],
)
def test_bad_redaction_settings_are_named(redact: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_mod.from_dict({"database": {"redact": redact}})


def test_per_key_settings_load() -> None:
    config = config_mod.from_dict(
        {"auth": {"keys": [{"name": "ha", "key": "k1", "redact": "all", "store_bodies": "metadata"}]}}
    )
    assert (config.auth.keys[0].redact, config.auth.keys[0].store_bodies) == ("all", "metadata")
    with pytest.raises(ConfigError, match=r"'auth.keys\[0\].redact' must be one of 'default', 'all', 'none'"):
        config_mod.from_dict({"auth": {"keys": [{"name": "ha", "key": "k1", "redact": "yes"}]}})


# -- through the real process ----------------------------------------------------------


async def _traffic(url: str, double: LlamaServerDouble) -> dict[str, Any]:
    """Chat with tool rounds (ollama client), /v1 (openai client), generate, and a refused request."""
    seen: dict[str, Any] = {}
    client = ollama.AsyncClient(host=url)
    messages: list[Any] = [
        {"role": "system", "content": ha_turn.SYSTEM + "\n" + prose("system")},
        {"role": "user", "content": prose("user")},
    ]
    double.queued = [
        answer_stream(prose("answer"), {"name": SECRETS["email"], "area": SECRETS["phone"]}),
        answer_stream(prose("second answer")),
    ]
    content, calls = "", list[ollama.Message.ToolCall]()
    async for chunk in await client.chat(
        model="smollm2", messages=messages, tools=[ha_turn.TURN_ON], stream=True
    ):
        content += chunk.message.content or ""
        calls += chunk.message.tool_calls or []
    seen["answer"], seen["arguments"] = content, dict(calls[0].function.arguments)
    messages += [
        {"role": "assistant", "content": content, "tool_calls": [c.model_dump() for c in calls]},
        {"role": "tool", "content": prose("tool result")},
    ]
    final = await client.chat(model="smollm2", messages=messages, tools=[ha_turn.TURN_ON])
    seen["second"] = final.message.content
    await client.generate(model="smollm2", prompt=prose("generate"), stream=False)
    oai = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused")
    await oai.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": prose("openai")}]
    )
    await oai.close()
    async with aiohttp.ClientSession() as http:
        bad = {"model": "smollm2", "messages": [{"role": 7, "content": prose("refused")}]}
        async with http.post(f"{url}/api/chat", json=bad) as resp:
            seen["refused"] = resp.status
    return seen


def _fts_hits(db: Path) -> list[str]:
    with closing(sqlite3.connect(db)) as conn:
        return [
            w
            for w in SEARCHED
            if conn.execute("SELECT rowid FROM logs_fts WHERE logs_fts MATCH ?", (f'"{w}"',)).fetchall()
        ]


async def test_planted_secrets_never_reach_the_files_but_reach_client_and_backend(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    double = LlamaServerDouble()
    backend = await aiohttp_server(double.app(), host="127.0.0.1")
    async with serve(
        tmp_path, str(backend.make_url("")).rstrip("/"), backend={"type": "openai"}, database=REDACT
    ) as served:
        seen = await _traffic(served.url, double)
        # The client got every value the backend answered with.
        assert seen["answer"] == prose("answer") and seen["second"] == prose("second answer")
        assert seen["arguments"] == {"name": SECRETS["email"], "area": SECRETS["phone"]}
        assert seen["refused"] == 400
        # The backend got every value the client sent.
        sent = orjson.dumps([body for _, body in double.requests]).decode()
        for label in ("system", "user", "tool result", "generate", "openai"):
            assert orjson.dumps(prose(label)).decode()[1:-1] in sent, label
        rows = await _rows(served.db, 5)
        # While the proxy runs: the database, its WAL and shared memory hold none of it.
        for name, data in files_of(served.db).items():
            assert leaks(data) == [], name
        assert _fts_hits(served.db) == []
        exported = _cli("logs", "export", "--db", str(served.db)) + _cli(
            "logs", "export", "--db", str(served.db), "--format", "csv"
        )
        assert leaks(exported) == []
        assert await served.stop() == 0
    for name, data in files_of(served.db).items():
        assert leaks(data) == [], name
    # What was stored is the redacted text, not nothing.
    chat = rows[0]
    assert "[redacted:email]" in chat["prompt"] and "[redacted:iban]" in chat["response"]
    assert (
        "[redacted:card]"
        in _cli("logs", "show", str(chat["id"]), "--request", "--db", str(served.db)).decode()
    )
    assert orjson.loads(chat["tool_calls"])[0]["function"]["arguments"] == {
        "name": "[redacted:email]", "area": "[redacted:phone]"
    }  # fmt: skip
    assert rows[0]["request_parts"] is not None  # stored compactly: the blobs were redacted too
    assert "[redacted:bearer]" in rows[4]["request_body"]  # the refused request
    assert all(r["backend_request"] is None or "[redacted:api_key]" in r["backend_request"] for r in rows[:4])


async def test_per_key_policies(make_proxy: MakeProxy, aiohttp_server: Any) -> None:
    double = LlamaServerDouble()
    backend = await aiohttp_server(double.app(), host="127.0.0.1")
    keys = [
        {"name": "redacted", "key": "k-redacted"},
        {"name": "trusted", "key": "k-trusted", "redact": "none"},
        {"name": "quiet", "key": "k-quiet", "store_bodies": "metadata"},
    ]
    proxy = await make_proxy(
        str(backend.make_url("")).rstrip("/"),
        "openai",
        database={"redact": {"detectors": ["email"]}},
        auth={"keys": keys},
    )
    async with aiohttp.ClientSession() as http:
        for key in ("k-redacted", "k-trusted", "k-quiet"):
            body = {"model": "smollm2", "prompt": f"write to {SECRETS['email']}", "stream": False}
            async with http.post(
                f"{proxy.url}/api/generate", json=body, headers={"Authorization": f"Bearer {key}"}
            ) as r:
                assert r.status == 200
    rows = {r["key_name"]: r for r in await _rows(proxy.db, 3)}
    assert rows["redacted"]["prompt"] == "write to [redacted:email]"
    assert rows["trusted"]["prompt"] == f"write to {SECRETS['email']}"
    assert rows["quiet"]["prompt"] is None and rows["quiet"]["request_body"] is None


async def _rows(db: Path, expected: int) -> list[dict[str, Any]]:
    import asyncio

    from .conftest import read_rows

    for _ in range(250):
        found = read_rows(db, 0)
        if len(found) >= expected:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"{len(found)} rows, expected {expected}")


def _cli(*args: str) -> bytes:
    done = subprocess.run(
        [sys.executable, "-m", "llm_proxy", *args], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
