"""Latency of the web UI's JSON API on a large audit trail (target: each p50 <= 50 ms).

Fills a database with ``--rows`` exchanges (1,000,000 by default) spread over
30 days, shaped like Home Assistant's chat rounds: the first rows go through
the proxy's own store (compacted bodies, turns, the FTS index), the rest are
copies of those made in SQL with their own timestamps, models and statuses.
Then it serves the database with the real app on 127.0.0.1 and times, over
HTTP, :data:`RUNS` times each: the first list page, a page half-way down, a
filtered page, two searches, one exchange, one turn, and the dashboard over
24 hours, 7 and 30 days. The dashboard keeps the numbers of closed buckets
(llm_proxy/ui/dashboard.py), so its first request, printed apart, is the one
that reads the rows.

Run from the repository root: ``PYTHONPATH=$PWD python bench/ui_api.py [--rows N] [--db PATH] [--pg URL]``.
A database from an earlier run is reused when ``--db`` names one with enough rows. ``--pg URL``
copies it into that PostgreSQL database (``migrate --to``'s copy; once) and times the UI there.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llm_proxy import config as config_mod
from llm_proxy.audit import pg_import, reading
from llm_proxy.audit.dburl import asyncpg, masked
from llm_proxy.audit.exchange import Exchange
from llm_proxy.audit.store import Store
from llm_proxy.errors import AuditError
from llm_proxy.server.app import create_app
from tests import ha_turn

SEED = 2000  # rows written through the store; the rest are copies of these
DAYS = 30
MODELS = ["assistant", "smollm2", "qwen3:8b", "llama3.2"]
WORDS = [
    "kitchen",
    "light",
    "bedroom",
    "heating",
    "weather",
    "music",
    "timer",
    "garage",
    "door",
    "blinds",
    "temperature",
    "vacuum",
    "shopping",
    "list",
    "alarm",
    "garden",
    "sprinkler",
    "fan",
    "tv",
    "news",
]
RUNS = 40  # requests per measurement


def prompt(rng: random.Random, i: int) -> str:
    return f"request {i}: " + " ".join(rng.choice(WORDS) for _ in range(6))


async def seed(path: str, start: datetime, step: float, rng: random.Random) -> None:
    store = Store(path)
    await store.open()
    system = {"role": "system", "content": ha_turn.SYSTEM}
    for first in range(0, SEED, 250):
        rows = []
        for i in range(first, first + 250):
            model = MODELS[i % len(MODELS)]
            e = Exchange(endpoint="/api/chat", method="POST", backend_type="openai", model=model)
            e.started = (start + timedelta(seconds=i * step)).timestamp()
            asked = {"role": "user", "content": prompt(rng, i)}
            body = {"model": e.model, "messages": [system, asked], "tools": ha_turn.TOOLS, "stream": True}
            e.request_body = orjson.dumps(body)
            e.backend_request = {**body, "stream_options": {"include_usage": True}}
            e.prompt, e.response = asked["content"], "Turned on the " + rng.choice(WORDS) + "."
            e.tool_calls = [{"function": {"name": "HassTurnOn", "arguments": {"name": rng.choice(WORDS)}}}]
            e.response_body = {"model": e.model, "message": {"role": "assistant", "content": e.response}}
            e.status_code = 200 if i % 50 else rng.choice([404, 500, 502])
            e.error = None if e.status_code == 200 else "backend trouble"
            e.latency_ms, e.ttfb_ms, e.ttft_ms = 300 + rng.randrange(900), 80, 120 + rng.randrange(200)
            e.prompt_tokens, e.completion_tokens = 1800 + rng.randrange(400), 10 + rng.randrange(60)
            e.stream, e.client_addr, e.key_name = True, "192.168.1.20", "home-assistant"
            rows.append(e.row())
        await store.insert(rows)
    await store.close()


def grow(path: str, total: int, start: datetime, step: float) -> None:
    """Copies of the seed rows, each copy later in time, until ``total`` rows."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    columns = [r[1] for r in conn.execute("PRAGMA table_info(logs)") if r[1] != "id"]
    varied = {
        "timestamp": "strftime('%Y-%m-%dT%H:%M:%fZ', "
        "julianday(:start) + (:offset + id - 1) * :step / 86400.0)",
        "model": "CASE (id + :copy) % 4 WHEN 0 THEN 'assistant' WHEN 1 THEN 'smollm2' WHEN 2 THEN 'qwen3:8b' "
        "ELSE 'llama3.2' END",
        "turn_id": "turn_id + :offset",
        "latency_ms": "latency_ms + (:copy * 7) % 300",
    }
    select = ", ".join(varied.get(c, c) for c in columns)
    sql = (
        f"INSERT INTO logs ({', '.join(columns)}) SELECT {select} FROM logs WHERE id <= :seed AND id <= :left"
    )
    have = conn.execute("SELECT count(*) FROM logs").fetchone()[0]
    copy = 1
    began = time.perf_counter()
    while have < total:
        params = {"start": start.strftime("%Y-%m-%dT%H:%M:%S.%f"), "offset": have, "step": step, "copy": copy,
                  "seed": SEED, "left": total - have}  # fmt: skip
        conn.execute(sql, params)
        conn.commit()
        have = conn.execute("SELECT max(id) FROM logs").fetchone()[0]
        copy += 1
        if copy % 50 == 0:
            print(f"  {have:,} rows ({time.perf_counter() - began:.0f} s)", flush=True)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("ANALYZE")
    conn.close()


def fill(path: str, total: int) -> None:
    now = datetime.now(UTC)
    start = now - timedelta(days=DAYS)
    step = DAYS * 86400 / total
    rng = random.Random(16)
    began = time.perf_counter()
    asyncio.run(seed(path, start, step, rng))
    grow(path, total, start, step)
    size = os.path.getsize(path) / 1e6
    print(f"filled {total:,} rows in {time.perf_counter() - began:.0f} s: {size:,.0f} MB")


async def measure(path: str, pg: str | None = None) -> dict[str, float]:
    """Serve the trail (the file, or its copy in PostgreSQL at ``pg``) and time each case."""
    database = {"url": pg} if pg else {"path": path}
    config = config_mod.from_dict({"database": database, "backend": {"endpoint": "http://127.0.0.1:9"}})
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/ui/api"
    reader = reading.connect(pg or path)
    top = present(reader.one("SELECT max(id) FROM logs"))[0]
    turn = present(reader.one("SELECT turn_id FROM logs WHERE id = ?", (top - 10,)))[0]
    reader.close()
    cases = {
        "list, first page": "exchanges?limit=50",
        "list, half-way down": f"exchanges?limit=50&before={top // 2}",
        "list, model + 5xx + 7d": "exchanges?limit=50&model=smollm2&status=5xx&since=7d",
        "search 'kitchen light'": "exchanges?limit=50&q=kitchen+light",
        "search, rare words": "exchanges?limit=50&q=request+1234",
        "one exchange": f"exchanges/{top - 1234}",
        "one turn": f"turns/{turn}",
        "dashboard 24h": "dashboard?range=24h",
        "dashboard 7d": "dashboard?range=7d",
        "dashboard 30d": "dashboard?range=30d",
    }
    results = {}
    async with aiohttp.ClientSession() as http:
        for name, path_ in cases.items():
            times = []
            for _ in range(RUNS):
                began = time.perf_counter()
                async with http.get(f"{url}/{path_}") as resp:
                    body = await resp.read()
                    assert resp.status == 200, (name, resp.status, body[:200])
                times.append((time.perf_counter() - began) * 1000)
            results[name] = statistics.median(times)
            # The dashboard computes a bucket once and keeps it: its first request is the cold one.
            cold = f", first {times[0]:,.0f} ms" if name.startswith("dashboard") else ""
            print(f"{name:28} p50 {results[name]:7.1f} ms   p90 {sorted(times)[int(RUNS * 0.9)]:7.1f} ms"
                  f"   ({len(body):,} bytes{cold})", flush=True)  # fmt: skip
    await runner.cleanup()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", help="database to fill, or to reuse when it has the rows already")
    parser.add_argument(
        "--pg",
        metavar="URL",
        help="copy the trail into this PostgreSQL database (once) and time it there",
    )
    args = parser.parse_args(argv)
    path = args.db or str(Path(tempfile.mkdtemp()) / "ui_bench.db")
    have = 0
    if os.path.exists(path):
        with sqlite3.connect(path) as conn:
            have = conn.execute("SELECT count(*) FROM logs").fetchone()[0]
    if have < args.rows:
        if have:
            os.unlink(path)
        fill(path, args.rows)
    else:
        print(f"reusing {path}: {have:,} rows")
    if args.pg:
        reader = reading.connect(args.pg) if _has_logs(args.pg) else None
        copied = present(reader.one("SELECT count(*) FROM logs"))[0] if reader else 0
        if reader:
            reader.close()
        if copied < args.rows:
            began = time.perf_counter()
            pg_import.copy(path, args.pg)
            asyncio.run(_analyze(args.pg))  # what autovacuum does after a big copy, before the timing
            print(f"copied into {masked(args.pg)} in {time.perf_counter() - began:.0f} s", flush=True)
        print(f"timing on PostgreSQL {masked(args.pg)}")
    results = asyncio.run(measure(path, args.pg))
    slow = {k: round(v, 1) for k, v in results.items() if v > 50}
    print("all within 50 ms" if not slow else f"over 50 ms: {slow}")


async def _analyze(url: str) -> None:
    conn = await asyncpg().connect(url)
    try:
        await conn.execute("ANALYZE logs")
    finally:
        await conn.close()


def _has_logs(url: str) -> bool:
    try:
        reading.connect(url).close()
    except AuditError:
        return False
    return True


def present(row: tuple[Any, ...] | None) -> tuple[Any, ...]:
    assert row is not None, "the trail is empty"
    return row


if __name__ == "__main__":
    main()
