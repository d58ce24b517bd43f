"""Benchmark: what the router costs per request with four backends against one.

Starts four fast fake llama-servers (``bench/fake_backend.py``, SSE) and two
``llm-proxy serve`` processes with full logging to SQLite: one with ``backend:``
alone, one with four named ``backends:`` where the model is served by the
last one only (the first three have ``serves`` patterns that do not match, the
fourth is found through its discovered, cached model list), so each request
walks the whole routing table. Both are driven with the same Ollama
``/api/chat`` requests (non-streaming and streaming), and ``/api/tags`` (one
list against the merge of four), taking turns in short rounds so that the
machine's drift hits both alike. Prints p50/p99 latency and the difference.
``--baseline PATH`` adds a third proxy run from another checkout (one without
the router, such as the main branch before it) with the one backend.

Run: python bench/routing.py [--requests N] [--rounds R] [--baseline PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import machine, start_fake, table, wait_up  # noqa: E402
from run import serve as start  # noqa: E402

ROOT = HERE.parent
CHUNKS = 20


async def once(http: aiohttp.ClientSession, url: str, path: str, body: bytes | None) -> float:
    started = time.perf_counter()
    if body is None:
        async with http.get(url + path) as resp:
            await resp.read()
    else:
        async with http.post(url + path, data=body) as resp:
            await resp.read()
    assert resp.status == 200, (url, path, resp.status)
    return time.perf_counter() - started


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


async def main(requests: int, rounds: int, baseline: Path | None) -> str:
    fakes = [start_fake("sse", CHUNKS) for _ in range(4)]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        one = start(workdir, "one", {"backend": {"type": "openai", "endpoint": fakes[3].url}})
        named = [
            {"name": f"b{i}", "type": "openai", "endpoint": fake.url, "serves": [f"other-{i}-*"]}
            for i, fake in enumerate(fakes[:3])
        ]
        named.append({"name": "b3", "type": "openai", "endpoint": fakes[3].url})
        four = start(workdir, "four", {"backends": named})
        proxies = {"one": one, "four": four}
        if baseline is not None:
            proxies["before"] = start(
                workdir, "before", {"backend": {"type": "openai", "endpoint": fakes[3].url}}, baseline
            )
        procs = [*fakes, *proxies.values()]
        try:
            async with aiohttp.ClientSession() as http:
                for fake in fakes:
                    await wait_up(http, fake.url, "/health")
                for proxy in proxies.values():
                    await wait_up(http, proxy.url, "/health/live")
                chat = {
                    "model": "bench",
                    "messages": [{"role": "user", "content": "hi"}],
                    "options": {"num_predict": CHUNKS},
                }
                cases = {
                    "chat, stream: false": ("/api/chat", orjson.dumps({**chat, "stream": False})),
                    "chat, streamed": ("/api/chat", orjson.dumps({**chat, "stream": True})),
                    "/api/tags": ("/api/tags", None),
                }
                rows = []
                for case, (path, body) in cases.items():
                    times: dict[str, list[float]] = {name: [] for name in proxies}
                    for proxy in proxies.values():  # warm up: connections, catalogs
                        for _ in range(20):
                            await once(http, proxy.url, path, body)
                    for _ in range(rounds):
                        for name, proxy in proxies.items():
                            for _ in range(requests // rounds):
                                times[name].append(await once(http, proxy.url, path, body))
                    p50 = {k: statistics.median(v) * 1000 for k, v in times.items()}
                    p99 = {k: pct(v, 99) * 1000 for k, v in times.items()}
                    row = [
                        case,
                        f"{p50['one']:.2f}",
                        f"{p50['four']:.2f}",
                        f"{p50['four'] - p50['one']:+.2f}",
                    ]
                    row += [f"{p99['one']:.2f}", f"{p99['four']:.2f}"]
                    if baseline is not None:
                        row += [f"{p50['before']:.2f}", f"{p50['one'] - p50['before']:+.2f}"]
                    rows.append(row)
        finally:
            for proc in procs:
                proc.popen.terminate()
            for proc in procs:
                proc.popen.wait(10)
    head = ["request", "p50 one (ms)", "p50 four (ms)", "four − one", "p99 one", "p99 four"]
    if baseline is not None:
        head += ["p50 before (ms)", "one − before"]
    return f"{machine()}\n{requests} requests per case and proxy, concurrency 1, {rounds} rounds\n\n" + table(
        head, rows
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--baseline", type=Path, metavar="PATH", help="another checkout to compare with")
    args = parser.parse_args()
    print(asyncio.run(main(args.requests, args.rounds, args.baseline)))
