"""Peak memory of ``llm-proxy logs export`` as the database grows: it should stay flat.

Writes N chat exchanges shaped like Home Assistant rounds (a shared system
prompt and tools, compacted into blobs) through the proxy's own store, then
exports them as JSON lines and CSV in a child process and prints its peak RSS.

Run from the repository root: ``PYTHONPATH=$PWD python bench/audit_export.py [N ...]``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llm_proxy.audit.exchange import Exchange
from llm_proxy.audit.store import Store
from tests import ha_turn

CHILD = (
    "import resource, sys\n"
    "from llm_proxy.cli.main import main\n"
    "code = main(sys.argv[1:])\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "raise SystemExit(code)\n"
)


async def fill(path: str, n: int) -> None:
    store = Store(path)
    await store.open()
    system = {"role": "system", "content": ha_turn.SYSTEM}
    for start in range(0, n, 500):
        rows = []
        for i in range(start, min(n, start + 500)):
            e = Exchange(endpoint="/api/chat", method="POST", backend_type="openai", model="assistant")
            messages = [system, {"role": "user", "content": f"request number {i}: turn on light {i % 40}"}]
            body = {"model": "assistant", "messages": messages, "tools": ha_turn.TOOLS}
            e.request_body = orjson.dumps(body)
            e.prompt, e.response = messages[1]["content"], "Done."
            e.status_code, e.latency_ms = 200, 300 + i % 50
            rows.append(e.row())
        await store.insert(rows)
    await store.close()


def export(path: str, fmt: str) -> tuple[int, float]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, "logs", "export", "--db", path, "--format", fmt, "-o", "/dev/null"],
        capture_output=True, text=True, check=True, timeout=3600,
    )  # fmt: skip
    return int(done.stderr.strip().splitlines()[-1]), time.perf_counter() - started


def main(sizes: list[int]) -> None:
    for n in sizes:
        path = str(Path(tempfile.mkdtemp()) / "export.db")
        asyncio.run(fill(path, n))
        for fmt in ("jsonl", "csv"):
            rss_kb, seconds = export(path, fmt)
            print(f"{n:>8} rows  {fmt:5}  peak RSS {rss_kb / 1024:6.1f} MB  {seconds:6.1f} s")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [2_000, 20_000])
