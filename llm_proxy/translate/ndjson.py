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
    """Builds the one-object answer out of a stream of Ollama chunks.

    The same object serves the audit trail (content, thinking, tool calls,
    counts) and ``stream: false`` clients of a streaming backend. With a
    ``limit`` (the audit trail's ``database.max_body_kb``) it keeps at most that
    many characters of content, thinking and tool calls together: what comes
    after is dropped from the copy and ``truncated`` says so, so a stream of
    any length is recorded in bounded memory.
    """

    __slots__ = ("budget", "chunks", "content", "error", "final", "kind", "last", "thinking", "tool_calls")

    def __init__(self, limit: int | None = None) -> None:
        self.content: list[str] = []
        self.thinking: list[str] = []
        self.tool_calls: list[Any] = []
        self.final: dict[str, Any] | None = None
        self.last: dict[str, Any] | None = None
        self.error: str | None = None
        self.kind: str | None = None  # "chat" (message) or "generate" (response)
        self.chunks = 0
        self.budget = Budget(limit)

    def feed(self, chunk: dict[str, Any]) -> bool:
        """Take one chunk; True when it carried a token (content, thinking or a tool call)."""
        self.chunks += 1
        self.last = chunk
        token = False
        message = chunk.get("message")
        if isinstance(message, dict):
            self.kind = "chat"
            token = self._take(message.get("content"), message.get("thinking"))
            calls = message.get("tool_calls")
            if calls:
                if self.budget.room is None or self.budget.fits(len(orjson.dumps(calls, default=str))):
                    self.tool_calls.extend(calls)
                token = True
        elif "response" in chunk:
            self.kind = "generate"
            token = self._take(chunk.get("response"), chunk.get("thinking"))
        if chunk.get("done") is True:
            self.final = chunk
        error = chunk.get("error")
        if error:
            self.error = str(error)
        return token

    def _take(self, content: Any, thinking: Any) -> bool:
        token = False
        if isinstance(content, str) and content:
            self.budget.keep(self.content, content)
            token = True
        if isinstance(thinking, str) and thinking:
            self.budget.keep(self.thinking, thinking)
            token = True
        return token

    @property
    def truncated(self) -> bool:
        """True when something was left out of the copy to stay within the limit."""
        return self.budget.truncated

    @property
    def text(self) -> str:
        """The assembled answer."""
        return "".join(self.content)

    @property
    def thought(self) -> str:
        """The assembled thinking."""
        return "".join(self.thinking)

    def result(self) -> dict[str, Any]:
        """The whole answer as one Ollama object (final chunk's metrics included)."""
        out = dict(self.final or self.last or {})
        if self.kind == "chat":
            message: dict[str, Any] = dict(out.get("message") or {"role": "assistant"})
            message.setdefault("role", "assistant")
            message["content"] = self.text
            if self.thinking:
                message["thinking"] = self.thought
            else:
                message.pop("thinking", None)
            if self.tool_calls:
                message["tool_calls"] = self.tool_calls
            out["message"] = message
        elif self.kind == "generate":
            out["response"] = self.text
            if self.thinking:
                out["thinking"] = self.thought
        return out
