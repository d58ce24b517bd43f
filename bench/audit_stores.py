"""The audit trail's two stores side by side: writer rows/s, and the p50 each adds to a request.

- **writer rows/s**: 20,000 realistic rows (2 KB prompt, 1 KB answer, the
  request body; bench/audit_writer.py's) submitted at once and drained by the
  Recorder into a SQLite file, then into a PostgreSQL database on 127.0.0.1
  (a server this script starts: tests/postgres.py, Debian's binaries). Three
  runs each, the median. CPU per row counts this process only: PostgreSQL's own
  work happens in its server processes.
- **added p50**: a real ``llm-proxy serve`` per store in front of the fast fake
  Ollama (bench/fake_backend.py), requests at concurrency 1 sent directly and
  through each proxy in interleaved rounds; p50 and p99, and what each proxy
  adds to the direct p50. The write itself is off the request's path (the
  handler queues the row), so the difference between the stores is small by
  design; this shows how small.

Run from the repository root: ``PYTHONPATH=$PWD python bench/audit_stores.py``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as harness  # bench/run.py: the fake backend, the one-request client, percentiles
from audit_writer import writer_rate

from llm_proxy.audit.pg_store import PostgresStore
from llm_proxy.audit.store import Store
from tests.postgres import running

HERE = Path(__file__).resolve().parent
ROWS = 20_000
ROUNDS = 10
PER_ROUND = 100  # requests per target per round


def start_proxy(folder: Path, name: str, backend: harness.Proc, database: dict[str, str]) -> harness.Proc:
    sections = {"backend": {"type": "ollama", "endpoint": backend.url}, "database": database}
    return harness.serve(folder, name, sections, HERE.parent)


async def added_p50(folder: Path, url: str) -> list[tuple[str, list[float]]]:
    backend = harness.start_fake("ndjson", harness.CHUNKS)
    sqlite_proxy = start_proxy(folder, "sqlite", backend, {"path": str(folder / "proxy.db")})
    pg_proxy = start_proxy(folder, "postgresql", backend, {"url": url, "spool": str(folder / "spool.db")})
    body = harness.chat_body("ndjson", stream=False)
    targets = [
        harness.Target("direct", f"{backend.url}/api/chat", body),
        harness.Target("through llm-proxy, SQLite", f"{sqlite_proxy.url}/api/chat", body, sqlite_proxy),
        harness.Target("through llm-proxy, PostgreSQL", f"{pg_proxy.url}/api/chat", body, pg_proxy),
    ]
    try:
        async with aiohttp.ClientSession() as session:
            await harness.wait_up(session, backend.url, "/api/version")
            for proxy in (sqlite_proxy, pg_proxy):
                await harness.wait_up(session, proxy.url, "/health/live")
            for target in targets:  # warm up
                await harness.load(session, target, 50, 1)
                target.latencies.clear()
            for _ in range(ROUNDS):
                for target in targets:
                    await harness.load(session, target, PER_ROUND, 1)
    finally:
        for proc in (sqlite_proxy, pg_proxy, backend):
            proc.popen.terminate()
            proc.popen.wait(10)
    return [(t.name, t.latencies) for t in targets]


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, running() as pg:
        folder = Path(tmp)
        rates: dict[str, list[tuple[float, float]]] = {"SQLite": [], "PostgreSQL": []}
        for i in range(3):
            rates["SQLite"].append(await writer_rate(Store(str(folder / f"rate{i}.db")), ROWS))
            rates["PostgreSQL"].append(
                await writer_rate(PostgresStore(pg.database(), str(folder / "spool.db")), ROWS)
            )
        latencies = await added_p50(folder, pg.database())
    print(f"writer alone, {ROWS:,} rows of 2 KB prompt + 1 KB answer + body (median of 3 runs):")
    for name, runs in rates.items():
        each = ", ".join(f"{r:,.0f}" for r, _ in sorted(runs))
        cpu = statistics.median(c for _, c in runs)
        rate = statistics.median(r for r, _ in runs)
        print(f"  {name:11} {rate:>8,.0f} rows/s ({each}); {cpu:.0f} us CPU/row in this process")
    direct = harness.pct(latencies[0][1], 50)
    print(f"\nnon-streaming /api/chat at concurrency 1, {ROUNDS} interleaved rounds of {PER_ROUND}, ms:")
    for name, values in latencies:
        p50, p99 = harness.pct(values, 50), harness.pct(values, 99)
        added = "" if name == "direct" else f"  added p50 {harness.ms(p50 - direct)}"
        print(f"  {name:32} p50 {harness.ms(p50)}  p99 {harness.ms(p99)}{added}")


if __name__ == "__main__":
    asyncio.run(main())
