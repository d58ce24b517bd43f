"""Log lines: access lines made on the event loop read exactly as the logging formatters write them."""

from __future__ import annotations

import logging

import orjson
import pytest

from llm_proxy import logs

VALUES = ("ha-conversation-42", "POST", "/api/chat", 200, 1234, "qwen2.5:latest", "openai")


@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.parametrize("when", [1795319481.0004, 1795319481.5, 1795319481.9994, 1795319999.25])
def test_access_line_reads_as_the_formatter_writes_it(log_format: str, when: float) -> None:
    """Access lines skip the LogRecord; a user reading (or parsing) the log cannot tell."""
    request_id, method, path, status, latency_ms, model, backend = VALUES
    record = logs.ACCESS.makeRecord(
        logs.ACCESS.name, logging.INFO, __file__, 0, logs.ACCESS_MESSAGE,
        (method, path, status, latency_ms, model, backend, request_id), None,
        extra=dict(zip(logs.ACCESS_FIELDS, VALUES, strict=True)),
    )  # fmt: skip
    record.created, record.msecs = when, int((when - int(when)) * 1000) + 0.0
    expected = logs.formatter(log_format).format(record)
    assert logs.AccessLines(log_format).line(when, VALUES) == expected
    if log_format == "json":
        assert orjson.loads(expected)["request_id"] == "ha-conversation-42"


def test_access_line_without_a_model_shows_a_dash() -> None:
    line = logs.AccessLines("text").line(1795319481.0, (None, "GET", "/api/tags", 200, 0, None, "ollama"))
    assert line.endswith("llm_proxy.access: GET /api/tags 200 0ms model=- backend=ollama id=None")
