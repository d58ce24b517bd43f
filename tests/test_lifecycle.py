"""The real ``llm-proxy`` process: start-up, SIGTERM with requests in flight, no row lost."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from .conftest import read_rows
from .ollama_double import OllamaDouble

USER = [{"role": "user", "content": "hi"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Started = tuple[asyncio.subprocess.Process, str, Path]


async def start_proxy(tmp_path: Path, backend: str, **server: Any) -> Started:
    """Run ``python -m llm_proxy serve`` with a config file, as a user would."""
    port = free_port()
    db = tmp_path / "audit.db"
    config = {
        "server": {"host": "127.0.0.1", "port": port, **server},
        "backend": {"type": "ollama", "endpoint": backend},
        "database": {"path": str(db)},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llm_proxy", "serve", "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(200):  # bounded: 10 s
            try:
                async with http.get(f"{url}/health") as resp:
                    if resp.status in (200, 503):
                        return proc, url, db
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    proc.kill()
    raise AssertionError(f"proxy did not start: {(await proc.communicate())[1].decode()}")


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
    proc, url, db = await start_proxy(tmp_path, backend)
    streams = [asyncio.create_task(stream_chat(url)) for _ in range(20)]
    await backend_has(double, 20)
    proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    double.hold.set()  # the backend finishes its answers after the signal
    results = await asyncio.gather(*streams)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert all(lines[-1].get("done") is True for lines in results)
    rows = read_rows(db, 20)
    assert len(rows) == 20
    assert all(r["status_code"] == 200 and r["error"] is None for r in rows)
    assert all(r["response"] == "The sky is blue." for r in rows)


async def test_sigterm_cuts_streams_after_the_shutdown_timeout_and_records_them(
    tmp_path: Path, ollama_double: tuple[OllamaDouble, str]
) -> None:
    double, backend = ollama_double
    double.hold = asyncio.Event()  # never set: these streams would run forever
    proc, url, db = await start_proxy(tmp_path, backend, shutdown_timeout=1)
    streams = [asyncio.create_task(stream_chat(url)) for _ in range(5)]
    await backend_has(double, 5)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    await asyncio.gather(*streams, return_exceptions=True)
    double.hold.set()
    rows = read_rows(db, 5)
    assert len(rows) == 5
    assert all(r["response"] == "The" and "shutting down" in r["error"] for r in rows)


async def test_startup_with_a_dead_backend_still_serves(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    proc, url, db = await start_proxy(tmp_path, dead)
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/health") as resp:
            assert resp.status == 503
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert db.exists()
