"""One bad value never stops the audit trail: every column, every kind of poison.

Issue "One bad byte must never stop the audit trail": a User-Agent with a byte
that is not UTF-8, or a backend reporting 2**63 tokens, made the writer retry
the same batch forever. Each case here submits a poisoned exchange and a good
one after it, and reads both back with sqlite3, as a user would.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llm_proxy.audit.exchange import Exchange
from llm_proxy.audit.recorder import Recorder
from llm_proxy.audit.store import Store

from .conftest import read_rows

Writer = tuple[Recorder, Path]


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[Writer]:
    """A recorder writing to a fresh SQLite file."""
    db = tmp_path / "audit.db"
    store = Store(str(db))
    await store.open()
    recorder = Recorder(store, limit=100)
    recorder.start()
    yield recorder, db
    await recorder.close()
    await store.close()


def good(n: int) -> Exchange:
    e = Exchange(endpoint="/api/chat", method="POST", backend_type="ollama", prompt=f"good {n}")
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


async def then_keeps_writing(recorder: Recorder, db: Path, rows: int) -> None:
    """After the poison, the writer still takes rows: a third is written too."""
    recorder.submit(good(2))
    found = await rows_when(db, rows + 1)
    assert [r["prompt"] for r in found[rows:]] == ["good 2"]


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
        (name, "x\udcff", "x\\xff", None),  # a byte aiohttp decoded with surrogateescape
        (name, "\ud800!", "\\ud800!", None),  # a lone surrogate of any other origin
        (name, "a\x00b", "a\x00b", None),  # NUL is valid UTF-8: kept as it is
        (name, LONG, LONG, None),
        (name, 12345, "12345", None),  # a number where text belongs: its text
    ]
EDGE += [
    ("request_body", b"\xff\xfe{", "\ufffd\ufffd{", None),  # bodies keep U+FFFD, as before
    ("request_body", "x\udcff", "x\\xff", None),
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
    writer: Writer, attribute: str, poison: Any, stored: Any, note: str | None
) -> None:
    recorder, db = writer
    poisoned = good(0)
    setattr(poisoned, attribute, poison)
    recorder.submit(poisoned)
    recorder.submit(good(1))
    first, after = await rows_when(db, 2)
    column = "timestamp" if attribute == "started" else attribute
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
    await then_keeps_writing(recorder, db, 2)
