"""Incremental NDJSON line splitting and assembly of Ollama response chunks (pure)."""

from __future__ import annotations

from typing import Any

import orjson

from . import Budget, TooLong


class LineDecoder:
    """Splits a byte stream into complete lines, whatever the read boundaries.

    The limit is the caller's (``backend.max_answer_mb``), not ``readline``'s
    64 KiB, so a long tool call or embedding in one NDJSON line goes through;
    a line longer than ``limit`` raises :class:`~llm_proxy.translate.TooLong`.
    Time is linear in the bytes fed: an unfinished line is kept as the reads
    it came in and joined once, when its newline arrives.
    """

    __slots__ = ("_held", "_limit", "_pending")

    def __init__(self, limit: int | None = None) -> None:
        self._pending: list[bytes] = []
        self._held = 0
        self._limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        """The complete, non-blank lines ended by this chunk (without newlines)."""
        if b"\n" not in data:
            if data:
                self._pending.append(data)
                self._held += len(data)
                self._check(self._held)
            return []
        if self._pending:
            first, _, data = data.partition(b"\n")
            self._pending.append(first)
            lines = [b"".join(self._pending), *data.split(b"\n")]
            self._pending = []
            self._held = 0
        else:
            lines = data.split(b"\n")
        last = lines.pop()
        if last:
            self._pending.append(last)
            self._held = len(last)
        if self._limit is not None:
            self._check(max(map(len, lines)))
            self._check(self._held)
        return [line.rstrip(b"\r") for line in lines if line.strip()]

    def flush(self) -> list[bytes]:
        """The last line, when the stream ended without a newline."""
        rest = b"".join(self._pending)
        self._pending, self._held = [], 0
        return [rest.rstrip(b"\r")] if rest.strip() else []

    def _check(self, size: int) -> None:
        if self._limit is not None and size > self._limit:
            raise TooLong("an NDJSON line", self._limit)


class ChunkAssembler:
    """Builds the one-object answer out of a stream of Ollama chunks: an :class:`~.Assembler`.

    The same object serves the audit trail (content, thinking, tool calls,
    counts) and ``stream: false`` clients of a streaming backend. With a
    ``limit`` (the audit trail's ``database.max_body_kb``) it keeps at most that
    many characters of content, thinking and tool calls together: what comes
    after is dropped from the copy and ``truncated`` says so, so a stream of
    any length is recorded in bounded memory.
    """

    __slots__ = (
        "_budget",
        "_content",
        "_final",
        "_kind",
        "_last",
        "_logprobs",
        "_thinking",
        "_tool_calls",
        "error",
    )

    def __init__(self, limit: int | None = None, *, logprobs: bool = False) -> None:
        self._content: list[str] = []
        # Each chunk's token log probabilities, kept only to fold a stream:false answer.
        self._logprobs: list[Any] | None = [] if logprobs else None
        self._thinking: list[str] = []
        self._tool_calls: list[Any] = []
        self._final: dict[str, Any] | None = None  # the done chunk
        self._last: dict[str, Any] | None = None
        self._kind: str | None = None  # "chat" (message) or "generate" (response)
        self._budget = Budget(limit)
        self.error: str | None = None

    def feed(self, obj: dict[str, Any]) -> bool:
        """Take one chunk; True when it carried a token (content, thinking or a tool call)."""
        self._last = obj
        token = False
        message = obj.get("message")
        if isinstance(message, dict):
            self._kind = "chat"
            token = self._take(message.get("content"), message.get("thinking"))
            calls = message.get("tool_calls")
            if calls:
                if self._budget.room is None or self._budget.fits(len(orjson.dumps(calls, default=str))):
                    self._tool_calls.extend(calls)
                token = True
        elif "response" in obj:
            self._kind = "generate"
            token = self._take(obj.get("response"), obj.get("thinking"))
        if self._logprobs is not None:
            probs = obj.get("logprobs")
            if isinstance(probs, list):
                self._logprobs.extend(probs)
        if obj.get("done") is True:
            self._final = obj
        error = obj.get("error")
        if error:
            self.error = str(error)
        return token

    def _take(self, content: Any, thinking: Any) -> bool:
        token = False
        if isinstance(content, str) and content:
            self._budget.keep(self._content, content)
            token = True
        if isinstance(thinking, str) and thinking:
            self._budget.keep(self._thinking, thinking)
            token = True
        return token

    @property
    def truncated(self) -> bool:
        """True when something was left out of the copy to stay within the limit."""
        return self._budget.truncated

    @property
    def text(self) -> str | None:
        """The assembled answer; for pull, push and create progress, the last status."""
        if self._kind is not None:
            return "".join(self._content)
        status = (self._last or {}).get("status")
        return status if isinstance(status, str) else None

    @property
    def thinking(self) -> str | None:
        """The assembled thinking, None without any."""
        return "".join(self._thinking) or None

    @property
    def tool_calls(self) -> list[Any]:
        return self._tool_calls

    # Streams put their counts on the done chunk; whole answers such as
    # /api/embed carry them without one.

    @property
    def done_reason(self) -> str | None:
        value = (self._final or self._last or {}).get("done_reason")
        return value if isinstance(value, str) else None

    @property
    def prompt_tokens(self) -> int | None:
        return _count(self._final or self._last, "prompt_eval_count")

    @property
    def completion_tokens(self) -> int | None:
        return _count(self._final or self._last, "eval_count")

    @property
    def error_status(self) -> int | None:
        """None: an Ollama error line names no status."""
        return None

    def result(self) -> dict[str, Any] | None:
        """The whole answer as one Ollama object (final chunk's metrics included)."""
        if self._last is None:
            return None
        out = dict(self._final or self._last)
        text = "".join(self._content)
        if self._kind == "chat":
            message: dict[str, Any] = dict(out.get("message") or {"role": "assistant"})
            message.setdefault("role", "assistant")
            message["content"] = text
            if self._thinking:
                message["thinking"] = "".join(self._thinking)
            else:
                message.pop("thinking", None)
            if self._tool_calls:
                message["tool_calls"] = self._tool_calls
            out["message"] = message
        elif self._kind == "generate":
            out["response"] = text
            if self._thinking:
                out["thinking"] = "".join(self._thinking)
        if self._logprobs:
            out["logprobs"] = self._logprobs
        return out


def _count(obj: dict[str, Any] | None, key: str) -> int | None:
    value = (obj or {}).get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
