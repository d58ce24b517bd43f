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
