"""The web UI's JSON API and its rules, through a real proxy in front of the llama-server double.

The page (tests/test_ui_browser.py) is built on these answers; here each is
checked as a script would read it: status, body, cookies, headers, and that
the UI's own requests leave no audit row. The tests taking ``trail_oproxy``
run twice: on a SQLite file, then with the proxy writing into a real PostgreSQL
(``database.url``) and the UI reading it there.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import pytest
import yarl

from llm_proxy import config as config_mod
from llm_proxy.audit import reading
from llm_proxy.audit.exchange import Exchange
from llm_proxy.audit.recorder import Recorder
from llm_proxy.errors import AuditError
from llm_proxy.ui import dashboard, listing, live, policy, signin
from llm_proxy.ui.pg_reader import PgDatabase

from . import llama_server
from .conftest import MakeProxy, Proxy, Writer
from .ha_turn import TURN_ON, Capture, client, spoken_request, start_messages
from .llama_double import LlamaServerDouble
from .postgres import PASSWORD, PostgresServer
from .process import free_port
from .trail import Trail

ADMIN, HOME = "admin-key-0123456789", "home-assistant-key-0123"


def _config(**sections: Any) -> config_mod.Config:
    return config_mod.from_dict(sections)


def test_on_by_default_where_it_exposes_nothing_new() -> None:
    assert policy.decide(_config()).on  # loopback
    # The trail in PostgreSQL changes nothing: the UI reads it as it reads a SQLite file.
    assert policy.decide(_config(database={"url": "postgresql://u:p@127.0.0.1/db"})).on
    assert policy.decide(_config(server={"host": "::1"})).on
    off = policy.decide(_config(server={"host": "0.0.0.0"}))
    assert not off.on and "without auth.keys" in off.why
    assert "web UI off: listening on 0.0.0.0 without auth.keys" in policy.startup_line(
        _config(server={"host": "0.0.0.0"})
    )
    forced = _config(server={"host": "0.0.0.0"}, ui={"enabled": True})
    assert policy.decide(forced).on and "warning" in policy.startup_line(forced)
    keyed = _config(server={"host": "0.0.0.0"}, auth={"keys": [{"name": "me", "key": "k", "admin": True}]})
    assert policy.decide(keyed).sign_in
    assert policy.startup_line(keyed) == "web UI at http://0.0.0.0:11434/ui/ (sign in with an admin key: me)"
    assert not policy.decide(_config(ui={"enabled": False})).on


def test_ui_settings_are_checked() -> None:
    with pytest.raises(config_mod.ConfigError, match=r"'ui.enabled' must be true or false"):
        _config(ui={"enabled": "yes"})
    with pytest.raises(config_mod.ConfigError, match=r"'ui.page_size' must be between 1 and 100000"):
        _config(ui={"page_size": 0})
    with pytest.raises(config_mod.ConfigError, match=r"'auth.keys\[0\].admin' must be true or false"):
        _config(auth={"keys": [{"name": "me", "key": "k", "admin": "yes"}]})


async def _chat(url: str, text: str, headers: dict[str, str] | None = None) -> None:
    c = ollama.AsyncClient(host=url, headers=headers or {})
    await c.chat(model="smollm2", messages=[{"role": "user", "content": text}])


async def _get(http: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any]:
    async with http.get(url, **kw) as resp:
        return resp.status, await resp.json()


@pytest.fixture
async def ui_proxy(make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]) -> Proxy:
    return await make_proxy(llama_double[1], backend_type="openai")


async def test_list_pages_filters_and_search(trail_oproxy: Proxy) -> None:
    for n in range(7):
        await _chat(
            trail_oproxy.url, f"question number {n} about the kitchen light" if n % 2 else f"plain {n}"
        )
    await trail_oproxy.wait_rows(7)
    async with aiohttp.ClientSession() as http:
        status, page = await _get(http, f"{trail_oproxy.url}/ui/api/exchanges?limit=3")
        assert status == 200
        prompts = [e["prompt"] for e in page["exchanges"]]
        assert prompts == ["plain 6", "question number 5 about the kitchen light", "plain 4"]
        assert page["next"] == page["exchanges"][-1]["id"] and page["more"]
        _, second = await _get(http, f"{trail_oproxy.url}/ui/api/exchanges?limit=3&before={page['next']}")
        assert second["exchanges"][0]["prompt"] == "question number 3 about the kitchen light"
        _, last = await _get(http, f"{trail_oproxy.url}/ui/api/exchanges?limit=3&before={second['next']}")
        assert len(last["exchanges"]) == 1 and last["next"] is None
        _, found = await _get(http, f"{trail_oproxy.url}/ui/api/exchanges?q=kitchen+light")
        assert sorted(e["prompt"][16] for e in found["exchanges"]) == ["1", "3", "5"]
        # Punctuation is no syntax, on either store: a hyphen splits words, alone it finds nothing.
        _, hyphen = await _get(http, f"{trail_oproxy.url}/ui/api/exchanges?q=kitchen-light")
        assert [e["id"] for e in hyphen["exchanges"]] == [e["id"] for e in found["exchanges"]]
        status, nothing = await _get(http, f"{trail_oproxy.url}/ui/api/exchanges?q=%21%21%21")
        assert status == 200 and nothing["exchanges"] == []
        first = found["exchanges"][0]
        assert first["model"] == "smollm2" and first["status_code"] == 200 and first["response"]
        _, none = await _get(http, f"{trail_oproxy.url}/ui/api/exchanges?status=5xx")
        assert none["exchanges"] == []
        _, ok = await _get(
            http, f"{trail_oproxy.url}/ui/api/exchanges?status=2xx&model=smollm2&api=ollama&since=1h"
        )
        assert len(ok["exchanges"]) == 7
        _, newer = await _get(http, f"{trail_oproxy.url}/ui/api/exchanges?after={page['exchanges'][1]['id']}")
        assert [e["prompt"] for e in newer["exchanges"]] == ["plain 6"]
        status, bad = await _get(http, f"{trail_oproxy.url}/ui/api/exchanges?status=teapot")
        assert status == 400 and "'status' must be" in bad["error"]
        status, bad = await _get(http, f"{trail_oproxy.url}/ui/api/exchanges?since=yesterday")
        assert status == 400 and "'since'" in bad["error"]
    # None of the UI's requests left a row.
    await asyncio.sleep(0.2)  # the writer's turn, had anything been queued
    assert len(await trail_oproxy.wait_rows(8, within=0.3)) == 7


async def test_exchange_shows_the_tool_call_and_the_translated_request(trail_oproxy: Proxy) -> None:
    c = ollama.AsyncClient(host=trail_oproxy.url)
    asked = [{"role": "user", "content": "Turn on the kitchen light"}]
    stream = await c.chat(model="smollm2", messages=asked, tools=[TURN_ON], stream=True)
    async for _ in stream:
        pass
    [row] = await trail_oproxy.wait_rows(1)
    async with aiohttp.ClientSession() as http:
        status, got = await _get(http, f"{trail_oproxy.url}/ui/api/exchanges/{row['id']}")
        assert status == 200
        shown = got["exchange"]
        assert shown["endpoint"] == "/api/chat" and shown["backend_request"].startswith("{")
        assert '"tools"' in shown["backend_request"] and shown["request_body"]
        assert got["tools"] == ["HassTurnOn"]
        *asked, reply = got["conversation"]
        assert asked == [{"role": "user", "content": "Turn on the kitchen light"}]
        assert reply["answer"] and reply["tool_calls"][0]["name"] == "HassTurnOn"
        assert reply["tool_calls"][0]["arguments"] == {"name": "HassTurnOn"}  # what the recorded model sent
        assert got["timing"]["total_ms"] == shown["latency_ms"]
        assert got["timing"]["first_byte_ms"] == shown["ttfb_ms"]
        status, missing = await _get(http, f"{trail_oproxy.url}/ui/api/exchanges/999")
        assert status == 404 and missing == {"error": "no exchange with id 999"}


async def test_turn_shows_every_round_in_order(
    trail_oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    messages = start_messages()
    c = client(trail_oproxy.url, Capture())
    await spoken_request(c, llama_double[0], messages, "Turn on the kitchen light", rounds=3)
    rows = await trail_oproxy.wait_rows(3)
    assert len({r["turn_id"] for r in rows}) == 1
    async with aiohttp.ClientSession() as http:
        status, got = await _get(http, f"{trail_oproxy.url}/ui/api/turns/{rows[0]['turn_id']}")
    assert status == 200
    rounds = got["rounds"]
    assert [r["id"] for r in rounds] == [r["id"] for r in rows]
    assert [m["role"] for m in rounds[0]["messages"]] == ["system", "user"]
    assert rounds[0]["answer"]["tool_calls"][0]["name"] == "HassTurnOn"
    assert [m["role"] for m in rounds[1]["messages"]] == ["tool"]  # the call itself shown once, above
    assert rounds[2]["answer"]["content"] and not rounds[2]["answer"].get("tool_calls")


async def test_dashboard_counts_per_model(
    trail_oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    for n in range(3):
        await _chat(trail_oproxy.url, f"hello {n}")
    llama_double[0].scenario = "error-context-exceeded"
    with pytest.raises(ollama.ResponseError):
        await _chat(trail_oproxy.url, "too long")
    await trail_oproxy.wait_rows(4)
    async with aiohttp.ClientSession() as http:
        status, got = await _get(http, f"{trail_oproxy.url}/ui/api/dashboard?range=1h")
        assert status == 200 and got["models"] == ["smollm2"] and got["buckets"] == 60
        series = got["series"]["smollm2"]
        assert sum(series["requests"]) == 4 and sum(series["errors"]) == 1
        assert any(v is not None for v in series["latency_p50"])
        assert sum(series["tokens_out"]) > 0
        status, bad = await _get(http, f"{trail_oproxy.url}/ui/api/dashboard?range=2y")
        assert status == 400 and "'range' must be one of" in bad["error"]
        status, backend = await _get(http, f"{trail_oproxy.url}/ui/api/backend")
        assert status == 200 and backend["reachable"] is True
        [only] = backend["backends"]
        assert (only["name"], only["type"], only["reachable"]) == ("default", "openai", True)


async def test_headers_forbid_inline_code_framing_and_caching(ui_proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{ui_proxy.url}/ui/") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            csp = resp.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "script-src 'self';" in csp and "unsafe" not in csp
            assert resp.headers["X-Frame-Options"] == "DENY"
        async with http.get(f"{ui_proxy.url}/ui/api/exchanges") as resp:
            assert resp.headers["Cache-Control"] == "no-store"
            assert "Access-Control-Allow-Origin" not in resp.headers
        for name in ("config.yaml", "..%2F..%2Fconfig.yaml", "%2e%2e%2fsignin.py"):
            async with http.get(yarl.URL(f"{ui_proxy.url}/ui/static/{name}", encoded=True)) as resp:
                assert resp.status == 404, name
        async with http.get(f"{ui_proxy.url}/ui", allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "/ui/"
    assert await ui_proxy.wait_rows(1, within=0.5) == []


async def test_live_events_bring_new_exchanges(trail_oproxy: Proxy) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{trail_oproxy.url}/ui/api/events") as events:
        assert events.status == 200 and events.content_type == "text/event-stream"
        assert await events.content.readline() == b"retry: 2000\n"
        assert await events.content.readline() == b": live\n"
        assert await events.content.readline() == b"\n"
        assert await events.content.readline() == b'data: {"type":"hello","last":0}\n'
        await _chat(trail_oproxy.url, "are you live?")
        data = b""
        async with asyncio.timeout(5):
            while not data.startswith(b"data: "):
                data = await events.content.readline()
        assert b'"prompt":"are you live?"' in data and b'"type":"exchange"' in data


@pytest.fixture
async def keyed(make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]) -> Proxy:
    digest = hashlib.sha256(ADMIN.encode()).hexdigest()
    keys = [{"name": "home-assistant", "key": HOME}, {"name": "me", "key_sha256": digest, "admin": True}]
    return await make_proxy(llama_double[1], backend_type="openai", auth={"keys": keys, "max_failures": 3})


async def test_with_keys_only_an_admin_key_signs_in(keyed: Proxy) -> None:
    await _chat(keyed.url, "private prompt", headers={"Authorization": f"Bearer {HOME}"})
    await keyed.wait_rows(1)
    # unsafe=True: a jar that keeps cookies of an IP address (127.0.0.1), as a browser does.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        status, refused = await _get(http, f"{keyed.url}/ui/api/exchanges")
        assert (status, refused) == (401, {"error": "sign in with an admin API key"})
        async with http.get(f"{keyed.url}/ui/") as resp:  # the page itself holds no data
            assert resp.status == 200
        _, who = await _get(http, f"{keyed.url}/ui/api/session")
        assert who == {"sign_in": True, "signed_in": False, "name": None}  # no key names before a sign-in
        async with http.post(f"{keyed.url}/ui/api/session", json={"key": HOME}) as resp:
            assert resp.status == 403 and "needs admin: true" in (await resp.json())["error"]
            assert "llm_proxy_ui" not in resp.cookies
        async with http.post(f"{keyed.url}/ui/api/session", json={"key": ADMIN}) as resp:
            assert resp.status == 200 and (await resp.json())["name"] == "me"
            cookie = resp.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui/" in cookie
            assert ADMIN not in cookie
        status, page = await _get(http, f"{keyed.url}/ui/api/exchanges")
        assert status == 200 and page["exchanges"][0]["prompt"] == "private prompt"
        assert page["exchanges"][0]["key_name"] == "home-assistant"
        async with http.delete(f"{keyed.url}/ui/api/session") as resp:
            assert resp.status == 200
        status, _ = await _get(http, f"{keyed.url}/ui/api/exchanges")
        assert status == 401
    async with aiohttp.ClientSession() as http:  # scripts: the admin key as a header
        status, page = await _get(
            http, f"{keyed.url}/ui/api/exchanges", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert status == 200
        status, _ = await _get(
            http, f"{keyed.url}/ui/api/exchanges", headers={"Authorization": f"Bearer {HOME}"}
        )
        assert status == 403
        async with http.get(
            f"{keyed.url}/ui/api/exchanges", cookies={"llm_proxy_ui": "bWU.99999999999.forged"}
        ) as resp:
            assert resp.status == 401
    assert len(await keyed.wait_rows(2, within=0.5)) == 1  # sign-ins and reads left no rows


async def test_wrong_keys_at_the_sign_in_are_limited(keyed: Proxy) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.post(f"{keyed.url}/ui/api/session", json={"key": "guess"}) as resp:
                assert resp.status == 401
        async with http.post(f"{keyed.url}/ui/api/session", json={"key": ADMIN}) as resp:
            assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
            assert "auth.max_failures" in (await resp.json())["error"]


async def test_off_the_ui_paths_are_like_any_unknown_path(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy("http://127.0.0.1:9", backend_type="openai", ui={"enabled": False})
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/ui/api/exchanges") as resp:
        assert resp.status == 404
    [row] = await proxy.wait_rows(1)
    assert row["endpoint"] == "/ui/api/exchanges" and row["status_code"] == 404


async def _store(writer: Writer, when: datetime, latency: int, model: str = "smollm2") -> None:
    recorder, _ = writer
    e = Exchange(endpoint="/api/chat", method="POST", backend_type="openai", model=model)
    e.started, e.status_code, e.latency_ms, e.ttft_ms = when.timestamp(), 200, latency, latency // 2
    e.completion_tokens = 10
    recorder.submit(e)
    for _ in range(250):  # bounded: 5 s
        if not recorder.depth:
            return
        await asyncio.sleep(0.02)


def _board(boards: dashboard.Dashboards, trail: Trail, now: datetime) -> dict[str, Any]:
    """The 24-hour dashboard, read as the UI reads it: a fresh reader on either store."""
    reader = reading.connect(trail.target)
    try:
        return boards.build(reader, "24h", now)
    finally:
        reader.close()


async def test_dashboard_percentiles_and_the_buckets_it_keeps(
    trail_writer: tuple[Recorder, Trail], monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder, trail = trail_writer
    writer = (recorder, Path(trail.target))
    now = datetime.now(UTC)
    old = now - timedelta(hours=3)
    for latency in range(1, 21):
        await _store(writer, old, latency)
    await _store(writer, now, 500, model="other-model")
    await trail.wait_rows(21)
    boards = dashboard.Dashboards()
    got = _board(boards, trail, now)
    b = next(i for i, n in enumerate(got["series"]["smollm2"]["requests"]) if n)
    line = got["series"]["smollm2"]
    assert (line["requests"][b], line["latency_p50"][b], line["latency_p95"][b]) == (20, 10, 19)
    assert line["ttft_p50"][b] == 5 and line["tokens_out"][b] == 200
    assert got["models"] == ["smollm2", "other-model"] and got["requests"] == {
        "smollm2": 20,
        "other-model": 1,
    }
    assert got["series"]["other-model"]["latency_p50"][-1] == 500
    # A row landing late in an older bucket shows once that bucket is counted again.
    await _store(writer, old, 1000)
    await trail.wait_rows(22)
    assert _board(boards, trail, now)["series"]["smollm2"]["requests"][b] == 20  # trusted for now
    monkeypatch.setattr(dashboard, "RECHECK", 0.0)
    again = _board(boards, trail, now)["series"]["smollm2"]
    assert (again["requests"][b], again["latency_p95"][b]) == (21, 20)


async def test_a_sparse_filter_answers_a_window_at_a_time(
    trail_oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    llama_double[0].scenario = "error-context-exceeded"
    with pytest.raises(ollama.ResponseError):
        await _chat(trail_oproxy.url, "the one that failed")
    for n in range(6):
        await _chat(trail_oproxy.url, f"fine {n}")
    await trail_oproxy.wait_rows(7)
    monkeypatch.setattr(listing, "SCAN", 3)
    async with aiohttp.ClientSession() as http:
        _, page = await _get(http, f"{trail_oproxy.url}/ui/api/exchanges?status=error")
        assert page == {"exchanges": [], "next": 5, "more": True}  # ids 7, 6, 5 looked at
        _, page = await _get(http, f"{trail_oproxy.url}/ui/api/exchanges?status=error&before=5")
        assert page == {"exchanges": [], "next": 2, "more": True}
        _, page = await _get(http, f"{trail_oproxy.url}/ui/api/exchanges?status=error&before=2")
        assert [e["prompt"] for e in page["exchanges"]] == ["the one that failed"]
        assert (page["next"], page["more"]) == (None, False)


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


async def test_images_come_as_data_urls_and_errors_plainly(
    trail_oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    c = ollama.AsyncClient(host=trail_oproxy.url)
    await c.chat(model="smollm2", messages=[{"role": "user", "content": "what is this?", "images": [PNG]}])
    llama_double[0].scenario = "error-context-exceeded"
    with pytest.raises(ollama.ResponseError):
        await _chat(trail_oproxy.url, "far too long")
    rows = await trail_oproxy.wait_rows(2)
    async with aiohttp.ClientSession() as http:
        _, got = await _get(http, f"{trail_oproxy.url}/ui/api/exchanges/{rows[0]['id']}")
        assert got["conversation"][0]["images"] == [f"data:image/png;base64,{PNG}"]
        _, failed = await _get(http, f"{trail_oproxy.url}/ui/api/exchanges/{rows[1]['id']}")
        assert failed["exchange"]["status_code"] == 400 and "context" in failed["exchange"]["error"]
        assert failed["conversation"] == [{"role": "user", "content": "far too long"}]


async def test_the_backend_view_lists_loaded_models_and_when_they_stop(
    make_proxy: MakeProxy, ollama_double: tuple[Any, str]
) -> None:
    proxy = await make_proxy(ollama_double[1])
    async with aiohttp.ClientSession() as http:
        status, got = await _get(http, f"{proxy.url}/ui/api/backend")
    assert status == 200 and got["backends"][0]["type"] == "ollama" and got["reachable"] is True
    assert got["running"] and got["running"][0]["expires_at"] == "2026-11-22T05:05:06.1Z"
    assert await proxy.wait_rows(1, within=0.3) == []  # asking the backend through the UI left no row


async def test_live_pages_are_bounded(
    make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    proxy = await make_proxy(llama_double[1], backend_type="openai", ui={"max_viewers": 1})
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/ui/api/events") as first:
        assert first.status == 200
        async with http.get(f"{proxy.url}/ui/api/events") as second:
            assert second.status == 503
            assert "ui.max_viewers" in (await second.json())["error"]


def test_a_page_that_falls_behind_is_told_to_reload() -> None:
    viewer = live.Viewer(limit=3)
    viewer.offer([{"id": 1}, {"id": 2}])
    viewer.offer([{"id": 3}, {"id": 4}])
    assert list(viewer.events) == [{"type": "resync"}]
    viewer.offer([{"id": 5}])
    assert [e["type"] for e in viewer.events] == ["resync", "exchange"]


def test_a_session_cookie_is_the_admin_keys_until_it_expires() -> None:
    auth = _config(auth={"keys": [{"name": "me", "key": ADMIN, "admin": True}, {"name": "ha", "key": HOME}]})
    sessions = signin.Sessions(auth.auth, auth.ui, required=True)
    cookie = sessions.issue("me", now=1000.0)
    assert sessions.holder(cookie, now=1000.0 + 12 * 3600 - 1) == "me"
    assert sessions.holder(cookie, now=1000.0 + 12 * 3600 + 1) is None  # ui.session_hours
    encoded, expires, signature = cookie.split(".")
    assert sessions.holder(f"{encoded}.{int(expires) + 3600}.{signature}", now=1000.0) is None  # extended
    assert sessions.holder(sessions.issue("ha", now=1000.0), now=1000.0) is None  # not an admin key
    other = signin.Sessions(auth.auth, auth.ui, required=True)  # another process: another secret
    assert other.holder(cookie, now=1000.0) is None
    assert ADMIN not in cookie


async def test_with_the_managed_backend_it_shows_which_llama_server_runs_until_when(
    make_proxy: MakeProxy,
) -> None:
    """The real llama-server and SmolLM2 (tests/install.sh): started by a request, listed until when."""
    try:
        binary, gguf = llama_server.find_binary(), llama_server.find_model()
    except llama_server.NotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)
    model = {"path": str(gguf), "ctx": 1024, "args": ["-t", "1"]}
    backend = {"server_binary": str(binary), "timeout": 60, "idle_timeout": 600, "models": {"smollm2": model}}
    proxy = await make_proxy("", "llamacpp", backend=backend)
    async with aiohttp.ClientSession() as http:
        _, idle = await _get(http, f"{proxy.url}/ui/api/backend")
        [managed] = idle["backends"]
        assert managed["type"] == "llamacpp" and managed["models"] == ["smollm2"] and idle["running"] == []
        c = ollama.AsyncClient(host=proxy.url, timeout=120)
        await c.generate(model="smollm2", prompt="Hi", options={"num_predict": 2, "temperature": 0})
        _, busy = await _get(http, f"{proxy.url}/ui/api/backend")
    [running] = busy["running"]
    assert running["name"] == "smollm2:latest" and running["context_length"] == 1024  # as /api/ps names it
    stops = datetime.fromisoformat(running["expires_at"].replace("Z", "+00:00"))
    assert timedelta(seconds=500) < stops - datetime.now(UTC) <= timedelta(seconds=600)


async def test_on_postgresql_the_ui_only_reads_and_says_when_it_cannot(
    postgres: PostgresServer, migrated: str
) -> None:
    db = PgDatabase(postgres.database(migrated))
    try:
        assert await db.run(listing.newest) == 0
        with pytest.raises(AuditError, match="read-only transaction"):
            await db.run(lambda r: list(r.execute("DELETE FROM logs")))
    finally:
        await db.shut()
    gone = PgDatabase(f"postgresql://llmproxy:{PASSWORD}@127.0.0.1:{free_port()}/nothing")
    with pytest.raises(signin.Refused) as refused:
        await gone.run(listing.newest)
    await gone.shut()
    assert refused.value.status == 503 and "postgresql://llmproxy:***@127.0.0.1" in refused.value.message
    assert PASSWORD not in refused.value.message


async def test_on_postgresql_the_ui_answers_503_while_the_server_is_down_then_reads_again(
    make_proxy: MakeProxy,
    llama_double: tuple[LlamaServerDouble, str],
    postgres: PostgresServer,
    migrated: str,
    tmp_path: Path,
) -> None:
    trail = Trail("postgresql", postgres.database(migrated), tmp_path / "spool.db", postgres)
    proxy = await make_proxy(llama_double[1], backend_type="openai", trail=trail)
    await _chat(proxy.url, "before the outage")
    await proxy.wait_rows(1)
    url = f"{proxy.url}/ui/api/exchanges"
    async with aiohttp.ClientSession() as http:
        status, page = await _get(http, url)
        assert status == 200 and [e["prompt"] for e in page["exchanges"]] == ["before the outage"]
        postgres.stop()
        try:
            status, down = await _get(http, url)
            assert status == 503 and "postgresql://llmproxy:***@127.0.0.1" in down["error"]
            assert PASSWORD not in down["error"]
            status, one = await _get(http, f"{url}/{page['exchanges'][0]['id']}")
            assert status == 503 and "***" in one["error"]  # the database away, not the row missing
            await _chat(proxy.url, "during the outage")  # the proxy goes on; the row waits in the spool
        finally:
            postgres.start()
        assert len(await proxy.wait_rows(2, within=30)) == 2
        status, page = await _get(http, url)
    assert status == 200
    assert [e["prompt"] for e in page["exchanges"]] == ["during the outage", "before the outage"]


async def test_on_postgresql_the_live_list_brings_other_proxies_rows(
    make_proxy: MakeProxy,
    llama_double: tuple[LlamaServerDouble, str],
    postgres: PostgresServer,
    migrated: str,
    tmp_path: Path,
) -> None:
    trail = Trail("postgresql", postgres.database(migrated), tmp_path / "spool.db", postgres)
    watched = await make_proxy(llama_double[1], backend_type="openai", trail=trail)
    other_trail = Trail("postgresql", trail.target, tmp_path / "other-spool.db", postgres)
    other = await make_proxy(llama_double[1], backend_type="openai", trail=other_trail)
    async with aiohttp.ClientSession() as http, http.get(f"{watched.url}/ui/api/events") as events:
        assert events.status == 200
        for _ in range(4):  # retry, : live, blank, hello
            await events.content.readline()
        await _chat(other.url, "asked the other proxy")
        data = b""
        async with asyncio.timeout(10):
            while not data.startswith(b"data: "):
                data = await events.content.readline()
        assert b'"prompt":"asked the other proxy"' in data and b'"type":"exchange"' in data
