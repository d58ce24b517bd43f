"""Several real ``llm-proxy serve`` processes writing one trail in a real PostgreSQL, and its outages.

Issue 18's checks: three proxies × PER_PROXY requests into one database (rows =
requests, no duplicate ids); the server stopped for 20 s during the load and
started again (every row arrives, /health/ready says what happens meanwhile);
SIGTERM during an outage and a restart (every row arrives). The backend is the
llama-server double; the requests are whole /v1/chat/completions answers, so
the double costs little and the proxies and the database do the work.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from .llama_double import LlamaServerDouble
from .postgres import PASSWORD, PostgresServer
from .process import Served, serve
from .trail import Trail

PER_PROXY = 2000  # requests each of the three proxies takes
CONCURRENCY = 8  # requests in flight per proxy
OUTAGE = 20.0  # seconds the server is down during the load


async def send(http: aiohttp.ClientSession, url: str, tag: str, start: int, count: int) -> list[int]:
    """``count`` chat requests, CONCURRENCY at a time; their status codes."""
    statuses: list[int] = []
    numbers = iter(range(start, start + count))

    async def worker() -> None:
        for n in numbers:
            body = {
                "model": "smollm2",
                "stream": False,
                "messages": [{"role": "user", "content": f"{tag} {n}"}],
            }
            async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
                await resp.read()
                statuses.append(resp.status)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return statuses


async def ready(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{url}/health/ready") as resp:
        return resp.status, await resp.json()


async def metric(http: aiohttp.ClientSession, url: str, name: str) -> float:
    """One value from the proxy's /metrics."""
    async with http.get(f"{url}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


async def count(trail: Trail) -> int:
    found = await asyncio.to_thread(trail.query, "SELECT count(*) AS n FROM logs")
    return int(found[0]["n"]) if found else 0


async def until_rows(trail: Trail, expected: int, within: float) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:  # polling: the rows arrive from other processes
        n = await count(trail)
        if n >= expected or loop.time() > deadline:
            return n
        await asyncio.sleep(0.25)


@contextlib.asynccontextmanager
async def proxies(tmp_path: Path, endpoint: str, url: str, how_many: int) -> AsyncIterator[list[Served]]:
    async with contextlib.AsyncExitStack() as stack:
        started = []
        for i in range(how_many):
            folder = tmp_path / f"proxy{i}"
            folder.mkdir(exist_ok=True)
            started.append(
                await stack.enter_async_context(
                    serve(
                        folder,
                        endpoint,
                        backend={"type": "openai"},
                        database={"url": url},
                    )
                )
            )
        yield started


def assert_every_request_once(trail: Trail, expected: set[str]) -> None:
    rows = trail.query("SELECT id, prompt, status_code FROM logs")
    prompts = [r["prompt"] for r in rows]
    assert len({r["id"] for r in rows}) == len(rows)  # no id twice
    assert len(prompts) == len(set(prompts)) == len(expected)  # no row lost or doubled
    assert set(prompts) == expected
    assert {r["status_code"] for r in rows} == {200}


async def test_three_proxies_one_trail_and_a_20_s_outage(
    postgres: PostgresServer, migrated: str, tmp_path: Path, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    trail = Trail("postgresql", postgres.database(migrated), tmp_path / "unused-spool.db", postgres)
    async with proxies(tmp_path, llama_double[1], trail.target, 3) as served, aiohttp.ClientSession() as http:
        third = PER_PROXY // 3
        # A first third with the server up.
        results = await asyncio.gather(*(send(http, p.url, f"p{i}", 0, third) for i, p in enumerate(served)))
        assert {s for r in results for s in r} == {200}
        postgres.stop()
        try:
            # The load goes on while the server is away: every request is answered.
            loads = [
                asyncio.create_task(send(http, p.url, f"p{i}", third, PER_PROXY - 2 * third))
                for i, p in enumerate(served)
            ]
            await asyncio.sleep(1.0)
            status, body = await ready(http, served[0].url)
            assert status == 200 and body["status"] == "degraded", body
            note = body["checks"]["database"]
            assert note.startswith("spooling: PostgreSQL postgresql://llmproxy:***@127.0.0.1"), note
            assert PASSWORD not in note and "llm_proxy-spool.db" in note
            assert await metric(http, served[0].url, "llm_proxy_audit_spooled_rows") > 0
            await asyncio.sleep(OUTAGE - 1.0)
            results = await asyncio.gather(*loads)
            assert {s for r in results for s in r} == {200}
        finally:
            postgres.start()
        # And a last third once it is back, while the spools drain.
        results = await asyncio.gather(
            *(send(http, p.url, f"p{i}", PER_PROXY - third, third) for i, p in enumerate(served))
        )
        assert {s for r in results for s in r} == {200}
        assert await until_rows(trail, 3 * PER_PROXY, within=90) == 3 * PER_PROXY
        for p in served:
            status, body = await ready(http, p.url)
            assert (status, body["status"]) == (200, "ready"), body
            assert await metric(http, p.url, "llm_proxy_audit_spooled_rows") == 0
            assert await metric(http, p.url, "llm_proxy_audit_rows_sent_from_spool_total") > 0
        for p in served:
            assert await p.stop() == 0
            assert not any(PASSWORD in line for line in p.stderr)
            assert any("does not take writes" in line for line in p.stderr)
            assert any("every spooled row is in" in line for line in p.stderr)
    assert_every_request_once(trail, {f"p{i} {n}" for i in range(3) for n in range(PER_PROXY)})


async def test_sigterm_during_an_outage_keeps_the_rows_for_the_next_start(
    postgres: PostgresServer, migrated: str, tmp_path: Path, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    trail = Trail("postgresql", postgres.database(migrated), tmp_path / "unused-spool.db", postgres)
    async with aiohttp.ClientSession() as http:
        async with proxies(tmp_path, llama_double[1], trail.target, 1) as [proxy]:
            assert set(await send(http, proxy.url, "q", 0, 100)) == {200}
            assert await until_rows(trail, 100, within=20) == 100
            postgres.stop()
            try:
                assert set(await send(http, proxy.url, "q", 100, 200)) == {200}
                assert await proxy.stop() == 0  # SIGTERM while the server is down
            finally:
                postgres.start()
            assert any("200 audit rows stay in the spool" in line for line in proxy.stderr), proxy.stderr
        assert await count(trail) == 100
        async with proxies(tmp_path, llama_double[1], trail.target, 1) as [again]:
            assert await until_rows(trail, 300, within=30) == 300
            assert any("200 audit rows wait in the spool" in line for line in again.stderr)
            assert await again.stop() == 0
    assert_every_request_once(trail, {f"q {n}" for n in range(300)})


async def test_the_rounds_of_one_turn_share_it_across_proxies(
    postgres: PostgresServer, migrated: str, tmp_path: Path, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    """Behind a load balancer each round of a spoken request may reach another proxy."""
    trail = Trail("postgresql", postgres.database(migrated), tmp_path / "unused-spool.db", postgres)
    system = {"role": "system", "content": "You control the house."}
    asked = {"role": "user", "content": "Turn on the kitchen light"}
    called = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "HassTurnOn",
                                                                             "arguments": {}}}]}  # fmt: skip
    result = {"role": "tool", "content": '{"success": true}'}
    rounds = [
        [system, asked],
        [system, asked, called, result],
        [system, {"role": "user", "content": "Thanks"}],
    ]
    headers = {"User-Agent": "HomeAssistant/2026.11"}
    async with proxies(tmp_path, llama_double[1], trail.target, 2) as [a, b], aiohttp.ClientSession() as http:
        for proxy, messages in zip((a, b, a), rounds, strict=True):
            body = {"model": "smollm2", "stream": False, "messages": messages}
            async with http.post(f"{proxy.url}/api/chat", json=body, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
        assert await until_rows(trail, 3, within=20) == 3
    rows = trail.query("SELECT id, turn_id FROM logs ORDER BY id")
    assert [r["turn_id"] for r in rows] == [rows[0]["id"], rows[0]["id"], rows[2]["id"]]
