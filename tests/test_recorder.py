"""The audit writer when SQLite is slower than traffic: requests wait, no row is dropped."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from llm_proxy.audit.exchange import Exchange
from llm_proxy.audit.recorder import Recorder
from llm_proxy.audit.store import Store


def exchange(n: int) -> Exchange:
    e = Exchange(endpoint="/api/chat", method="POST", backend_type="ollama", prompt=f"question {n}")
    e.status_code = 200
    e.finish()
    return e


async def test_a_locked_database_holds_new_requests_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(str(tmp_path / "audit.db"))
    await store.open()
    recorder = Recorder(store, limit=3)
    recorder.start()
    # Another program takes the write lock (an exclusive transaction) and keeps it.
    holder = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with caplog.at_level(logging.WARNING, logger="llm_proxy.audit"):
            for n in range(3):
                recorder.submit(exchange(n))
            waiting = asyncio.create_task(recorder.admit())  # the 4th request arrives
            await asyncio.sleep(0.5)
            assert not waiting.done()  # held back: the queue is full and SQLite is stuck
            assert "audit queue is full" in caplog.text
    finally:
        holder.execute("COMMIT")
        holder.close()
    await asyncio.wait_for(waiting, 15)  # the writer catches up, the request goes on
    recorder.submit(exchange(3))
    await recorder.close()
    await store.close()
    with sqlite3.connect(tmp_path / "audit.db") as conn:
        prompts = [r[0] for r in conn.execute("SELECT prompt FROM logs ORDER BY id")]
    assert prompts == [f"question {n}" for n in range(4)]
    assert recorder.written == 4
