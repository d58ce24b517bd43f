"""Client connections, against the real process: bounded, idle ones make room, busy ones refuse plainly."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llm_proxy.server.connections import ConnectionLimit, Full

from . import raw
from .conftest import read_rows
from .ollama_double import OllamaDouble
from .process import serve
from .test_lifecycle import USER

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_idle(url: str, count: int) -> list[Connection]:
    """``count`` connections that send nothing, each opened within 5 s."""
    opened = []
    for _ in range(count):
        opened.append(await asyncio.wait_for(asyncio.open_connection(*raw.address(url)), 5))
    return opened


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


async def test_idle_connections_beyond_the_limit_make_room_for_a_new_client(
    tmp_path: Path, ollama_double: tuple[OllamaDouble, str]
) -> None:
    """300 idle connections against a limit of 50 and 128 file descriptors: a new client is served."""
    server = {"max_connections": 50}
    async with serve(tmp_path, ollama_double[1], open_files=128, server=server) as served:
        idle = await open_idle(served.url, 300)  # without the limit, accept() runs out of descriptors at ~100
        # Served at all is the point: without the limit, the connection is reset.
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            async with http.get(f"{served.url}/api/version") as resp:
                assert resp.status == 200
            found = await scrape(http, served.url)  # the same (kept-alive) connection
        # The longest idle were closed first: the 250 opened first, each for a newer one.
        for reader, _ in idle[:250]:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        for _, writer in idle:
            writer.close()
        assert await served.stop() == 0
    assert found["llm_proxy_client_connections"] <= 50
    assert found["llm_proxy_client_connections_closed_idle_total"] >= 250
    assert found["llm_proxy_client_connections_refused_total"] == 0
    [row] = read_rows(served.db, 1)
    assert row["endpoint"] == "/api/version" and row["status_code"] == 200


async def test_when_every_connection_is_busy_a_new_one_is_refused_at_once(
    tmp_path: Path, ollama_double: tuple[OllamaDouble, str]
) -> None:
    double, backend = ollama_double
    double.hold = asyncio.Event()  # each stream sends its first line, then waits
    async with serve(tmp_path, backend, server={"max_connections": 3}) as served:
        sessions = [aiohttp.ClientSession() for _ in range(3)]
        try:
            streams = []
            for http in sessions:  # three answers in progress: every connection has a request in hand
                resp = await http.post(f"{served.url}/api/chat", json={"model": "llama3.2", "messages": USER})
                assert resp.status == 200 and await resp.content.readline()
                streams.append(resp)
            async with aiohttp.ClientSession() as http, http.get(f"{served.url}/api/version") as refused:
                assert refused.status == 503
                assert refused.headers["Connection"] == "close" and refused.headers["Retry-After"] == "1"
                assert (await refused.json())["error"].startswith("too many connections")
            async with aiohttp.ClientSession() as http, http.get(f"{served.url}/v1/models") as refused:
                assert refused.status == 503  # in OpenAI's shape under /v1, as every error there
                assert (await refused.json())["error"]["type"] == "unavailable_error"
            answer = await raw.send(served.url, raw.request("GET", b"/api/tags", {}))
            assert answer.status == 503 and b"server.max_connections" in answer.body
            double.hold.set()
            for resp in streams:
                await resp.read()
                resp.release()
        finally:
            for http in sessions:
                await http.close()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{served.url}/api/version") as resp:
                assert resp.status == 200  # room again
            found = await scrape(http, served.url)
        assert await served.stop() == 0
    assert found["llm_proxy_client_connections_refused_total"] == 3
    # Refused before a request was read: no row (the README says so).
    assert [r["endpoint"] for r in read_rows(served.db, 4)] == ["/api/chat"] * 3 + ["/api/version"]


async def silent_for(reader: asyncio.StreamReader) -> float:
    """Seconds until the proxy closes a connection this side no longer writes to (at most 10)."""
    started = time.monotonic()
    await asyncio.wait_for(reader.read(), 10)
    return time.monotonic() - started


async def test_silent_connections_are_closed_after_keepalive_timeout(
    tmp_path: Path, ollama_double: tuple[OllamaDouble, str]
) -> None:
    async with serve(tmp_path, ollama_double[1], server={"keepalive_timeout": 1}) as served:
        host, port = raw.address(served.url)
        never, half, after, body = [await asyncio.open_connection(host, port) for _ in range(4)]
        half[1].write(b"GET /api/vers")  # half a request line, then nothing
        after[1].write(b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n")  # one request, kept alive
        body[1].write(raw.request("POST", b"/api/chat", {b"Content-Length": b"100"}) + b'{"model": ')
        times = await asyncio.gather(*(silent_for(r) for r, _ in (never, half, after)))
        head = await asyncio.wait_for(body[0].readuntil(b"\r\n\r\n"), 10)
        for _, writer in (never, half, after, body):
            writer.close()
        assert await served.stop() == 0
    assert all(0.9 < t < 5 for t in times), times  # not aiohttp's 75 s
    assert head.startswith(b"HTTP/1.1 408 ")
    rows = read_rows(served.db, 2)
    assert [(r["endpoint"], r["status_code"]) for r in rows] == [("/api/version", 200), ("/api/chat", 408)]
    assert "sent nothing for 1 s in the middle of its request body" in rows[1]["error"]


def test_the_limit_closes_the_longest_idle_and_refuses_only_when_all_are_busy() -> None:
    limit = ConnectionLimit(3)
    for name in "abc":
        assert limit.make_room(lambda _: True) is None
        limit.opened(name)
    limit.started("a")
    limit.started("b")
    limit.finished("b")  # idle again, more recently than c
    assert limit.make_room(lambda _: True) == "c"  # the longest idle; "a" is busy
    limit.opened("d")
    assert limit.make_room(lambda conn: conn != "b") == "d"  # one that cannot be closed yet is passed over
    limit.opened("e")
    limit.started("b")
    limit.started("e")
    with pytest.raises(Full):
        limit.make_room(lambda _: True)
    limit.closed("a")
    assert limit.make_room(lambda _: True) is None and limit.open == 2
    assert (limit.closed_idle, limit.refused) == (2, 1)
