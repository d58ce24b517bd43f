"""Redaction before storage: planted secrets never reach the files, yet reach client and backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from llm_proxy import config as config_mod
from llm_proxy.audit.detectors import iban_valid, luhn
from llm_proxy.audit.exchange import Exchange
from llm_proxy.audit.redact import build
from llm_proxy.audit.store import Store
from llm_proxy.errors import ConfigError

from .conftest import MakeProxy
from .llama_double import LlamaServerDouble
from .planted import PATTERNS, SECRETS, cli, files_of, fts_hits, leaks, prose, rows_of, traffic
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
        "version 1.2.3; year 2026; call me later; 192.168.1.100; 550e8400-e29b-41d4-a716-446655440000; "
        '"prompt_per_token_ms":3.9228823529411763; sensor.temperature_1234567; ISBN 978-3-16-148410-0'
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
    # Only the string holding the secret changes; spacing, order and escapes elsewhere stay.
    mixed = '{"a" : "line\\none",\n "b": ["call +49 30 98765432 now", 12.5, "x\\u00e9"], "c": "2026-11-22"}'
    assert r.json_text(mixed) == mixed.replace("+49 30 98765432", "[redacted:phone]")
    # A secret named by its key: the value goes, the key and its neighbours stay.
    keyed = (
        '{"name": "ha", "password": "hunter22", "api_key": "abc123def", "tokens": "many", "max_tokens": 8}'
    )
    assert orjson.loads(r.json_text(keyed) or "") == {
        "name": "ha", "password": "[redacted:api_key]", "api_key": "[redacted:api_key]", "tokens": "many",
        "max_tokens": 8,
    }  # fmt: skip
    # A copy cut at database.max_body_kb is no JSON; its strings are redacted as far as they go.
    cut = '{"messages": [{"role": "user", "content": "mail zqxj.planted@example.org and call +49 30 98765'
    assert r.json_text(cut) == cut.replace("zqxj.planted@example.org", "[redacted:email]").replace(
        "+49 30 98765", "[redacted:phone]"
    )


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


def test_a_row_logged_because_it_could_not_be_written_is_redacted_too(tmp_path: Path) -> None:
    exchange = Exchange(endpoint="/api/generate", method="POST", backend_type="openai")
    exchange.prompt, exchange.request_body = prose("lost"), orjson.dumps({"prompt": prose("lost")})
    store = Store(str(tmp_path / "never.db"), redactor=build(["all"], PATTERNS))
    shown = repr(store.redacted(exchange.row()))
    assert "[redacted:email]" in shown and leaks(shown.encode()) == []
    quiet = Store(str(tmp_path / "never.db"), store_bodies="metadata")
    assert SECRETS["email"] not in repr(quiet.redacted(exchange.row()))


# -- through the real process ----------------------------------------------------------


async def ui_answers(url: str, rows: list[dict[str, Any]]) -> bytes:
    """Every answer of the web UI's JSON API about these rows: the list, a search, each exchange and turn."""
    paths = ["/ui/api/exchanges", "/ui/api/exchanges?q=redacted", "/ui/api/dashboard?range=24h"]
    paths += [f"/ui/api/exchanges/{r['id']}" for r in rows]
    paths += sorted({f"/ui/api/turns/{r['turn_id']}" for r in rows if r["turn_id"] is not None})
    answers = b""
    async with aiohttp.ClientSession() as http:
        for path in paths:
            async with http.get(url + path) as resp:
                assert resp.status == 200, path
                answers += await resp.read()
    assert b"[redacted:email]" in answers  # the rows are there, with their markers
    return answers


async def test_planted_secrets_never_reach_the_files_but_reach_client_and_backend(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    double = LlamaServerDouble()
    backend = await aiohttp_server(double.app(), host="127.0.0.1")
    # The console lines a journal keeps are redacted like the rows.
    console = {"log_messages": True, "log_raw_requests": True}
    async with serve(
        tmp_path,
        str(backend.make_url("")).rstrip("/"),
        backend={"type": "openai"},
        database=REDACT,
        server=console,
    ) as served:
        seen = await traffic(served.url, double)
        # The client got every value the backend answered with.
        assert seen["answer"] == prose("answer") and seen["second"] == prose("second answer")
        assert seen["arguments"] == {"name": SECRETS["email"], "area": SECRETS["phone"]}
        assert seen["refused"] == 400
        # The backend got every value the client sent.
        sent = orjson.dumps([body for _, body in double.requests]).decode()
        for label in ("system", "user", "tool result", "generate", "openai"):
            assert orjson.dumps(prose(label)).decode()[1:-1] in sent, label
        rows = await rows_of(served.db, 5)
        # While the proxy runs: the database, its WAL and shared memory hold none of it.
        for name, data in files_of(served.db).items():
            assert leaks(data) == [], name
        assert fts_hits(served.db) == []
        exported = cli("logs", "export", "--db", str(served.db)) + cli(
            "logs", "export", "--db", str(served.db), "--format", "csv"
        )
        assert leaks(exported) == []
        # The web UI's API (on: the proxy listens on loopback) reads the same redacted rows.
        assert leaks(await ui_answers(served.url, rows)) == []
        assert await served.stop() == 0
    for name, data in files_of(served.db).items():
        assert leaks(data) == [], name
    printed = "\n".join(served.stdout)
    assert "[redacted:email]" in printed and "Prompt: user: mail me at [redacted:email]" in printed
    assert leaks(printed.encode()) == []
    # What was stored is the redacted text, not nothing.
    chat = rows[0]
    assert "[redacted:email]" in chat["prompt"] and "[redacted:iban]" in chat["response"]
    assert (
        "[redacted:card]"
        in cli("logs", "show", str(chat["id"]), "--request", "--db", str(served.db)).decode()
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
    rows = {r["key_name"]: r for r in await rows_of(proxy.db, 3)}
    assert rows["redacted"]["prompt"] == "write to [redacted:email]"
    assert rows["trusted"]["prompt"] == f"write to {SECRETS['email']}"
    assert rows["quiet"]["prompt"] is None and rows["quiet"]["request_body"] is None
