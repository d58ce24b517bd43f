"""Pure translation: SSE and NDJSON decoding, Ollama ⇄ OpenAI shapes, answer assembly; no I/O."""

from __future__ import annotations


class TooLong(ValueError):
    """A line or event longer than its decoder's limit: the stream cannot go on.

    The decoders keep what they hold within ``limit`` bytes plus one read, so a
    backend that never ends a line runs into this instead of into memory.
    """

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(f"{what} longer than {limit} bytes")
        self.what = what
        self.limit = limit
