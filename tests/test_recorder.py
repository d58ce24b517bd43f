"""The audit writer when SQLite is slower than traffic, and what each store makes of a batch (both stores)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import orjson
import pytest

from llm_proxy.audit.exchange import Exchange
from llm_proxy.audit.recorder import Recorder
from llm_proxy.audit.store import Store

from .trail import Trail


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


async def test_a_large_batch_lands_whole_and_in_order(trail: Trail) -> None:
    """87 rows in one transaction (statements of 64, 16, 4 and 1 rows): every column in place."""
    store = trail.store()
    await store.open()
    rows = []
    for n in range(87):
        e = exchange(n)
        e.request_body = b'{"model":"m%d","messages":[{"role":"user","content":"question %d"}]}' % (n, n)
        e.response, e.completion_tokens = f"answer {n}", n
        rows.append(e.row())
    await store.insert(rows)
    await store.insert([exchange(87).row()])  # the next batch carries on from the ids in memory
    await store.close()
    found = [
        tuple(r.values())
        for r in trail.query(
            "SELECT id, prompt, response, completion_tokens, full_request_body FROM logs_full ORDER BY id"
        )
    ]
    assert [r[0] for r in found] == list(range(1, 89))
    expected = [(f"question {n}", f"answer {n}", n) for n in range(87)]
    assert [(r[1], r[2], r[3]) for r in found[:87]] == expected
    assert found[86][4] == '{"model":"m86","messages":[{"role":"user","content":"question 86"}]}'
    assert found[87][1:4] == ("question 87", None, None)


async def test_stored_copies_are_cut_to_max_body_kb_and_keep_their_size(trail: Trail) -> None:
    store = trail.store(max_body_kb=1)
    await store.open()
    big = exchange(0)
    content = "é" * 3000  # 6000 bytes of UTF-8: cut in the middle of a character
    big.request_body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": content}]})
    big.prompt, big.response, big.thinking = content, "a" * 1024, "日本" * 1000
    big.response_body = {"message": {"content": "b" * 5000}}
    await store.insert([big.row(), exchange(1).row()])
    await store.close()
    cut, whole = trail.query("SELECT * FROM logs_full ORDER BY id")
    assert orjson.loads(cut["truncated"]) == {
        "request_body": len(big.request_body), "prompt": 6000, "thinking": 6000,
        "response_body": len(orjson.dumps(big.response_body)),
    }  # fmt: skip
    assert cut["response"] == "a" * 1024  # exactly at the limit: whole
    assert cut["prompt"] == "é" * 512 and cut["thinking"] == "日本" * 170 + "日"  # 1023 bytes
    assert big.request_body.decode().startswith(cut["request_body"])
    assert len(cut["request_body"].encode()) == 1023  # the é cut in two is left out
    assert cut["request_parts"] is None  # a cut body is plain text, not compacted
    assert cut["full_request_body"] == cut["request_body"]
    assert cut["response_body"] == orjson.dumps(big.response_body).decode()[:1024]
    assert (whole["truncated"], whole["prompt"]) == (None, "question 1")


@pytest.mark.parametrize(("max_body_kb", "store_bodies"), [(0, "full"), (1, "metadata")])
async def test_no_limit_or_no_bodies_cut_nothing(trail: Trail, max_body_kb: int, store_bodies: str) -> None:
    store = trail.store(store_bodies=store_bodies, max_body_kb=max_body_kb)
    await store.open()
    big = exchange(0)
    big.response = "a" * 100_000
    await store.insert([big.row()])
    await store.close()
    [found] = trail.query("SELECT response, truncated FROM logs")
    response, truncated = found["response"], found["truncated"]
    assert truncated is None
    assert response == (big.response if store_bodies == "full" else None)


async def test_an_answer_cut_as_it_was_relayed_is_marked_with_the_other_cuts(trail: Trail) -> None:
    """The relay keeps only the start of a long answer (Exchange.truncated); the row says so."""
    store = trail.store(max_body_kb=1)
    await store.open()
    relayed, both = exchange(0), exchange(1)
    relayed.truncated = both.truncated = True
    both.prompt = "p" * 5000
    await store.insert([relayed.row(), both.row(), exchange(2).row()])
    await store.close()
    marks = [r["truncated"] for r in trail.query("SELECT truncated FROM logs ORDER BY id")]
    assert [orjson.loads(m) if m else None for m in marks] == [
        {"answer": None}, {"answer": None, "prompt": 5000}, None,
    ]  # fmt: skip
