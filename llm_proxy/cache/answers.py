"""The kept answers: an LRU bounded in entries and bytes; recording a reply, replaying one.

What is kept is the backend side of an exchange, as the pipeline got it: the
bytes of a whole body, or each batch of NDJSON lines, each SSE frame, each
chunk of a large body, in the groups they came in. A hit is replayed as a
reply of the same kind, through the same codec, so the client gets the same
bytes in the same writes as the miss did, in either API, streamed or not.

Only the bytes are kept (what each item parses to is parsed again on replay),
and each entry is counted as its bytes plus :data:`OVERHEAD` per item, so
``cache.max_mb`` bounds what the cache holds. The replies being recorded share
a budget of ``cache.max_mb`` too, however many are relayed at once: one that
would go over it stops being recorded (it is relayed as ever, and not kept).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from ..backends import relay
from ..backends.base import Batch, Chunks, Frame, Frames, Lines, Reply, Whole
from ..config import CacheConfig
from ..translate.sse import SSEDecoder

# Bytes counted for each kept item beyond its own: the tuple slot and the bytes object's header.
OVERHEAD = 64
WHOLE, LINES, FRAMES, CHUNKS = "whole", "lines", "frames", "chunks"


@dataclass(slots=True)
class Answer:
    """One kept answer, and what it cost the backend the time it was made."""

    kind: str  # WHOLE, LINES, FRAMES or CHUNKS
    status: int
    content_type: str
    # WHOLE: (body,); LINES: one tuple of lines per batch; FRAMES: each frame's bytes; CHUNKS: each chunk.
    parts: tuple[Any, ...]
    size: int  # bytes counted against cache.max_mb
    saved_ms: int  # how long the miss took: what a hit saves
    saved_tokens: int | None  # prompt plus answer tokens the backend reported for it
    expires: float  # time.monotonic() after which it is stale

    def reply(self) -> Reply:
        """A fresh reply of the kind recorded, yielding the same items in the same groups."""
        if self.kind == WHOLE:
            return Whole(self.status, self.content_type, self.parts[0])
        if self.kind == LINES:
            return Lines(self.status, self.content_type, _each(_batch(lines) for lines in self.parts))
        if self.kind == FRAMES:
            return Frames(self.status, self.content_type, _each(_frame(raw) for raw in self.parts))
        return Chunks(self.status, self.content_type, _each(self.parts))


class Budget:
    """Bytes the replies being recorded may hold together: ``cache.max_mb``."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def give(self, size: int) -> None:
        self.used = max(0, self.used - size)


class Recording:
    """A reply's items as they pass to the client, kept while they fit in ``limit`` bytes."""

    __slots__ = ("_budget", "_held", "content_type", "done", "full", "kind", "parts", "size", "status")

    def __init__(self, reply: Reply, budget: Budget) -> None:
        self.status, self.content_type = reply.status, reply.content_type
        self.parts: list[Any] = []
        self.size = 0
        self.full = False  # outgrew the budget: not kept
        self._budget = budget
        self._held = 0  # bytes of the budget this recording holds
        # An NDJSON answer is whole once its done line has passed (NDJSON has no other end marker).
        self.done = not isinstance(reply, Lines)
        if isinstance(reply, Whole):
            self.kind = WHOLE
            self._add(reply.body, len(reply.body))
        elif isinstance(reply, Lines):
            self.kind = LINES
            reply.watch(self._lines)
        elif isinstance(reply, Frames):
            self.kind = FRAMES
            reply.watch(self._frame)
        else:
            self.kind = CHUNKS
            reply.watch(self._chunk)

    def _add(self, part: Any, size: int) -> None:
        """Keep ``part`` (counted as ``size`` bytes plus OVERHEAD), or stop keeping at all."""
        if self.full:
            return
        size += OVERHEAD
        budget = self._budget
        if budget.used + size > budget.limit:
            self.full, self.parts = True, []
            self.release()
            return
        budget.used += size
        self.size += size
        self._held += size
        self.parts.append(part)

    def release(self) -> None:
        """Give back what this recording holds of the budget (it is kept, or dropped)."""
        self._budget.give(self._held)
        self._held = 0

    def _lines(self, batch: Batch) -> None:
        if not batch:
            return
        if len(batch) == 1:  # a model's stream: a token a read, most of the time
            line, obj = batch[0]
            self._add((line,), len(line))
        else:
            lines = tuple([line for line, _ in batch])
            self._add(lines, sum(map(len, lines)) + OVERHEAD * (len(lines) - 1))
            obj = batch[-1][1]
        self.done = obj.get("done") is True

    def _frame(self, frame: Frame) -> None:
        self._add(frame.raw, len(frame.raw))

    def _chunk(self, data: bytes) -> None:
        self._add(data, len(data))

    def answer(self, saved_ms: int, saved_tokens: int | None, expires: float) -> Answer | None:
        """The kept answer, or None when the reply did not fit or did not end as an answer ends."""
        if self.full or not self.done or not self.parts:
            return None
        return Answer(
            self.kind, self.status, self.content_type, tuple(self.parts), self.size,
            saved_ms, saved_tokens, expires,
        )  # fmt: skip


class AnswerCache:
    """Answers by key, least recently used first out, within ``max_entries`` and ``max_mb``."""

    def __init__(self, config: CacheConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[bytes, Answer] = OrderedDict()
        self._clock = clock
        self.bytes = 0
        self.hits = self.misses = self.evictions = self.stored = 0
        self.recording = Budget(config.max_bytes)
        self.configure(config)

    def configure(self, config: CacheConfig) -> None:
        """Take new bounds (a reload); entries beyond them go, oldest first."""
        self.ttl = config.ttl
        self.max_entries = config.max_entries
        self.max_bytes = self.recording.limit = config.max_bytes
        self._fit(0)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Answer | None:
        """The fresh answer kept under ``key`` (now the most recently used), counted as a hit or miss."""
        found = self._entries.get(key)
        if found is not None and found.expires <= self._clock():
            self._drop(key)
            found = None
        if found is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return found

    def record(self, reply: Reply) -> Recording:
        """Start keeping what ``reply`` yields as it is relayed; :meth:`finish` it in any case."""
        return Recording(reply, self.recording)

    def finish(
        self, key: bytes, recording: Recording, answered: bool, saved_ms: int, saved_tokens: int | None
    ) -> bool:
        """Keep a relayed answer under ``key`` when it was ``answered`` whole; True when kept."""
        expires = self._clock() + self.ttl if self.ttl > 0 else float("inf")
        answer = recording.answer(saved_ms, saved_tokens, expires) if answered else None
        recording.release()
        if answer is None:
            return False
        if key in self._entries:
            self._drop(key)
        self._fit(answer.size)
        self._entries[key] = answer
        self.bytes += answer.size
        self.stored += 1
        return True

    def clear(self) -> int:
        """Forget every answer (a reload changed the models); how many there were."""
        count = len(self._entries)
        self._entries.clear()
        self.bytes = 0
        return count

    def _fit(self, size: int) -> None:
        """Evict the least recently used until one more answer of ``size`` bytes fits."""
        while self._entries and (len(self._entries) + (1 if size else 0) > self.max_entries
                                 or self.bytes + size > self.max_bytes):  # fmt: skip
            key = next(iter(self._entries))
            self._drop(key)
            self.evictions += 1

    def _drop(self, key: bytes) -> None:
        self.bytes -= self._entries.pop(key).size


async def _each(items: Iterable[Any]) -> AsyncGenerator[Any, None]:
    for item in items:
        yield item


def _batch(lines: tuple[bytes, ...]) -> Batch:
    """A batch of NDJSON lines with what each parses to, as the backend's relay made it."""
    batch: Batch = []
    for line in lines:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = None
        batch.append((line, obj if isinstance(obj, dict) else {}))
    return batch


def _frame(raw: bytes) -> Frame:
    """One kept SSE frame, decoded again as the relay decoded it."""
    inner = raw[6:-2]
    if raw.startswith(b"data: ") and raw.endswith(b"\n\n") and b"\n" not in inner and b"\r" not in inner:
        events = [inner.decode("utf-8", "replace")]  # llama-server's one-line frames: the fast path
    else:
        decoder = SSEDecoder()
        events = decoder.feed(raw) + decoder.flush()
    return relay.frame_of(raw, events)
