r"""Pure translation: SSE and NDJSON decoding, Ollama ⇄ OpenAI shapes, answer assembly; no I/O.

One module per concept, each taking parsed JSON (or bytes) and returning new
values; nothing here does I/O or imports aiohttp:

* :mod:`.sse`, :mod:`.ndjson`: incremental decoders (``feed``/``flush``).
* :mod:`.requests`: an Ollama chat or generate request as llama-server's body.
* :mod:`.stream`: :class:`~.stream.StreamTranslator`, OpenAI chunks in, Ollama chunks out.
* :mod:`.embeddings`: ``/api/embed`` and ``/api/embeddings`` both ways.
* :mod:`.catalog`: model names and the model lists (``/api/tags``, ``/api/ps``, ``/api/show``).
* :mod:`.errors`: a backend's error answer or error frame as the error a client sees.
* :mod:`.ndjson` and :mod:`.openai_assembler`: the two :class:`Assembler`\ s, which
  fold an answer into what the audit trail records.

Facts behind the Ollama ⇄ OpenAI mapping: ``docs/`` of ollama/ollama (api.md)
and ollama-python's ``_types.py`` for the client side; llama.cpp's
``tools/server`` for the backend side.
"""

from __future__ import annotations

import time
from typing import Any, Literal, Protocol, TypeGuard

JSONDict = dict[str, Any]
# The two Ollama endpoints that generate: /api/chat and /api/generate.
Kind = Literal["chat", "generate"]


def is_number(value: object) -> TypeGuard[int | float]:
    """Tell a JSON number from everything else, booleans included."""
    return isinstance(value, int | float) and not isinstance(value, bool)


_second_cache: tuple[int, str] = (-1, "")


def rfc3339_now() -> str:
    """Return the current UTC time as RFC 3339 with nanoseconds, as Ollama does."""
    global _second_cache
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    cached = _second_cache
    # Every streamed chunk carries a timestamp; formatting the date part once
    # per second keeps this off the per-chunk cost.
    if cached[0] == seconds:
        prefix = cached[1]
    else:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_cache = (seconds, prefix)
    return f"{prefix}.{nanos:09d}Z"


class TooLong(ValueError):
    """A line or event longer than its decoder's limit: the stream cannot go on.

    The decoders keep what they hold within ``limit`` bytes plus one read, so a
    backend that never ends a line runs into this instead of into memory.
    """

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(f"{what} longer than {limit} bytes")
        self.what = what
        self.limit = limit


class Budget:
    """How much of an answer a copy for the audit trail may still keep (``None``: all of it).

    The assemblers take text through :meth:`keep` and whole pieces (a tool
    call) through :meth:`fits`; once the limit is reached the rest is dropped
    from the copy and :attr:`truncated` says so, however long the answer runs.
    """

    __slots__ = ("room", "truncated")

    def __init__(self, limit: int | None) -> None:
        self.room = limit  # characters still to keep
        self.truncated = False

    def keep(self, parts: list[str], text: str) -> None:
        """Append ``text`` to ``parts``, or as much of it as there is room for."""
        room = self.room
        if room is None:
            parts.append(text)
        elif len(text) <= room:
            parts.append(text)
            self.room = room - len(text)
        else:
            if room:
                parts.append(text[:room])
            self.room = 0
            self.truncated = True

    def fits(self, size: int) -> bool:
        """Whether ``size`` more characters fit; if so they are taken from the room."""
        if self.room is None:
            return True
        if size > self.room:
            self.truncated = True
            return False
        self.room -= size
        return True


class Assembler(Protocol):
    """Folds one answer into what its audit record keeps, one object at a time.

    The objects are a stream's chunks as they are relayed, or a whole answer
    fed once; the pipeline (``api/pipeline.py``) reads the rest. With a
    ``limit`` (``database.max_body_kb``) an assembler keeps at most that many
    characters of text, thinking and tool calls together, and ``truncated``
    says when it dropped some.
    """

    def feed(self, obj: dict[str, Any]) -> bool:
        """Take one chunk or whole answer; True when it carried a token (text, thinking, a tool call)."""

    @property
    def text(self) -> str | None:
        """The answer's text (for Ollama's pull, push and create: the last status); None without one."""

    @property
    def thinking(self) -> str | None:
        """The model's thinking (reasoning), None without any."""

    @property
    def tool_calls(self) -> list[Any]:
        """The tool calls, in the API's own shape."""

    @property
    def done_reason(self) -> str | None:
        """Why the answer ended (Ollama's done_reason, OpenAI's finish_reason)."""

    @property
    def prompt_tokens(self) -> int | None: ...

    @property
    def completion_tokens(self) -> int | None: ...

    @property
    def error(self) -> str | None:
        """The error the answer reported (an error line or frame), None when it reported none."""

    @property
    def error_status(self) -> int | None:
        """The status that error names (OpenAI's ``code``); None when it names none."""

    @property
    def truncated(self) -> bool:
        """True when something was left out of the copy to stay within the limit."""

    def result(self) -> dict[str, Any] | None:
        """The whole answer as one object, in the API's non-stream shape; None when nothing came."""
