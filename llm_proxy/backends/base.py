"""The Backend protocol: one frozen call in, one reply out.

The pipeline (``api/pipeline.py``) parses the client's request into a
:class:`Call`; the backend answers with a :class:`Reply`, one of four kinds:

* :class:`Whole`: a complete body.
* :class:`Lines`: Ollama NDJSON lines (``/api/*``), each read's lines as one
  :data:`Batch` of the line to send (without its newline) and its parsed object,
  so the pipeline relays bytes untouched and records without parsing twice.
* :class:`Frames`: a relayed SSE stream (``/v1/*``), each :class:`Frame` its
  bytes as received plus what they parse to.
* :class:`Chunks`: a body passed on unchanged that is larger than the stored
  copy (``database.max_body_kb``), as the backend's reads, so it is not held.

The three streams share :class:`Stream`, the one place their clean-up lives:
:meth:`Stream.close` ends the stream and frees what it holds (its backend
connection, a llama-server), once, whether it was read to its end, broke off,
or was never started.

Backends never touch the audit record. A reply says what was sent to the
backend (``sent``, when it is not the client's body as mapped at the edge),
and a ProxyError raised after sending carries it too (:func:`sending`); the
pipeline records both.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from ..config import Config
from ..errors import ProxyError

StreamItem = tuple[bytes, dict[str, Any]]
# The items that one read from the backend made available, sent to the client
# in one write: nothing waits for anything, and a burst costs one syscall.
Batch = list[StreamItem]


# Characters of a try's error kept in the record: the full text of the last one
# is the row's ``error``; a backend's error body may be any size.
ATTEMPT_ERROR = 500


@dataclass(slots=True)
class Attempt:
    """One try of one backend for a request: which, what it answered, how long it took."""

    backend: str
    status: int | None = None  # the backend's status, or the error's (502 unreachable)
    error: str | None = None
    ms: int = 0
    model: str | None = None  # the models.fallback model this try was on (client-side name)

    def as_dict(self) -> dict[str, Any]:
        """The attempt as stored in the ``attempts`` column (an error's first ATTEMPT_ERROR characters)."""
        error = (
            self.error
            if self.error is None or len(self.error) <= ATTEMPT_ERROR
            else self.error[:ATTEMPT_ERROR] + "…"
        )
        found: dict[str, Any] = {"backend": self.backend, "status": self.status, "error": error}
        found["ms"] = self.ms
        if self.model is not None:
            found["model"] = self.model
        return found


@dataclass(slots=True)
class Route:
    """Where a request went: every attempt in order, the last one the answer's."""

    attempts: list[Attempt]
    backend: str | None = None  # the name of the backend whose answer the client got
    type: str | None = None  # its type (openai, ollama, llamacpp)
    fallback: str | None = None  # the client-side model retried on for its context size
    backend_model: str | None = None  # the backend's name for the fallback model


@dataclass(frozen=True, slots=True)
class Call:
    """One request, parsed, checked and with the model name resolved; backends do not change it."""

    endpoint: str  # the route as the client called it, e.g. "/api/chat"
    method: str
    path: str  # the path as received (with parameters filled in)
    body: dict[str, Any] | None  # parsed JSON body, model already mapped to the backend's name
    raw: bytes  # the body to forward as it is: as received, or re-encoded after mapping
    query: str
    model: str | None  # client-side model name
    backend_model: str | None
    # time.perf_counter() when the request arrived: the durations an answer reports count from it.
    started: float
    # The client wants NDJSON (the default for Ollama's streaming endpoints).
    stream: bool = True
    # The route makes the backend compute: it waits for a slot of the backend's gate.
    gated: bool = False


@dataclass(frozen=True, slots=True)
class Frame:
    """One SSE frame of a relayed stream: its bytes as received and its parsed data."""

    raw: bytes  # the frame up to and including its blank line, exactly as the backend sent it
    data: str | None  # the event's data ("[DONE]" included); None for a comment or keep-alive
    event: dict[str, Any] | None  # ``data`` parsed, when it is a JSON object


@dataclass(slots=True)
class Whole:
    """A complete answer."""

    status: int
    content_type: str
    body: bytes
    sent: Any = None  # what the backend was sent, when it is not the call's body
    route: Route | None = None  # which backends were tried (set by the router)

    async def close(self) -> None:
        """Nothing to free: the body is all here."""


Item = TypeVar("Item")


class Stream(Generic[Item]):
    """An answer read item by item as the backend sends it; :meth:`close` frees what it holds.

    Iterating it yields the items; its end, or an error from it, closes it at
    once. ``close()`` runs its releases once, and also when the stream was never
    started: a generator closed before its first item never runs its own
    ``finally:``, so a client that left before the backend's first byte would
    otherwise leave the connection open, and the backend writing into it.
    """

    __slots__ = (
        "_closed", "_explain", "_failed", "_items", "_releases", "_watch", "content_type", "route", "sent",
        "status",
    )  # fmt: skip

    def __init__(
        self,
        status: int,
        content_type: str,
        items: AsyncGenerator[Item, None],
        *,
        release: Callable[[], None] | None = None,
        sent: Any = None,
    ) -> None:
        self.status = status
        self.content_type = content_type
        self.sent = sent  # what the backend was sent, when it is not the call's body
        self.route: Route | None = None  # which backends were tried (set by the router)
        self._items = items
        self._releases: list[Callable[[bool], None]] = []
        if release is not None:
            self._releases.append(lambda _failed: release())
        self._explain: Callable[[ProxyError], Awaitable[ProxyError]] | None = None
        self._failed = False
        self._closed = False
        self._watch: Callable[[Item], None] | None = None

    def watch(self, see: Callable[[Item], None]) -> None:
        """Show each item to ``see`` as it passes, before the reader gets it (the answer cache)."""
        self._watch = see

    def hold(
        self, release: Callable[[bool], None], explain: Callable[[ProxyError], Awaitable[ProxyError]]
    ) -> None:
        """Keep what the stream comes from until it ends: ``release(failed)`` then, once.

        ``failed`` is True when the stream broke off with a 5xx. ``explain``
        turns such an error into the one to report (a llama-server that died).
        """
        self._releases.append(release)
        self._explain = explain

    def on_close(self, release: Callable[[bool], None]) -> None:
        """Also run ``release(failed)`` when the stream ends (a gate's slot, a breaker's count)."""
        self._releases.append(release)

    def __aiter__(self) -> Stream[Item]:
        return self

    async def __anext__(self) -> Item:
        try:
            item = await self._items.__anext__()
            if self._watch is not None:
                self._watch(item)
            return item
        except StopAsyncIteration:
            await self.close()
            raise
        except ProxyError as exc:
            self._failed = exc.status >= 500
            error = exc if self._explain is None else await self._explain(exc)
            await self.close()
            if error is exc:
                raise
            raise error from None
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """End the stream, read to its end or not, and free what it holds (once)."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._items.aclose()
        finally:
            for release in self._releases:
                release(self._failed)


class Lines(Stream[Batch]):
    """Ollama NDJSON lines (``/api/*``), a batch per backend read."""

    __slots__ = ()


class Frames(Stream[Frame]):
    """A relayed SSE stream (``/v1/*``), frame by frame."""

    __slots__ = ()


class Chunks(Stream[bytes]):
    """A whole body too large to hold, as it arrives, passed on unchanged."""

    __slots__ = ()


Reply = Whole | Lines | Frames | Chunks


@contextmanager
def sending(body: Any) -> Iterator[None]:
    """Inside: a ProxyError is one that happened after ``body`` was built to send (for the record)."""
    try:
        yield
    except ProxyError as exc:
        if exc.sent is None:
            exc.sent = body
        raise


class Backend(Protocol):
    """What every backend provides."""

    type: str
    endpoint: str
    # The config in force; a SIGHUP reload replaces it (models, logging flags).
    config: Config

    async def start(self) -> None:
        """Open connections (called once, before serving)."""

    async def close(self) -> None:
        """Close connections (called once, at shutdown)."""

    async def health(self) -> str | None:
        """``None`` when the backend answers, else why not."""

    async def call(self, call: Call) -> Reply:
        """Forward one request; raises a :class:`~llm_proxy.errors.ProxyError` on failure."""

    async def openai(self, call: Call) -> Reply:
        """Relay one OpenAI-compatible (``/v1/*``) request; a stream comes back as ``Frames``.

        The backend's status and body are kept, errors included; only transport
        failures (and a model the backend does not serve) raise ProxyErrors.
        """
