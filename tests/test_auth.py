"""API keys, rate limits, body and concurrency limits, seen by the real ollama client and raw HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import ollama
import pytest

from llm_proxy import config as config_mod
from llm_proxy.errors import ConfigError
from llm_proxy.server import state
from llm_proxy.server.auth import exposure_warning
from llm_proxy.server.ratelimit import RateLimiter

from .conftest import MakeProxy, Proxy, present
from .ollama_double import OllamaDouble

USER = [{"role": "user", "content": "Why is the sky blue?"}]
HA_KEY = "ha-4f0c8e1b9d2a7f3e6c5b"
LAPTOP_KEY = "laptop-1a2b3c4d5e6f7a8b"
KEYS = [
    {"name": "home-assistant", "key": HA_KEY},
    {"name": "laptop", "key_sha256": hashlib.sha256(LAPTOP_KEY.encode()).hexdigest()},
]


def client(proxy: Proxy, key: str | None = None, **headers: str) -> ollama.AsyncClient:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return ollama.AsyncClient(host=proxy.url, headers=headers)


@pytest.fixture
async def locked(make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str]) -> Proxy:
    """A proxy that wants one of two keys."""
    return await make_proxy(ollama_double[1], auth={"keys": KEYS})


# -- API keys ---------------------------------------------------------------------


async def test_the_right_key_is_let_in_and_its_name_recorded(locked: Proxy) -> None:
    answer = await client(locked, HA_KEY).chat(model="llama3.2", messages=USER, stream=False)
    assert answer.message.content == "The sky is blue."
    listed = await client(locked, LAPTOP_KEY).list()  # configured by its sha256
    assert listed.models
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{locked.url}/api/ps", headers={"X-API-Key": LAPTOP_KEY}) as resp,
    ):
        assert resp.status == 200
    rows = await locked.wait_rows(3)
    assert [(r["endpoint"], r["status_code"], r["key_name"]) for r in rows] == [
        ("/api/chat", 200, "home-assistant"),
        ("/api/tags", 200, "laptop"),
        ("/api/ps", 200, "laptop"),
    ]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-the-key"},
        {"Authorization": f"Basic {HA_KEY}"},
        {"Authorization": f"Bearer {HA_KEY}x"},
        {"Authorization": f"Bearer {HA_KEY[:-1]}"},
        {"X-API-Key": "laptop"},
        {"Authorization": "Bearer"},
    ],
)
async def test_no_key_or_a_wrong_one_gets_401(locked: Proxy, headers: dict[str, str]) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await client(locked, **headers).chat(model="llama3.2", messages=USER)
    assert caught.value.status_code == 401 and caught.value.error == "unauthorized"
    async with aiohttp.ClientSession() as http, http.get(f"{locked.url}/api/tags", headers=headers) as resp:
        assert resp.status == 401
        assert await resp.json() == {"error": "unauthorized"}
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    rows = await locked.wait_rows(2)
    assert [(r["endpoint"], r["status_code"], r["error"], r["key_name"]) for r in rows] == [
        ("/api/chat", 401, "unauthorized", None),
        ("/api/tags", 401, "unauthorized", None),
    ]
    # Turned away before reading: nothing of an unauthenticated body is kept.
    assert rows[0]["request_body"] is None


async def test_exempt_paths_answer_without_a_key(locked: Proxy) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{locked.url}/") as resp:
            assert resp.status == 200 and await resp.text() == "Ollama is running"
        async with http.get(f"{locked.url}/health") as resp:
            assert resp.status == 200
        async with http.get(f"{locked.url}/api/version") as resp:
            assert resp.status == 401
        async with http.get(f"{locked.url}/", headers={"Authorization": f"Bearer {HA_KEY}"}) as resp:
            assert resp.status == 200
    rows = await locked.wait_rows(3)
    assert [(r["endpoint"], r["status_code"], r["key_name"]) for r in rows] == [
        ("/", 200, None),
        ("/api/version", 401, None),
        ("/", 200, "home-assistant"),  # a key shown on an exempt path is still named
    ]


async def test_configured_exempt_paths(
    make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str]
) -> None:
    proxy = await make_proxy(ollama_double[1], auth={"keys": KEYS, "exempt": ["/api/version"]})
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxy.url}/api/version") as resp:
            assert resp.status == 200
        async with http.get(f"{proxy.url}/") as resp:
            assert resp.status == 401


async def test_no_keys_configured_means_no_key_needed(proxy: Proxy) -> None:
    assert (await client(proxy).list()).models
    [row] = await proxy.wait_rows(1)
    assert row["status_code"] == 200 and row["key_name"] is None


# -- rate limits ------------------------------------------------------------------


async def test_wrong_key_guesses_from_one_address_get_429(
    make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str]
) -> None:
    proxy = await make_proxy(ollama_double[1], auth={"keys": KEYS, "max_failures": 3})
    statuses = []
    async with aiohttp.ClientSession() as http:
        for _ in range(5):  # no key at all is no guess: never counted
            async with http.get(f"{proxy.url}/api/tags") as resp:
                statuses.append(resp.status)
        for guess in range(4):
            headers = {"Authorization": f"Bearer guess-{guess}"}
            async with http.get(f"{proxy.url}/api/tags", headers=headers) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert (await resp.json())["error"].startswith(
                        "too many wrong API keys from client 127.0.0.1"
                    )
                    assert int(resp.headers["Retry-After"]) in range(1, 21)  # a guess back every 20 s
        # Until then no key from this address is checked, not even the right one.
        async with http.post(
            f"{proxy.url}/v1/chat/completions", headers={"X-API-Key": HA_KEY}, json={}
        ) as resp:
            assert resp.status == 429 and "Retry-After" in resp.headers
            assert (await resp.json())["error"]["type"] == "rate_limit_error"  # the OpenAI shape under /v1
        async with http.get(f"{proxy.url}/health", headers={"X-API-Key": "guess"}) as resp:
            assert resp.status == 200  # exempt paths need no key and count none
    assert statuses == [401] * 5 + [401, 401, 401, 429]
    rows = await proxy.wait_rows(10)
    assert [r["status_code"] for r in rows] == [401] * 8 + [429, 429]  # every refusal has its row
    assert rows[-1]["endpoint"] == "/v1/chat/completions" and rows[-1]["key_name"] is None


def test_wrong_keys_are_counted_per_address_in_a_bounded_table() -> None:
    now = [0.0]
    guesses = RateLimiter(per_minute=10, burst=10, clock=lambda: now[0], max_callers=100)
    for _ in range(10):
        assert guesses.wait("10.0.0.2") == 0.0
        guesses.take("10.0.0.2")
    assert guesses.wait("10.0.0.2") == pytest.approx(6.0)  # ten a minute: one back in 6 s
    assert guesses.wait("10.0.0.3") == 0.0  # another address is unaffected
    assert len(guesses) == 1  # looking does not add an entry
    now[0] += 6.0
    assert guesses.wait("10.0.0.2") == 0.0
    for i in range(1000):
        guesses.take(f"10.1.{i // 256}.{i % 256}")
    assert len(guesses) == 100


async def test_rate_limit_per_key_answers_429_with_retry_after(
    make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str]
) -> None:
    proxy = await make_proxy(ollama_double[1], auth={"keys": KEYS, "rate_limit": 1, "rate_burst": 2})
    ha = client(proxy, HA_KEY)
    await ha.list()
    await ha.chat(model="llama3.2", messages=USER, stream=False)
    with pytest.raises(ollama.ResponseError) as caught:
        await ha.list()
    assert caught.value.status_code == 429 and "rate limit exceeded for key 'home-assistant'" in str(
        caught.value.error
    )
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {HA_KEY}"}
        async with http.get(f"{proxy.url}/api/tags", headers=headers) as resp:
            assert resp.status == 429
            assert "error" in await resp.json()
            # One request per minute: the next token is most of a minute away.
            assert int(resp.headers["Retry-After"]) in range(1, 61)
        async with http.get(f"{proxy.url}/health", headers=headers) as resp:
            assert resp.status == 200  # exempt paths are not counted
    assert (await client(proxy, LAPTOP_KEY).list()).models  # another key has its own bucket
    rows = await proxy.wait_rows(5)
    assert [(r["status_code"], r["key_name"]) for r in rows] == [
        (200, "home-assistant"), (200, "home-assistant"), (429, "home-assistant"),
        (429, "home-assistant"), (200, "laptop"),
    ]  # fmt: skip
    assert rows[2]["error"].startswith("rate limit exceeded")


async def test_rate_limit_per_client_address_without_keys(
    make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str]
) -> None:
    proxy = await make_proxy(ollama_double[1], auth={"rate_limit": 6, "rate_burst": 1})
    async with aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(3):
            async with http.get(f"{proxy.url}/api/version") as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert "client 127.0.0.1" in (await resp.json())["error"]
                    assert int(resp.headers["Retry-After"]) in range(1, 11)
    assert statuses == [200, 429, 429]
    rows = await proxy.wait_rows(3)
    assert [r["status_code"] for r in rows] == [200, 429, 429]


def test_token_bucket_refills_at_the_configured_rate() -> None:
    now = [100.0]
    limiter = RateLimiter(per_minute=60, burst=3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(1.0)  # one per second: a token in 1 s
    assert limiter.take("b") == 0.0  # each caller has its own bucket
    now[0] += 0.5
    assert limiter.take("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.take("a") == 0.0
    now[0] += 3600
    assert [limiter.take("a") for _ in range(4)][-1] > 0  # refilled to the burst, not beyond


def test_token_bucket_memory_is_bounded() -> None:
    limiter = RateLimiter(per_minute=60, burst=1, clock=lambda: 0.0, max_callers=100)
    for i in range(1000):
        limiter.take(f"addr:10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100


# -- size limits ------------------------------------------------------------------


async def test_a_body_over_max_body_mb_gets_413_and_a_row(
    make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str]
) -> None:
    double, endpoint = ollama_double
    proxy = await make_proxy(endpoint, server={"max_body_mb": 0.0625})  # 64 KiB
    big = [{"role": "user", "content": "x" * 70_000}]
    with pytest.raises(ollama.ResponseError) as caught:
        await client(proxy).chat(model="llama3.2", messages=big, stream=False)
    assert caught.value.status_code == 413
    assert caught.value.error == "request body is larger than the limit of 0.0625 MiB (server.max_body_mb)"

    async def chunks() -> object:  # no Content-Length: the limit is found while reading
        for _ in range(20):
            yield b"x" * 8192

    async with aiohttp.ClientSession() as http, http.post(f"{proxy.url}/api/generate", data=chunks()) as resp:
        assert resp.status == 413
        assert "server.max_body_mb" in (await resp.json())["error"]
    fits = await client(proxy).chat(model="llama3.2", messages=[{"role": "user", "content": "x" * 60_000}])
    assert fits.message.content == "The sky is blue."
    rows = await proxy.wait_rows(3)
    assert [(r["endpoint"], r["status_code"]) for r in rows] == [
        ("/api/chat", 413), ("/api/generate", 413), ("/api/chat", 200),
    ]  # fmt: skip
    assert all(path != "/api/generate" for path, _ in double.requests)  # nothing reached the backend


async def test_oversized_headers_are_refused_and_the_proxy_keeps_serving(proxy: Proxy) -> None:
    host, port = proxy.server.host, proxy.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /api/tags HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * 100_000 + b"\r\n\r\n")
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status_line.split()[1] == b"400"  # aiohttp: "Got more than 8190 bytes"
    assert (await client(proxy).list()).models


# -- backend concurrency ----------------------------------------------------------


async def test_full_wait_queue_gets_503_and_waiting_requests_complete(
    make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str]
) -> None:
    double, endpoint = ollama_double
    double.hold = asyncio.Event()
    proxy = await make_proxy(endpoint, backend={"max_concurrency": 1, "max_queue": 1})

    async def chat() -> str:
        parts = [
            present(c.message.content) async for c in await client(proxy).chat("llama3.2", USER, stream=True)
        ]
        return "".join(parts)

    gate = proxy.app[state.GATE]
    first = asyncio.create_task(chat())
    await _until(lambda: gate.active == 1 and bool(double.requests))  # the first stream is held
    second = asyncio.create_task(chat())
    await _until(lambda: gate.waiting == 1)  # the second waits its turn at the gate
    assert len(double.requests) == 1
    with pytest.raises(ollama.ResponseError) as caught:
        await client(proxy).generate(model="llama3.2", prompt="p", stream=False)
    assert caught.value.status_code == 503 and "backend is busy" in str(caught.value.error)
    embed = b'{"model": "nomic-embed-text", "input": "a"}'
    async with aiohttp.ClientSession() as http, http.post(f"{proxy.url}/api/embed", data=embed) as resp:
        assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    # Model lists are not generation: Home Assistant's polls get through meanwhile.
    assert (await client(proxy).list()).models
    double.hold.set()
    assert await first == await second == "The sky is blue."
    rows = await proxy.wait_rows(5)
    assert sorted((r["endpoint"], r["status_code"]) for r in rows) == [
        ("/api/chat", 200), ("/api/chat", 200), ("/api/embed", 503), ("/api/generate", 503),
        ("/api/tags", 200),
    ]  # fmt: skip
    busy = next(r for r in rows if r["status_code"] == 503)
    assert "backend.max_concurrency" in busy["error"]


# -- configuration and start-up ---------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"keys": [{"name": "a", "key": "k1"}, {"name": "b", "key_sha256": "abc"}]},
         "'auth.keys[1].key_sha256' must be 64 hex characters"),
        ({"keys": [{"name": "a", "key": "k1"}, {"name": "a", "key": "k2"}]},
         "'auth.keys[1].name' repeats the name of auth.keys[0]"),
        ({"keys": [{"name": "a", "key": "k1"}, {"name": "b", "key": "k1"}]},
         "'auth.keys[1]' has the same key as auth.keys[0]"),
        ({"keys": [{"name": "a"}]}, "'auth.keys[0]' must have exactly one of 'key' and 'key_sha256'"),
        ({"keys": [{"key": "k1"}]}, "'auth.keys[0].name' must be a non-empty string"),
        ({"keys": [{"name": "a", "key": "k1", "kye": 1}]}, "unknown key 'auth.keys[0].kye'"),
        ({"keys": "s3cret-value"}, "'auth.keys' must be a list of {name, key} entries, got a string"),
        ({"rate_limit": -1}, "'auth.rate_limit' must be 0 (no limit) or more"),
        ({"max_failures": -1}, "'auth.max_failures' must be 0 (no limit) or more"),
        ({"exempt": ["health"]}, "'auth.exempt[0]' must be a path starting with /"),
    ],
)  # fmt: skip
def test_bad_auth_config_is_one_line_naming_the_key(
    tmp_path: Path, auth: dict[str, object], message: str
) -> None:
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"auth": auth}))
    with pytest.raises(ConfigError):
        config_mod.load(str(path))
    done = subprocess.run(
        [sys.executable, "-m", "llm_proxy", "--config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "s3cret-value" not in done.stderr


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"server": {"max_body_mb": 0}}, "'server.max_body_mb' must be between 0 and 4096"),
        ({"backend": {"max_concurrency": -1}}, "'backend.max_concurrency' must be 0 (no limit) or more"),
        ({"backend": {"api_key": 12345678}}, "'backend.api_key' must be a string, got a number"),
    ],
)
def test_bad_limits(section: dict[str, dict[str, object]], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_mod.from_dict(section)
    assert str(caught.value).startswith(message)
    assert "12345678" not in str(caught.value)


def test_a_plain_key_is_hashed_on_load_and_never_kept() -> None:
    config = config_mod.from_dict({"auth": {"keys": [{"name": "ha", "key": HA_KEY}]}})
    assert config.auth.keys[0].key_sha256 == hashlib.sha256(HA_KEY.encode()).hexdigest()
    assert HA_KEY not in repr(config) and config.auth.keys[0].key_sha256 not in repr(config)


@pytest.mark.parametrize(
    ("host", "keys", "warns"),
    [
        ("127.0.0.1", [], False), ("localhost", [], False), ("::1", [], False),
        ("0.0.0.0", [], True), ("192.168.1.5", [], True), ("proxy.lan", [], True),
        ("0.0.0.0", KEYS, False),
    ],
)  # fmt: skip
def test_exposure_warning(host: str, keys: list[dict[str, str]], warns: bool) -> None:
    config = config_mod.from_dict({"server": {"host": host}, "auth": {"keys": keys}})
    assert (exposure_warning(config) is not None) == warns


def test_serving_beyond_loopback_without_keys_warns_at_start_up(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: the bind fails
    # after the warning, so nothing is ever exposed by this test.
    path = tmp_path / "config.yaml"
    path.write_text(
        f"server: {{host: 192.0.2.1, port: {_free_port()}}}\ndatabase: {{path: {tmp_path}/a.db}}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "llm_proxy", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert "warning: listening on 192.0.2.1 without auth.keys" in done.stderr
    assert done.returncode == 1 and "cannot listen" in done.stderr


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(500):  # bounded: 5 s
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
