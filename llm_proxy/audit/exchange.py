"""The Exchange record: everything one request produced, as one ``logs`` row.

:meth:`Exchange.row` is where a row's values are made storable (the edge): a
value SQLite cannot take used to stop the writer, and with it the whole trail
(issue "One bad byte must never stop the audit trail").

- Text must be valid UTF-8. aiohttp decodes header bytes that are not UTF-8 as
  lone surrogates (``surrogateescape``); they are taken back to their bytes and
  those that are not UTF-8 stored as U+FFFD, as bodies received as bytes are
  (and as ``middlewares.header_text`` does at the edge of the request). Any
  other lone surrogate is stored as U+FFFD too.
- Integers must fit SQLite's signed 64 bits, and counts and durations must not
  be negative. Any other value is stored as NULL, and ``error`` says which
  column held what (``prompt_tokens 9223372036854775808 out of range: not stored``).
"""

from __future__ import annotations

import codecs
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

# Column order of the INSERT; the names are the `logs` columns (migrations/sqlite/0001_logs.sql).
# A new column: CONTRIBUTING.md, "a column of the audit trail".
COLUMNS = (
    "timestamp", "endpoint", "method", "model", "prompt", "response", "status_code",
    "latency_ms", "stream", "backend_type", "error", "request_id", "client_addr",
    "user_agent", "backend_model", "request_body", "backend_request", "response_body",
    "thinking", "tool_calls", "done_reason", "prompt_tokens", "completion_tokens",
    "ttfb_ms", "ttft_ms", "api", "key_name", "truncated", "backend_name", "attempts",
    "cache_hit", "cache_saved_ms", "cache_saved_tokens", "replay_of", "trace_id",
)  # fmt: skip
# What ``truncated`` holds for a row whose answer was cut as it was relayed: the
# copy kept its start, the full size was never known (migrations/sqlite/0006).
ANSWER_CUT = '{"answer":null}'


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
    # The named backend that answered (backends:, "default" for backend: alone),
    # and every try in order: [{"backend", "status", "error", "ms"}] (migrations/sqlite/0007).
    backend_name: str | None = None
    attempts: list[dict[str, Any]] | None = None
    # The answer cache (migrations/sqlite/0010): True from the cache, False a qualifying
    # request the backend answered, None not considered; what a hit spared the backend.
    cache_hit: bool | None = None
    cache_saved_ms: int | None = None
    cache_saved_tokens: int | None = None
    # The id of the row this request replays (``llm-proxy replay``'s X-Replay-Of header).
    replay_of: int | None = None
    # The OpenTelemetry trace of this exchange (32 hex digits), when it was traced.
    trace_id: str | None = None
    # Set by the writer once the row is stored (None if it never was).
    row_id: int | None = None
    turn_id: int | None = None
    # Called once by the writer when the row is stored, or given up (telemetry ends its span here).
    on_stored: Callable[[Exchange], None] | None = field(default=None, repr=False)

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

    def stored(self) -> None:
        """The writer is done with this record (its ``row_id`` set if it landed): tell ``on_stored``."""
        callback, self.on_stored = self.on_stored, None
        if callback is not None:
            try:
                callback(self)
            except Exception:  # the writer must never stop for a listener's fault
                logging.getLogger("llm_proxy.audit").exception("after storing request %s", self.request_id)

    def row(self) -> tuple[Any, ...]:
        """The values for one INSERT, in :data:`COLUMNS` order, each one SQLite can store."""
        notes: list[str] = []
        values = [
            _timestamp(self.started, notes), self.endpoint, self.method, self.model, self.prompt,
            self.response, self.status_code, self.latency_ms, self.stream, self.backend_type,
            self.error, self.request_id, self.client_addr, self.user_agent, self.backend_model,
            _text(self.request_body), _json(self.backend_request), _json(self.response_body),
            self.thinking or None, _json(self.tool_calls or None), self.done_reason,
            self.prompt_tokens, self.completion_tokens, self.ttfb_ms, self.ttft_ms, self.api,
            self.key_name, ANSWER_CUT if self.truncated is True else None, self.backend_name,
            _json(self.attempts), self.cache_hit, self.cache_saved_ms, self.cache_saved_tokens,
            self.replay_of, self.trace_id,
        ]  # fmt: skip
        return storable(values, notes)

    def reduced(self, reason: str) -> tuple[Any, ...]:
        """The metadata of a row that could not be stored, and why: a row that always can be.

        The writer's last resort (audit/recorder.py). Only short metadata is
        kept, each value checked strictly (text cut to :data:`REDUCED_TEXT`
        characters), so nothing in it can be refused.
        """
        notes: list[str] = []
        kept = {
            "timestamp": _timestamp(self.started, notes),
            "endpoint": _plain(self.endpoint) or "?",  # NOT NULL columns
            "method": _plain(self.method) or "?",
            "api": _plain(self.api) or "?",
            "model": _plain(self.model),
            "backend_type": _plain(self.backend_type),
            "backend_name": _plain(self.backend_name),
            "request_id": _plain(self.request_id),
            "client_addr": _plain(self.client_addr),
            "key_name": _plain(self.key_name),
            "trace_id": _plain(self.trace_id),
            "status_code": _small_int(self.status_code, _INT_MIN),
            "latency_ms": _small_int(self.latency_ms, 0),
            "stream": self.stream if type(self.stream) is bool else None,
            "error": _plain(f"row could not be stored: {reason}", 4 * REDUCED_TEXT),
        }
        return tuple(kept.get(column) for column in COLUMNS)


# -- making values storable ----------------------------------------------------

_INT_MAX = 2**63 - 1  # SQLite's INTEGER is a signed 64-bit value
_INT_MIN = -(2**63)
REDUCED_TEXT = 256  # characters of each text kept in a reduced row
_INTEGERS = (
    "status_code", "latency_ms", "prompt_tokens", "completion_tokens", "ttfb_ms", "ttft_ms",
    "cache_hit", "cache_saved_ms", "cache_saved_tokens", "replay_of",
)  # fmt: skip
_COUNTS = frozenset(_INTEGERS) - {"status_code"}  # counts and durations: never negative
_TEXT = [i for i, c in enumerate(COLUMNS) if c not in (*_INTEGERS, "timestamp", "stream")]
_INT = [(i, c, c in _COUNTS) for i, c in enumerate(COLUMNS) if c in _INTEGERS]
_STREAM = COLUMNS.index("stream")
_ERROR = COLUMNS.index("error")


def storable(values: list[Any], notes: list[str]) -> tuple[Any, ...]:
    """``values`` (in :data:`COLUMNS` order) as SQLite can store them; what was not kept goes to ``error``.

    Runs for every request: a value already fine costs a type check (and
    ``isascii()``, which CPython answers without reading the text).
    """
    for i in _TEXT:
        v = values[i]
        if v is not None and not (type(v) is str and v.isascii()):
            values[i] = storable_text(v)
    for i, column, count in _INT:
        v = values[i]
        if v is not None and not (type(v) is int and (0 if count else _INT_MIN) <= v <= _INT_MAX):
            values[i] = _integer(column, v, count, notes)
    stream = values[_STREAM]
    if stream is not None and type(stream) is not bool:
        values[_STREAM] = None
        notes.append(f"stream {_show(stream)} is not true or false: not stored")
    if notes:
        values[_ERROR] = "; ".join([values[_ERROR], *notes] if values[_ERROR] else notes)
    return tuple(values)


def storable_text(value: Any) -> str:
    """``value`` as valid UTF-8 text: lone surrogates escaped, bytes decoded, other values as text."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    if type(value) is not str:
        value = str.__str__(value) if isinstance(value, str) else str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "llm_proxy.unescape").decode("utf-8", errors="replace")
    return value


_REPLACEMENT = "\ufffd".encode()


def _unescape(exc: UnicodeError) -> tuple[bytes, int]:
    """Encoding error handler for lone surrogates: the byte aiohttp escaped, else U+FFFD."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = bytearray()
    for ch in exc.object[exc.start : exc.end]:
        n = ord(ch)
        # surrogateescape maps byte 0xNN (0x80-0xff) to U+DCNN; decoding with
        # "replace" then turns each such byte that is not UTF-8 into U+FFFD.
        out += bytes((n - 0xDC00,)) if 0xDC80 <= n <= 0xDCFF else _REPLACEMENT
    return bytes(out), exc.end


codecs.register_error("llm_proxy.unescape", _unescape)


def _integer(column: str, value: Any, count: bool, notes: list[str]) -> int | None:
    """An integer column's value, or None with a note saying why it was not stored."""
    number = value
    if isinstance(value, float) and value.is_integer():
        number = int(value)  # 12.0 tokens is 12 tokens
    elif isinstance(value, int):
        number = int(value)  # bool and int subclasses: the plain number
    if type(number) is not int:
        notes.append(f"{column} {_show(value)} is not an integer: not stored")
        return None
    if not _INT_MIN <= number <= _INT_MAX:
        notes.append(f"{column} {_show(number)} out of range: not stored")
        return None
    if count and number < 0:
        notes.append(f"{column} {number} is negative: not stored")
        return None
    return number


def _show(value: Any) -> str:
    """A short, storable description of a value for a note in ``error``."""
    if type(value) is int:
        if value.bit_length() > 128:  # str() of a huge int is slow, and refused past 4300 digits
            return f"{'-' if value < 0 else ''}(a {value.bit_length()}-bit integer)"
        return str(value)
    try:
        text = repr(value)
    except Exception:  # a value's own __repr__ failing must not lose the row
        text = f"<{type(value).__name__}>"
    return storable_text(text if len(text) <= 60 else text[:57] + "...")


def _plain(value: Any, limit: int = REDUCED_TEXT) -> str | None:
    """Text for a reduced row: a str only, made valid UTF-8 and cut short."""
    if type(value) is not str:
        return None
    return storable_text(value[:limit])


def _small_int(value: Any, lowest: int) -> int | None:
    """An integer for a reduced row: a plain int in range, else None."""
    return value if type(value) is int and lowest <= value <= _INT_MAX else None


def _timestamp(started: Any, notes: list[str]) -> str:
    """``started`` as 'YYYY-MM-DDTHH:MM:SS.mmmZ'; a value that is not a time gives the time now."""
    try:
        when = datetime.fromtimestamp(started, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        notes.append(f"started {_show(started)} is not a time: timestamp is when the row was made")
        when = datetime.now(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _text(value: Any) -> Any:
    """A body received as bytes, as text (bytes that are not UTF-8 become U+FFFD)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return value


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
