"""One bad value never stops the audit trail: every column, every kind of poison.

Issue "One bad byte must never stop the audit trail": a User-Agent with a byte
that is not UTF-8, or a backend reporting 2**63 tokens, made the writer retry
the same batch forever. Each case here submits a poisoned exchange and a good
one after it, and reads both back with sqlite3, as a user would.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from llm_proxy.audit.exchange import COLUMNS, Exchange
from llm_proxy.audit.recorder import Recorder
from llm_proxy.audit.store import TEXT_COLUMNS
from llm_proxy.server import state

from .conftest import Writer, read_rows
from .trail import Trail

TrailWriter = tuple[Recorder, Trail]


class Unchecked(Exchange):
    """An exchange whose row skips the edge's checks: what a new column or a bug could let through."""

    __slots__ = ("poison",)
    poison: dict[str, Any]  # column → the value its row carries instead

    def row(self) -> tuple[Any, ...]:
        values = dict(zip(COLUMNS, Exchange.row(self), strict=True))
        values.update(self.poison)
        return tuple(values.values())


def good(n: int, kind: type[Exchange] = Exchange) -> Exchange:
    e = kind(endpoint="/api/chat", method="POST", backend_type="ollama", prompt=f"good {n}")
    e.response, e.status_code, e.prompt_tokens, e.completion_tokens = f"answer {n}", 200, 3, 5
    e.user_agent, e.request_id = "ollama-python/0.6", f"req-{n}"
    e.finish()
    return e


async def rows_when(db: Path, expected: int, within: float = 10.0) -> list[dict[str, Any]]:
    """The rows of ``logs`` once ``expected`` are there (or the time is up)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        found = read_rows(db, 0)
        if len(found) >= expected or loop.time() > deadline:
            return found
        await asyncio.sleep(0.01)


async def then_keeps_writing(recorder: Recorder, trail: Trail, rows: int) -> None:
    """After the poison, the writer still takes rows: a third is written too."""
    recorder.submit(good(2))
    found = await trail.wait_rows(rows + 1)
    assert [r["prompt"] for r in found[rows:]] == ["good 2"]


async def counted(recorder: Recorder, written: int, within: float = 10.0) -> None:
    """Wait until the recorder has counted ``written`` rows (or the time is up)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        if recorder.written >= written or loop.time() > deadline:
            return
        await asyncio.sleep(0.01)


LONG = "é" * 300_000  # 600 KB of UTF-8
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
TEXT = (
    "endpoint", "method", "model", "prompt", "response", "backend_type", "error", "request_id",
    "client_addr", "user_agent", "backend_model", "thinking", "done_reason", "api", "key_name",
    "backend_request", "response_body",
)  # fmt: skip
COUNTS = ("latency_ms", "prompt_tokens", "completion_tokens", "ttfb_ms", "ttft_ms")
UNSTORED = '{"unstored":"value could not be written as JSON'


def unstored(value: str) -> bool:
    return value.startswith(UNSTORED)


# (attribute, poison, what the column then holds (a value, or a test of it), what `error` says)
EDGE: list[tuple[str, Any, Any, str | None]] = []
for name in TEXT:
    EDGE += [
        (name, "x\udcff", "x\ufffd", None),  # a byte aiohttp decoded with surrogateescape
        (name, "\udcc3\udca9!", "é!", None),  # escaped bytes that are UTF-8 together
        (name, "\ud800!", "\ufffd!", None),  # a lone surrogate of any other origin
        (name, "a\x00b", "a\x00b", None),  # NUL is valid UTF-8: kept as it is
        (name, LONG, LONG, None),
        (name, 12345, "12345", None),  # a number where text belongs: its text
    ]
EDGE += [
    ("request_body", b"\xff\xfe{", "\ufffd\ufffd{", None),  # bodies keep U+FFFD, as before
    ("request_body", "x\udcff", "x\ufffd", None),
    ("request_body", LONG.encode(), LONG, None),
]
for name in ("backend_request", "response_body", "tool_calls"):
    EDGE += [
        (name, [{"k": object()}], unstored, None),
        (name, [2**64], unstored, None),
        (name, [{"k": "x\udcff"}], unstored, None),
        (name, [{1: 2}], unstored, None),
    ]
for name in ("status_code", *COUNTS):
    EDGE += [
        (name, 2**63, None, f"{name} 9223372036854775808 out of range: not stored"),
        (name, -(2**63) - 1, None, f"{name} -9223372036854775809 out of range: not stored"),
        (name, 2**64, None, f"{name} 18446744073709551616 out of range: not stored"),
        (name, 2**5000, None, f"{name} (a 5001-bit integer) out of range: not stored"),
        (name, math.nan, None, f"{name} nan is not an integer: not stored"),
        (name, math.inf, None, f"{name} inf is not an integer: not stored"),
        (name, -math.inf, None, f"{name} -inf is not an integer: not stored"),
        (name, 1.5, None, f"{name} 1.5 is not an integer: not stored"),
        (name, "12", None, f"{name} '12' is not an integer: not stored"),
        (name, 2**63 - 1, 2**63 - 1, None),  # the largest that fits is kept
        (name, 7.0, 7, None),
    ]
EDGE += [(name, -1, None, f"{name} -1 is negative: not stored") for name in COUNTS]
EDGE += [
    ("status_code", -1, -1, None),  # a status is not a count: any 64-bit value is kept
    ("stream", "yes", None, "stream 'yes' is not true or false: not stored"),
    ("stream", 1, None, "stream 1 is not true or false: not stored"),
]
NOT_A_TIME = "started {} is not a time: timestamp is when the row was made"
EDGE += [
    ("started", bad, TIMESTAMP.fullmatch, NOT_A_TIME.format(shown))
    for bad, shown in ((math.nan, "nan"), (math.inf, "inf"), (1e20, "1e+20"), ("x", "'x'"))
]


def case_id(case: tuple[str, Any, Any, str | None]) -> str:
    name, poison = case[0], case[1]
    long = isinstance(poison, (str, bytes)) and len(poison) > 20
    shown = f"{type(poison).__name__}{len(poison)}" if long else repr(poison)
    return f"{name}={shown[:30]}"


@pytest.mark.parametrize(("attribute", "poison", "stored", "note"), EDGE, ids=[case_id(c) for c in EDGE])
async def test_a_poisoned_value_is_stored_as_it_can_be_and_the_trail_goes_on(
    trail_writer: TrailWriter, attribute: str, poison: Any, stored: Any, note: str | None
) -> None:
    recorder, trail = trail_writer
    poisoned = good(0)
    setattr(poisoned, attribute, poison)
    recorder.submit(poisoned)
    recorder.submit(good(1))
    first, after = await trail.wait_rows(2)
    column = "timestamp" if attribute == "started" else attribute
    if trail.postgres and isinstance(stored, str):
        stored = stored.replace("\x00", "\ufffd")  # PostgreSQL's text cannot hold NUL
        if attribute in ("endpoint", "model") and stored == LONG:  # an index entry holds 2704 bytes
            stored = "é" * 1024
            assert orjson.loads(first["truncated"]) == {attribute: len(LONG.encode())}
    if callable(stored):
        assert stored(first[column]), first[column]
    else:
        assert first[column] == stored
    if note is not None:
        assert first["error"] == note
    elif attribute != "error":
        assert first["error"] is None
    if attribute != "prompt":
        assert first["prompt"] == "good 0"  # the rest of the row is there
    assert (after["prompt"], after["response"], after["prompt_tokens"]) == ("good 1", "answer 1", 3)
    await then_keeps_writing(recorder, trail, 2)
    assert (recorder.reduced, recorder.lost) == (0, 0)


# The writer's last line of defence: values that reach the store unchecked.
# (column, poison, the error SQLite or the driver raises)
RAW: list[tuple[str, Any, str]] = []
for name in COLUMNS:
    if name in ("stream", "status_code", "latency_ms", "prompt_tokens", "completion_tokens", "ttfb_ms",
                "ttft_ms"):  # fmt: skip
        RAW += [
            (name, 2**63, "OverflowError"),
            (name, -(2**63) - 1, "OverflowError"),
            (name, 2**64, "OverflowError"),
        ]
    else:
        RAW += [(name, "x\udcff", "UnicodeEncodeError"), (name, ["a list"], "ProgrammingError")]
    # Capped and compacted texts meet len() (a TypeError) before SQLite.
    RAW.append((name, object(), "TypeError" if name in TEXT_COLUMNS else "ProgrammingError"))
RAW += [(name, None, "IntegrityError") for name in ("timestamp", "endpoint", "method", "api")]  # NOT NULL


def assert_reduced(row: dict[str, Any], error: str, n: int = 0) -> None:
    """A reduced row: the exchange's metadata, no content, and why."""
    assert row["error"].startswith(f"row could not be stored: {error}"), row["error"]
    assert (row["endpoint"], row["method"], row["status_code"], row["request_id"]) == (
        "/api/chat", "POST", 200, f"req-{n}",
    )  # fmt: skip
    assert (row["prompt"], row["response"], row["user_agent"], row["prompt_tokens"]) == (None,) * 4
    assert TIMESTAMP.fullmatch(row["timestamp"])


@pytest.mark.parametrize(("column", "poison", "error"), RAW, ids=[f"{c[0]}={c[2]}" for c in RAW])
async def test_a_row_the_store_refuses_is_stored_reduced_and_the_trail_goes_on(
    trail_writer: TrailWriter, column: str, poison: Any, error: str
) -> None:
    recorder, trail = trail_writer
    poisoned = good(0, Unchecked)
    poisoned.poison = {column: poison}  # type: ignore[attr-defined]
    recorder.submit(poisoned)
    recorder.submit(good(1))
    first, after = await trail.wait_rows(2)
    # asyncpg names these errors its own way (TypeError, DataError, NotNullViolationError):
    # what matters is the same, a reduced row that says why, and the trail going on.
    assert_reduced(first, "" if trail.postgres else error)
    assert (after["prompt"], after["response"], after["prompt_tokens"]) == ("good 1", "answer 1", 3)
    await then_keeps_writing(recorder, trail, 2)
    # The rows are in the database a moment before the writer's task, on the event
    # loop again after the commit, counts them.
    await counted(recorder, 3)
    assert (recorder.reduced, recorder.lost, recorder.written) == (1, 0, 3)


async def test_one_refused_row_in_a_batch_leaves_the_others_whole(
    trail_writer: TrailWriter, caplog: pytest.LogCaptureFixture
) -> None:
    """The batch is split until the good rows land; only the poisoned one is reduced."""
    recorder, trail = trail_writer
    batch = [good(n) for n in range(40)]
    batch[17] = good(17, Unchecked)
    batch[17].poison = {"user_agent": "x\udcff"}  # type: ignore[attr-defined]
    with caplog.at_level(logging.ERROR, logger="llm_proxy.audit"):
        for e in batch:
            recorder.submit(e)  # all queued before the writer wakes: one batch
        found = await trail.wait_rows(40)
    assert [r["prompt"] for r in found] == [None if n == 17 else f"good {n}" for n in range(40)]
    why = "DataError" if trail.postgres else "UnicodeEncodeError"  # asyncpg's name, sqlite3's
    assert_reduced(found[17], why, 17)  # in its place: the halves land in order
    assert all(r["error"] is None and r["response"] for r in found if r["id"] != found[17]["id"])
    assert f"audit row refused ({why}" in caplog.text
    assert (recorder.reduced, recorder.lost) == (1, 0)


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")

    __repr__ = __str__


async def test_a_row_that_cannot_even_be_built_is_stored_reduced(trail_writer: TrailWriter) -> None:
    recorder, trail = trail_writer
    poisoned = good(0)
    poisoned.model = Unprintable()  # type: ignore[assignment]
    recorder.submit(poisoned)
    recorder.submit(good(1))
    first, after = await trail.wait_rows(2)
    assert_reduced(first, "RuntimeError: no text for you")
    assert after["prompt"] == "good 1"
    assert (recorder.reduced, recorder.lost) == (1, 0)


async def test_metadata_mode_reduces_tool_calls_it_cannot_read(trail: Trail) -> None:
    store = trail.store(store_bodies="metadata")
    await store.open()
    recorder = Recorder(store, limit=10)
    recorder.start()
    poisoned = good(0)
    poisoned.tool_calls = "not JSON"  # type: ignore[assignment]
    recorder.submit(poisoned)
    recorder.submit(good(1))
    await recorder.close()
    await store.close()
    first, after = trail.rows(2)
    assert_reduced(first, "JSONDecodeError")
    assert (after["error"], after["prompt"], after["status_code"]) == (None, None, 200)


async def test_a_row_refused_even_reduced_is_logged_with_its_metadata(
    writer: Writer, caplog: pytest.LogCaptureFixture
) -> None:
    """Only a broken database refuses a reduced row; the log line then keeps what it can."""
    recorder, db = writer
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE logs")  # no such table: not a locked or full database, so not retried
    with caplog.at_level(logging.ERROR, logger="llm_proxy.audit"):
        recorder.submit(good(0))
        await recorder.close()
    assert (recorder.written, recorder.reduced, recorder.lost) == (0, 0, 1)
    lost = [r.getMessage() for r in caplog.records if r.getMessage().startswith("audit row lost")]
    assert len(lost) == 1 and "no such table: logs" in lost[0]
    assert "'endpoint': '/api/chat'" in lost[0] and "'request_id': 'req-0'" in lost[0]


async def raw_get(url: str, path: str, *headers: bytes) -> bytes:
    """Send a request byte for byte (HTTP clients refuse to send bytes that are not UTF-8)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" % path.encode())
    writer.write(b"".join(h + b"\r\n" for h in headers) + b"\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


async def test_a_header_that_is_not_utf8_is_stored_as_text(proxy: Any) -> None:
    """The issue's reproduction: curl -H $'User-Agent: x\\xff' http://127.0.0.1:11434/api/tags."""
    answer = await raw_get(proxy.url, "/api/tags", b"User-Agent: x\xff")
    assert answer.startswith(b"HTTP/1.1 200")
    answer = await raw_get(proxy.url, "/api/tags", b"X-Request-Id: r\xfe1")  # the same for the id
    assert answer.startswith(b"HTTP/1.1 200")
    answer = await raw_get(proxy.url, "/api/tags", b"User-Agent: curl/8.5.0")
    assert answer.startswith(b"HTTP/1.1 200")
    rows = await proxy.wait_rows(3)
    assert [(r["status_code"], r["user_agent"], r["error"]) for r in rows] == [
        (200, "x\ufffd", None),
        (200, None, None),
        (200, "curl/8.5.0", None),
    ]
    assert rows[1]["request_id"] == "r\ufffd1"


async def test_token_counts_a_backend_gets_wrong_are_not_stored_and_say_so(
    aiohttp_server: Any, make_proxy: Any
) -> None:
    """A backend reporting 2**63 prompt tokens (or -1 answer tokens) no longer stops the trail."""
    counts = iter([(2**63, -1), (26, 5)])

    async def generate(request: web.Request) -> web.Response:
        prompt, answer = next(counts)
        body = {"model": "m", "created_at": "2026-11-22T04:05:06Z", "response": "hi", "done": True,
                "done_reason": "stop", "prompt_eval_count": prompt, "eval_count": answer}  # fmt: skip
        return web.json_response(body, dumps=lambda v: orjson.dumps(v).decode())

    backend = web.Application()
    backend.router.add_post("/api/generate", generate)
    server = await aiohttp_server(backend, host="127.0.0.1")
    proxy = await make_proxy(str(server.make_url("")).rstrip("/"))
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.post(f"{proxy.url}/api/generate", json={"model": "m", "prompt": "x"}) as resp:
                assert resp.status == 200
                assert (await resp.json())["response"] == "hi"
    rows = await proxy.wait_rows(2)
    assert [(r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [(None, None), (26, 5)]
    assert rows[0]["error"] == (
        "prompt_tokens 9223372036854775808 out of range: not stored; "
        "completion_tokens -1 is negative: not stored"
    )
    assert rows[1]["error"] is None


async def test_reduced_rows_are_counted_in_the_metrics(proxy: Any) -> None:
    recorder = proxy.app[state.RECORDER]
    poisoned = good(0, Unchecked)
    poisoned.poison = {"prompt_tokens": 2**64}  # type: ignore[attr-defined]
    recorder.submit(poisoned)
    recorder.submit(good(1))
    rows = await proxy.wait_rows(2)
    assert_reduced(rows[0], "OverflowError")
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/metrics") as resp:
        text = await resp.text()
    assert "llm_proxy_audit_rows_reduced_total 1.0" in text.splitlines()
    assert "llm_proxy_audit_rows_lost_total 0.0" in text.splitlines()
    assert "llm_proxy_audit_rows_written_total 2.0" in text.splitlines()


async def test_a_long_exchange_reaches_everyone_whole_and_is_stored_cut(
    aiohttp_server: Any, make_proxy: Any
) -> None:
    """database.max_body_kb caps the stored copy only: backend and client get every byte."""
    received: list[bytes] = []
    answer = "All the lights are on. " * 400  # 9200 bytes

    async def generate(request: web.Request) -> web.Response:
        received.append(await request.read())
        body = {"model": "m", "created_at": "2026-11-22T04:05:06Z", "response": answer, "done": True}
        return web.json_response(body)

    backend = web.Application()
    backend.router.add_post("/api/generate", generate)
    server = await aiohttp_server(backend, host="127.0.0.1")
    proxy = await make_proxy(str(server.make_url("")).rstrip("/"), database={"max_body_kb": 2})
    prompt = "Turn on every light in the house. " * 200  # 6800 bytes
    async with aiohttp.ClientSession() as http:
        request = {"model": "m", "prompt": prompt, "stream": False}
        async with http.post(f"{proxy.url}/api/generate", json=request) as resp:
            assert (await resp.json())["response"] == answer
    assert orjson.loads(received[0])["prompt"] == prompt
    [row] = await proxy.wait_rows(1)
    sizes = orjson.loads(row["truncated"])
    assert sizes["prompt"] == len(prompt) and sizes["request_body"] > len(prompt)
    assert row["prompt"] == prompt[:2048] and len(row["request_body"]) == 2048
    # The answer's copy is cut and marked too: with its size when the store cut
    # it, as "answer": null when the relay kept only its start as it passed.
    assert len(row["response_body"]) <= 2048 and {"response_body", "answer"} & set(sizes)
    assert row["error"] is None and row["status_code"] == 200
