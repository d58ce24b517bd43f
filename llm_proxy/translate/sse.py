"""Incremental Server-Sent-Events decoder: bytes in, ``data`` payloads out.

The decoder follows the event-stream parsing rules of the WHATWG HTML spec
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation)
as far as an OpenAI-style backend needs them:

* lines end in ``\\n``, ``\\r\\n`` or a lone ``\\r``;
* a blank line ends an event; an event with no ``data`` line is not reported;
* ``data`` lines of one event are joined with ``\\n``; one space after the
  colon is stripped;
* comment lines (``:`` first, the keep-alives llama-server sends while idle)
  and fields other than ``data`` (``event``, ``id``, ``retry``) are ignored;
* a UTF-8 byte-order mark at the very start of the stream is dropped.

It never decodes a partial line, so a chunk boundary inside a multi-byte
UTF-8 character, or between ``\\r`` and ``\\n``, changes nothing. The
``[DONE]`` sentinel is an ordinary payload here; the caller decides.

:class:`SSEFramer` cuts the same byte stream into whole frames (each event's
bytes up to and including the blank line that ends it), for relaying a stream
event by event without re-serialising it.

Both take time linear in what they are fed, however long a frame: an
unfinished one is kept as a list of reads, joined once when it ends, and only
new bytes (with the few before them that a terminator may span) are searched.
Both take a ``limit``: a line, event or frame held longer than that raises
:class:`~llm_proxy.translate.TooLong` rather than growing without end.
"""

from __future__ import annotations

import re

from . import TooLong

__all__ = ["SSEDecoder", "SSEFramer", "TooLong"]

_BOM = b"\xef\xbb\xbf"
# A blank line: a line terminator right after another. The groups are atomic so
# that the two bytes of one ``\r\n`` are never taken for two terminators.
_BLANK_LINE = re.compile(rb"(?>\r\n|\r|\n)(?>\r\n|\r|\n)")


class SSEDecoder:
    """Turn a byte stream into the ``data`` payloads of its complete events."""

    __slots__ = ("_at_start", "_data", "_held", "_limit", "_skip_lf", "_tail", "_tail_size")

    def __init__(self, limit: int | None = None) -> None:
        # Bytes after the last line terminator, kept as parts so a long line
        # arriving in many small reads is joined once, not copied per read.
        self._tail: list[bytes] = []
        self._tail_size = 0
        # The ``data`` values of the event being read, still as bytes.
        self._data: list[bytes] = []
        self._held = 0  # bytes in _data
        self._limit = limit
        # The previous chunk ended in ``\r``: a ``\n`` opening the next chunk
        # belongs to that same line terminator.
        self._skip_lf = False
        self._at_start = True

    def feed(self, data: bytes) -> list[str]:
        """Consume one chunk; return the payloads of the events it completes."""
        if not data:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if data[0] == 0x0A:
                data = data[1:]
                if not data:
                    return []
        if self._at_start:
            data = self._strip_bom(data)
            if not data:
                return []
        if b"\n" not in data and b"\r" not in data:
            self._tail.append(data)
            self._tail_size += len(data)
            if self._limit is not None and self._tail_size + self._held > self._limit:
                raise TooLong("an SSE event", self._limit)
            return []
        if self._tail:
            self._tail.append(data)
            data = b"".join(self._tail)
            self._tail = []
            self._tail_size = 0
        if b"\r" in data:
            # The tail never holds a terminator, so normalising the joined
            # buffer cannot merge two lines; a final ``\r`` ends its line
            # now and may be followed by the ``\n`` of a ``\r\n`` later.
            if data[-1] == 0x0D:
                self._skip_lf = True
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = data.split(b"\n")
        last = lines.pop()
        if last:
            self._tail.append(last)
            self._tail_size = len(last)
        return self._lines(lines)

    def flush(self) -> list[str]:
        """Report an event left unterminated at end of stream, then reset."""
        lines: list[bytes] = []
        if self._tail:
            lines.append(b"".join(self._tail))
        # An empty line dispatches whatever the last event collected.
        lines.append(b"")
        events = self._lines(lines)
        self._tail = []
        self._tail_size = 0
        self._data = []
        self._held = 0
        self._skip_lf = False
        self._at_start = True
        return events

    def _strip_bom(self, data: bytes) -> bytes:
        """Drop a byte-order mark at the start of the stream, even if split."""
        if self._tail:
            head = b"".join(self._tail) + data
            self._tail = []
            self._tail_size = 0
        else:
            head = data
        if len(head) < len(_BOM) and _BOM.startswith(head):
            # Too short to tell yet: wait for more bytes.
            self._tail.append(head)
            self._tail_size = len(head)
            return b""
        self._at_start = False
        if head.startswith(_BOM):
            return head[len(_BOM) :]
        return head

    def _lines(self, lines: list[bytes]) -> list[str]:
        """Apply complete lines to the event being read; return finished events."""
        events: list[str] = []
        data = self._data
        limit = self._limit
        for line in lines:
            if not line:
                if data:
                    if len(data) == 1:
                        events.append(data[0].decode("utf-8", "replace"))
                    else:
                        events.append(b"\n".join(data).decode("utf-8", "replace"))
                    data = self._data = []
                    self._held = 0
            elif line.startswith(b"data:"):
                value = line[5:]
                if value[:1] == b" ":
                    value = value[1:]
                data.append(value)
                self._held += len(value) + 1
                if limit is not None and self._held > limit:
                    raise TooLong("an SSE event", limit)
            elif line == b"data":
                # A field with no colon has an empty value.
                data.append(b"")
            elif limit is not None and len(line) > limit:
                raise TooLong("an SSE line", limit)
        return events


class SSEFramer:
    """Cut a byte stream into whole SSE frames, each ending with its blank line.

    Joined, the frames are exactly the bytes fed in: nothing is decoded or
    re-encoded, so a relay can send each frame as the backend wrote it.
    """

    __slots__ = ("_held", "_limit", "_pieces", "_tail")

    def __init__(self, limit: int | None = None) -> None:
        # The unfinished frame, as the reads it came in: joined once, when it ends.
        self._pieces: list[bytes] = []
        self._held = 0
        # Its last bytes: a blank line is at most four bytes, so one that ends in
        # new data starts no earlier than three bytes before it.
        self._tail = b""
        self._limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        """Consume one chunk; return the frames it completes."""
        if not data:
            return []
        tail = self._tail
        # Search only the new bytes and the three before them, never the whole frame again.
        buffer = tail + data if tail else data
        frames: list[bytes] = []
        start = len(tail)  # where the next frame's bytes begin in ``buffer``
        pos = 0
        # Without a CR a blank line can only be LF LF, which bytes.find locates at
        # C speed; the regex, trying three alternatives at every byte, is only
        # needed for streams that use CR (rare: llama-server and Ollama send LF).
        plain = b"\r" not in buffer
        while True:
            if plain:
                at = buffer.find(b"\n\n", pos)
                if at < 0:
                    break
                end = at + 2
            else:
                found = _BLANK_LINE.search(buffer, pos)
                if found is None:
                    break
                end = found.end()
                if end == len(buffer) and buffer[-1] == 0x0D:
                    break  # this ``\r`` may be the first half of a ``\r\n``: wait for the next byte
            if self._pieces:
                self._pieces.append(buffer[start:end])
                frames.append(b"".join(self._pieces))
                self._pieces = []
                self._held = 0
            else:
                frames.append(buffer[start:end])
            self._check(len(frames[-1]))
            start = pos = end
        if start < len(buffer):
            rest = buffer[start:]
            self._pieces.append(rest)
            self._held += len(rest)
            self._check(self._held)
        # The last bytes of the frame still open (none when the read ended one).
        # (Before any frame ended here, ``buffer`` is all of it: old tail and new bytes.)
        self._tail = buffer[max(start if frames else 0, len(buffer) - 3) :]
        return frames

    def flush(self) -> bytes:
        """The bytes of an unfinished last frame (maybe empty), then reset."""
        rest = b"".join(self._pieces)
        self._pieces, self._held, self._tail = [], 0, b""
        return rest

    def _check(self, size: int) -> None:
        if self._limit is not None and size > self._limit:
            raise TooLong("an SSE frame", self._limit)
