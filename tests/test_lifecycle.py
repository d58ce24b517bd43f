"""The real ``llm-proxy`` process: start-up, SIGTERM with requests in flight, no row lost."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from .conftest import read_rows
from .ollama_double import OllamaDouble
from .process import free_port, serve

USER = [{"role": "user", "content": "hi"}]


async def stream_chat(url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        body = {"model": "llama3.2", "messages": USER}
        async with http.post(f"{url}/api/chat", json=body) as resp:
            return [orjson.loads(line) async for line in resp.content]


async def backend_has(double: OllamaDouble, count: int) -> None:
    """Wait (at most 10 s) until ``count`` requests reached the backend."""
    for _ in range(500):
        if len(double.requests) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"only {len(double.requests)} of {count} requests reached the backend")


async def test_sigterm_lets_in_flight_streams_finish(
    tmp_path: Path, ollama_double: tuple[OllamaDouble, str]
) -> None:
    double, backend = ollama_double
    double.hold = asyncio.Event()
    async with serve(tmp_path, backend) as served:
        streams = [asyncio.create_task(stream_chat(served.url)) for _ in range(20)]
        await backend_has(double, 20)
        mark = len(served.stderr)
        served.proc.send_signal(signal.SIGTERM)
        await served.wait_log("shutting down: waiting up to", after=mark)  # the shutdown has begun
        double.hold.set()  # the backend finishes its answers after the signal
        results = await asyncio.gather(*streams)
        assert await served.stop(signalled=True) == 0
    assert all(lines[-1].get("done") is True for lines in results)
    rows = read_rows(served.db, 20)
    assert len(rows) == 20
    assert all(r["status_code"] == 200 and r["error"] is None for r in rows)
    assert all(r["response"] == "The sky is blue." for r in rows)


async def test_sigterm_cuts_streams_after_the_shutdown_timeout_and_records_them(
    tmp_path: Path, ollama_double: tuple[OllamaDouble, str]
) -> None:
    double, backend = ollama_double
    double.hold = asyncio.Event()  # never set: these streams would run forever
    async with serve(tmp_path, backend, server={"shutdown_timeout": 1}) as served:
        streams = [asyncio.create_task(stream_chat(served.url)) for _ in range(5)]
        await backend_has(double, 5)
        assert await served.stop() == 0
    await asyncio.gather(*streams, return_exceptions=True)
    double.hold.set()
    rows = read_rows(served.db, 5)
    assert len(rows) == 5
    assert all(r["response"] == "The" and "shutting down" in r["error"] for r in rows)


async def test_startup_with_a_dead_backend_still_serves(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with serve(tmp_path, dead) as served:
        async with aiohttp.ClientSession() as http, http.get(f"{served.url}/health") as resp:
            assert resp.status == 503
        served.proc.send_signal(signal.SIGINT)
        assert await served.stop(signalled=True) == 0
    assert served.db.exists()
