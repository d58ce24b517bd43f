"""The audit writer on its own: rows/s, a user's write lock wait, and the event loop's lag.

Three numbers for the thread that runs the writer's SQLite connection:

- rows/s: 20,000 realistic rows (2 KB prompt, 1 KB answer, the request body)
  submitted at once and drained by the Recorder;
- a user's ``BEGIN IMMEDIATE`` (as ``sqlite3 llm_proxy.db`` takes it) every
  20 ms from another thread while the writer takes a steady 2,000 rows/s:
  how long it waits for the write lock (p50/p99/max);
- the event loop's lag meanwhile: how late a 1 ms timer fires (p99/max),
  which is what every request handler on that loop waits too.

Run from the repository root: ``PYTHONPATH=$PWD python bench/audit_writer.py``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llm_proxy.audit.exchange import Exchange
from llm_proxy.audit.recorder import Recorder
from llm_proxy.audit.store import Store
from llm_proxy.audit.stores import AuditStore

BODY = orjson.dumps({"model": "bench", "messages": [{"role": "user", "content": "x" * 2000}]})


def exchange() -> Exchange:
    e = Exchange(endpoint="/api/chat", method="POST", backend_type="openai", request_body=BODY)
    e.prompt, e.response, e.status_code = "x" * 2000, "y" * 1000, 200
    e.finish()
    return e


async def rows_per_second(folder: Path, n: int = 20_000) -> tuple[float, float]:
    """Rows/s, and CPU microseconds per row (all threads; steadier on a busy machine)."""
    return await writer_rate(Store(str(folder / "rate.db")), n)


async def writer_rate(store: AuditStore, n: int) -> tuple[float, float]:
    """``n`` rows submitted at once and drained into ``store`` (either kind): rows/s, CPU us per row."""
    await store.open()
    recorder = Recorder(store, limit=n + 1)
    recorder.start()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        recorder.submit(exchange())
    await recorder.close()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    await store.close()
    return n / elapsed, cpu / n * 1e6


def ms(values: list[float], q: float) -> str:
    return (
        f"{statistics.quantiles(values, n=100)[int(q) - 1] * 1000:.1f}"
        if q < 100
        else f"{max(values) * 1000:.1f}"
    )


async def under_load(folder: Path, seconds: float = 5.0, rate: int = 2000) -> tuple[list[float], list[float]]:
    db = folder / "load.db"
    store = Store(str(db))
    await store.open()
    recorder = Recorder(store, limit=10 * rate)
    recorder.start()
    waits: list[float] = []
    stop = threading.Event()

    def user() -> None:
        conn = sqlite3.connect(db, timeout=10, isolation_level=None)
        while not stop.is_set():
            start = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            waits.append(time.perf_counter() - start)
            conn.execute("ROLLBACK")
            time.sleep(0.02)
        conn.close()

    lags: list[float] = []

    async def ticker() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - start - 0.001)

    thread = threading.Thread(target=user)
    thread.start()
    tick = asyncio.create_task(ticker())
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(rate // 100):
            recorder.submit(exchange())
        await asyncio.sleep(0.01)
    stop.set()
    await tick
    await asyncio.to_thread(thread.join)
    await recorder.close()
    await store.close()
    return waits, lags


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rates, cpus = [], []
        for i in range(5):
            (Path(tmp) / str(i)).mkdir()
            rate, cpu = await rows_per_second(Path(tmp) / str(i))
            rates.append(rate)
            cpus.append(cpu)
        waits, lags = await under_load(Path(tmp))
    each = ", ".join(f"{r:,.0f}" for r in sorted(rates))
    print(f"writer alone: {statistics.median(rates):,.0f} rows/s (5 runs: {each})")
    print(f"CPU per row, all threads: {statistics.median(cpus):.0f} us (min {min(cpus):.0f})")
    print(
        f"user BEGIN IMMEDIATE wait under 2,000 rows/s, ms: p50 {ms(waits, 50)}, p99 {ms(waits, 99)}, "
        f"max {ms(waits, 100)} ({len(waits)} tries)"
    )
    print(f"event loop lag meanwhile, ms: p50 {ms(lags, 50)}, p99 {ms(lags, 99)}, max {ms(lags, 100)}")


if __name__ == "__main__":
    asyncio.run(main())
