"""Log lines: access lines read as the formatters write them; one line a request, whatever it holds."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import orjson
import pytest

from llm_proxy.audit.exchange import Exchange
from llm_proxy.config import ServerConfig
from llm_proxy.server import logging_setup
from llm_proxy.server.console import Console

from . import raw
from .conftest import read_rows
from .ollama_double import OllamaDouble
from .process import serve

VALUES = ("ha-conversation-42", "POST", "/api/chat", 200, 1234, "qwen2.5:latest", "openai")


@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.parametrize("when", [1795319481.0004, 1795319481.5, 1795319481.9994, 1795319999.25])
def test_access_line_reads_as_the_formatter_writes_it(log_format: str, when: float) -> None:
    """Access lines skip the LogRecord; a user reading (or parsing) the log cannot tell."""
    request_id, method, path, status, latency_ms, model, backend = VALUES
    record = logging_setup.ACCESS.makeRecord(
        logging_setup.ACCESS.name, logging.INFO, __file__, 0, logging_setup.ACCESS_MESSAGE,
        (method, path, status, latency_ms, model, backend, request_id), None,
        extra=dict(zip(logging_setup.ACCESS_FIELDS, VALUES, strict=True)),
    )  # fmt: skip
    record.created, record.msecs = when, int((when - int(when)) * 1000) + 0.0
    expected = logging_setup.formatter(log_format).format(record)
    assert logging_setup.AccessLines(log_format).line(when, VALUES) == expected
    if log_format == "json":
        assert orjson.loads(expected)["request_id"] == "ha-conversation-42"


def test_access_line_without_a_model_shows_a_dash() -> None:
    line = logging_setup.AccessLines("text").line(
        1795319481.0, (None, "GET", "/api/tags", 200, 0, None, "ollama")
    )
    assert line.endswith("llm_proxy.access: GET /api/tags 200 0ms model=- backend=ollama id=None")


def test_printable_escapes_what_could_break_or_disguise_a_line() -> None:
    assert logging_setup.printable("/api/chat") == "/api/chat"
    assert logging_setup.printable("a\r\nb\tc\x1b[2J\x00") == "a\\r\\nb\\tc\\x1b[2J\\x00"
    assert logging_setup.printable("caf\u00e9 \u2028\u202e\udcff") == "caf\u00e9 \\u2028\\u202e\\udcff"


# What a client controls, each carrying a line break, a terminal escape and a byte that is not UTF-8.
FORGED = "2026-12-01 00:00:00,000 INFO llm_proxy.access: GET / 200 0ms model=- backend=ollama id=FORGED"


def _hostile_requests() -> list[bytes]:
    model = f"x\r\n{FORGED}\x1b[2J\u00ff"
    body = orjson.dumps({"model": model, "messages": [], "stream": False})
    return [
        raw.request("POST", b"/api/chat", {b"Content-Type": b"application/json"}, body),
        raw.request("GET", b"/api%0d%0a" + FORGED.replace(" ", "%20").encode() + b"%1b%ff", {}),
        # \x1b in a header: aiohttp's parser refuses it (400, before the app).
        raw.request("GET", b"/api/version", {b"User-Agent": b"ua\xff\x1b", b"X-Request-Id": b"id\xff"}),
        raw.request("GET", b"/api/version", {b"User-Agent": b"ua\xff", b"X-Request-Id": b"rid\xff\tFORGED"}),
    ]


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_a_client_cannot_forge_a_log_line(
    log_format: str, tmp_path: Path, ollama_double: tuple[OllamaDouble, str]
) -> None:
    """Each request leaves exactly one line, whatever its model, path and headers hold."""
    async with serve(tmp_path, ollama_double[1], server={"log_format": log_format}) as served:
        answers = [await raw.send(served.url, data) for data in _hostile_requests()]
        assert await served.stop() == 0
    chat, path, refused, version = answers
    assert (chat.status, path.status, refused.status, version.status) == (404, 404, 400, 200)
    # Bytes that are not UTF-8 become U+FFFD at the edge: the id is echoed and stored as text.
    assert version.headers["x-request-id"] == "rid\ufffd\tFORGED".encode().decode("latin-1")
    ids = ["", chat.headers["x-request-id"], path.headers["x-request-id"], "rid\ufffd\tFORGED"]

    if log_format == "text":
        lines = served.stderr
        # Every line is a log line: no forged one, and no traceback for the refused request.
        start = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) \S+: ")
        assert all(start.match(line) for line in lines)
        access = [ln for ln in lines if " llm_proxy.access: " in ln]
        assert len(access) == 4  # /health/live at start-up, then the three the app answered
        assert [ln.rsplit(" id=", 1)[1] for ln in access[1:]] == [ids[1], ids[2], "rid\ufffd\\tFORGED"]
        assert f"model=x\\r\\n{FORGED}\\x1b[2J\u00ff backend=ollama" in access[1]
        assert "GET /api\\r\\n2026-12-01" in access[2] and "FORGED\\x1b%ff 404" in access[2]
        [warning] = [ln for ln in lines if "refused a malformed request" in ln]
        assert " WARNING aiohttp.server: refused a malformed request from 127.0.0.1: 400 " in warning
    else:
        objects = [orjson.loads(ln) for ln in served.stderr]  # every line is one JSON object
        records = [o for o in objects if o["logger"] == "llm_proxy.access"]
        assert [o["request_id"] for o in records[1:]] == ids[1:]
        assert records[1]["model"] == f"x\r\n{FORGED}\x1b[2J\u00ff"  # JSON carries the value exactly
        assert records[2]["path"] == f"/api\r\n{FORGED}\x1b%ff"
        [warning] = [o for o in objects if "refused a malformed request" in o["message"]]
        assert warning["level"] == "WARNING" and "exception" not in warning

    rows = read_rows(served.db, 3)
    assert [(r["endpoint"], r["request_id"], r["user_agent"]) for r in rows] == [
        ("/api/chat", ids[1], None),
        (f"/api\r\n{FORGED}\x1b%ff", ids[2], None),
        ("/api/version", "rid\ufffd\tFORGED", "ua\ufffd"),
    ]


def test_console_summary_stays_one_line() -> None:
    out = io.StringIO()
    console = Console(ServerConfig(log_messages=True, log_raw_responses=True), out=out)
    exchange = Exchange(endpoint="/api/chat", method="POST", backend_type="openai", request_id="r1")
    exchange.model, exchange.error = f"x\n{FORGED}", "said \x1b[31mno\r\n"
    console.summary(exchange)
    console.response(exchange, b"not json\x1b]0;title\x07\nsecond line")
    assert out.getvalue().splitlines() == [
        f"[r1] POST /api/chat, status=None, Nonems, Model: x\\n{FORGED}, Error: said \\x1b[31mno\\r\\n",
        "[r1] response /api/chat",
        "not json\\x1b]0;title\\x07",
        "second line",
    ]
