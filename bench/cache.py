"""Benchmark: what the answer cache costs on a miss, and how fast a hit is.

Starts, on 127.0.0.1, the fast fake llama-server (``bench/fake_backend.py``,
SSE, 200-token answers, no delay: the backend's own time stays small, so the
proxy's work is what shows) and two real ``llm-proxy serve`` processes in
front of it with the openai backend, each logging to its own SQLite file: one
with the cache off, one with ``cache.enabled: true``. Then, at concurrency 1,
in interleaved rounds so drift hits both alike:

- **miss**: temperature-0 requests, each with a prompt of its own, so every
  one qualifies, misses, is recorded as it streams and is stored (the LRU
  evicts once full): its latency against the same request with the cache off
  is the cache's added cost on a miss;
- **hit**: one temperature-0 request, repeated: answered from memory.

Both for ``/api/chat`` streamed (llama-server SSE translated to NDJSON) and
``/v1/chat/completions`` streamed (SSE frames relayed), and ``/api/chat`` with
``"stream": false``. Prints p50 and p99 latency in ms of each.

Run: python bench/cache.py [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from run import serve, wait_up  # bench/ is this script's folder, first on sys.path

ROOT = Path(__file__).resolve().parent.parent
CHUNKS = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_proxy(folder: Path, name: str, backend: str, cache: bool) -> tuple[subprocess.Popen[bytes], str]:
    sections = {"backend": {"type": "openai", "endpoint": backend}, "cache": {"enabled": cache}}
    proxy = serve(folder, name, sections, ROOT)
    return proxy.popen, proxy.url


def body(path: str, prompt: str, stream: bool) -> bytes:
    if path == "/api/chat":
        return orjson.dumps({
            "model": "bench", "messages": [{"role": "user", "content": prompt}], "stream": stream,
            "options": {"temperature": 0},
        })  # fmt: skip
    return orjson.dumps({
        "model": "bench", "messages": [{"role": "user", "content": prompt}], "stream": stream,
        "temperature": 0,
    })  # fmt: skip


async def timed(session: aiohttp.ClientSession, url: str, data: bytes) -> tuple[float, str]:
    started = time.perf_counter()
    async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as resp:
        await resp.read()
        assert resp.status == 200, resp.status
        return time.perf_counter() - started, resp.headers.get("X-Cache", "-")


def ms(values: list[float], p: float) -> str:
    ordered = sorted(values)
    return f"{ordered[max(0, int(p / 100 * len(ordered) + 0.5) - 1)] * 1000:7.2f}"


async def measure(off: str, on: str, requests: int) -> None:
    cases = (("/api/chat", True), ("/v1/chat/completions", True), ("/api/chat", False))
    async with aiohttp.ClientSession() as session:
        for url in (off, on):
            await wait_up(session, url, "/health")
        print(f"{'route':34} {'':10} {'p50 ms':>7} {'p99 ms':>7}")
        for path, stream in cases:
            plain: list[float] = []
            miss: list[float] = []
            hit: list[float] = []
            same = body(path, "the same question", stream)
            for warm in range(20):  # connections, imports, the catalog: all warm first
                await timed(session, off + path, body(path, f"warm {warm}", stream))
                await timed(session, on + path, body(path, f"warm {warm}", stream))
            await timed(session, on + path, same)
            for i in range(requests):
                unique = body(path, f"question {i} {path} {stream}", stream)
                seconds, _ = await timed(session, off + path, unique)
                plain.append(seconds)
                seconds, state = await timed(session, on + path, unique)
                assert state == "miss", state
                miss.append(seconds)
                seconds, state = await timed(session, on + path, same)
                assert state == "hit", state
                hit.append(seconds)
            label = f"{path} {'stream' if stream else 'whole'}"
            for name, values in (("cache off", plain), ("miss", miss), ("hit", hit)):
                print(f"{label:34} {name:10} {ms(values, 50)} {ms(values, 99)}")
            added = (statistics.median(miss) - statistics.median(plain)) * 1000
            print(f"{label:34} {'miss adds':10} {added:7.2f} (p50, ms)")


def own_work(rounds: int = 2000) -> None:
    """The cache's own work on one miss, in-process: the key, and recording a 200-line answer."""
    sys.path.insert(0, str(ROOT))
    from llm_proxy import config as config_mod
    from llm_proxy.backends.base import Call, Lines
    from llm_proxy.cache import policy
    from llm_proxy.cache.answers import AnswerCache

    config = config_mod.from_dict({"cache": {"enabled": True, "max_entries": 100}})
    cache = AnswerCache(config.cache)
    chunk = {"model": "bench", "created_at": "2026-11-22T04:05:06Z", "message": {"role": "assistant"}}
    batches = [[(orjson.dumps({**chunk, "n": i}), {**chunk, "n": i})] for i in range(CHUNKS)]
    batches[-1][0][1]["done"] = True
    messages = [{"role": "system", "content": "You are a voice assistant. " * 40}]

    async def nothing() -> Any:
        yield []

    started = time.perf_counter()
    for i in range(rounds):
        body = {"model": "bench", "messages": [*messages, {"role": "user", "content": f"q{i}"}],
                "options": {"temperature": 0}, "stream": True}  # fmt: skip
        call = Call("/api/chat", "POST", "/api/chat", body, b"", "", "bench", "bench", 0.0)
        key = policy.key_for(config, call)
        assert key is not None
        cache.get(key)
        recording = cache.record(Lines(200, "application/x-ndjson", nothing()))
        for batch in batches:
            recording._lines(batch)
        cache.finish(key, recording, True, 5, 10)
    each = (time.perf_counter() - started) / rounds * 1000
    print(f"the cache's own work per miss (key of a 1 KB chat, {CHUNKS} lines recorded, kept): {each:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300, help="requests of each kind per route")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port = free_port()
        fake = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "fake_backend.py"), "--kind", "sse", "--port", str(port),
             "--chunks", str(CHUNKS)],
        )  # fmt: skip
        backend = f"http://127.0.0.1:{port}"
        procs = [fake]
        try:
            off, off_url = start_proxy(folder, "off", backend, cache=False)
            on, on_url = start_proxy(folder, "on", backend, cache=True)
            procs += [off, on]
            print(f"fake llama-server: {CHUNKS}-token answers; {args.requests} requests of each kind")
            asyncio.run(measure(off_url, on_url, args.requests))
            own_work()
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    main()
