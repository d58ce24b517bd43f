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
"""

from __future__ import annotations

import re

__all__ = ["SSEDecoder", "SSEFramer"]

_BOM = b"\xef\xbb\xbf"
# A blank line: a line terminator right after another. The groups are atomic so
# that the two bytes of one ``\r\n`` are never taken for two terminators.
_BLANK_LINE = re.compile(rb"(?>\r\n|\r|\n)(?>\r\n|\r|\n)")


class SSEDecoder:
    """Turn a byte stream into the ``data`` payloads of its complete events."""

    __slots__ = ("_at_start", "_data", "_skip_lf", "_tail")

    def __init__(self) -> None:
        # Bytes after the last line terminator, kept as parts so a long line
        # arriving in many small reads is joined once, not copied per read.
        self._tail: list[bytes] = []
        # The ``data`` values of the event being read, still as bytes.
        self._data: list[bytes] = []
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
            return []
        if self._tail:
            self._tail.append(data)
            data = b"".join(self._tail)
            self._tail = []
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
        self._data = []
        self._skip_lf = False
        self._at_start = True
        return events

    def _strip_bom(self, data: bytes) -> bytes:
        """Drop a byte-order mark at the start of the stream, even if split."""
        if self._tail:
            head = b"".join(self._tail) + data
            self._tail = []
        else:
            head = data
        if len(head) < len(_BOM) and _BOM.startswith(head):
            # Too short to tell yet: wait for more bytes.
            self._tail.append(head)
            return b""
        self._at_start = False
        if head.startswith(_BOM):
            return head[len(_BOM) :]
        return head

    def _lines(self, lines: list[bytes]) -> list[str]:
        """Apply complete lines to the event being read; return finished events."""
        events: list[str] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    if len(data) == 1:
                        events.append(data[0].decode("utf-8", "replace"))
                    else:
                        events.append(b"\n".join(data).decode("utf-8", "replace"))
                    data = self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                if value[:1] == b" ":
                    value = value[1:]
                data.append(value)
            elif line == b"data":
                # A field with no colon has an empty value.
                data.append(b"")
        return events


class SSEFramer:
    """Cut a byte stream into whole SSE frames, each ending with its blank line.

    Joined, the frames are exactly the bytes fed in: nothing is decoded or
    re-encoded, so a relay can send each frame as the backend wrote it.
    """

    __slots__ = ("_buffer", "_scan")

    def __init__(self) -> None:
        self._buffer = b""
        # Where the next search may start: a blank line is at most four bytes,
        # so one that ends in new data starts no earlier than three before it.
        self._scan = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Consume one chunk; return the frames it completes."""
        buffer = self._buffer + data if self._buffer else data
        frames: list[bytes] = []
        start = 0
        while (found := _BLANK_LINE.search(buffer, max(start, self._scan))) is not None:
            end = found.end()
            if end == len(buffer) and buffer[-1] == 0x0D:
                break  # this ``\r`` may be the first half of a ``\r\n``: wait for the next byte
            frames.append(buffer[start:end])
            start = end
        self._buffer = buffer[start:]
        self._scan = max(0, len(self._buffer) - 3)
        return frames

    def flush(self) -> bytes:
        """The bytes of an unfinished last frame (maybe empty), then reset."""
        rest, self._buffer, self._scan = self._buffer, b"", 0
        return rest
