"""The Exchange record: everything one request produced, as one ``logs`` row."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

# Column order of the INSERT; the names are the `logs` columns (migrations/0001_logs.sql).
COLUMNS = (
    "timestamp", "endpoint", "method", "model", "prompt", "response", "status_code",
    "latency_ms", "stream", "backend_type", "error", "request_id", "client_addr",
    "user_agent", "backend_model", "request_body", "backend_request", "response_body",
    "thinking", "tool_calls", "done_reason", "prompt_tokens", "completion_tokens",
    "ttfb_ms", "ttft_ms", "api", "key_name",
)  # fmt: skip


@dataclass(slots=True)
class Exchange:
    """One client request and what became of it; filled in by the handler as it goes."""

    endpoint: str
    method: str
    backend_type: str
    api: str = "ollama"
    started: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.perf_counter)
    request_id: str | None = None
    client_addr: str | None = None
    user_agent: str | None = None
    model: str | None = None
    backend_model: str | None = None
    stream: bool | None = None
    prompt: str | None = None
    request_body: bytes | None = None
    backend_request: Any = None
    status_code: int | None = None
    response: str | None = None
    thinking: str | None = None
    tool_calls: list[Any] | None = None
    response_body: Any = None
    done_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    ttfb_ms: int | None = None
    ttft_ms: int | None = None
    latency_ms: int | None = None
    # The name of the API key the request came with (never the key).
    key_name: str | None = None
    # A stored copy (response body, answer text, thinking, tool calls) was cut
    # at database.max_body_kb: the answer went on, the record kept its start.
    truncated: bool = False

    def elapsed_ms(self) -> int:
        """Milliseconds since the request started."""
        return int((time.perf_counter() - self.started_mono) * 1000)

    def mark_first_byte(self) -> None:
        """Record the time to first byte once."""
        if self.ttfb_ms is None:
            self.ttfb_ms = self.elapsed_ms()

    def mark_first_token(self) -> None:
        """Record the time to the first content or thinking token once."""
        if self.ttft_ms is None:
            self.ttft_ms = self.elapsed_ms()

    def finish(self) -> None:
        """Close the record: total latency."""
        if self.latency_ms is None:
            self.latency_ms = self.elapsed_ms()

    def row(self) -> tuple[Any, ...]:
        """The values for one INSERT, in :data:`COLUMNS` order."""
        ts = datetime.fromtimestamp(self.started, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        return (
            ts, self.endpoint, self.method, self.model, self.prompt, self.response,
            self.status_code, self.latency_ms, self.stream, self.backend_type, self.error,
            self.request_id, self.client_addr, self.user_agent, self.backend_model,
            _text(self.request_body), _json(self.backend_request), _json(self.response_body),
            self.thinking or None, _json(self.tool_calls or None), self.done_reason,
            self.prompt_tokens, self.completion_tokens, self.ttfb_ms, self.ttft_ms, self.api,
            self.key_name,
        )  # fmt: skip


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", errors="replace")


def _json(value: Any) -> str | None:
    """JSON text for structured values; bytes and str are stored as they are."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except TypeError as exc:
        # A row that cannot be written would stop the writer and, with it, the
        # whole trail: keep the row and say what could not be stored.
        return orjson.dumps({"unstored": f"value could not be written as JSON: {exc}"}).decode()
