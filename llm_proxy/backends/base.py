"""The Backend protocol: one call in, one reply out.

A handler parses the client's request into a :class:`Call`; the backend answers
with a :class:`Reply` that is either a whole body or a stream of Ollama NDJSON
lines. Each stream item is the line to send (without its newline) together with
the parsed object, so the handler can relay bytes untouched and still assemble
the audit record without parsing twice.

The OpenAI-compatible API (``/v1/*``) is relayed rather than translated:
:meth:`Backend.openai` answers with the backend's own body, or with its SSE
stream as :class:`Frame` items, each the frame's bytes as received plus what
they parse to.

A whole body the proxy passes on unchanged and that is larger than the stored
copy (``database.max_body_kb``) is not held: it comes as ``chunks``, the
backend's reads, for the handler to send on one by one.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..audit.exchange import Exchange
from ..config import Config

StreamItem = tuple[bytes, dict[str, Any]]
# The items that one read from the backend made available, sent to the client
# in one write: nothing waits for anything, and a burst costs one syscall.
Batch = list[StreamItem]


@dataclass(slots=True)
class Call:
    """One request, parsed and with the model name resolved."""

    endpoint: str  # the route as the client called it, e.g. "/api/chat"
    method: str
    path: str  # the path as received (with parameters filled in)
    body: dict[str, Any] | None  # parsed JSON body, model already mapped to the backend's name
    raw: bytes  # the body to forward as it is: as received, or re-encoded after mapping
    query: str
    model: str | None  # client-side model name
    backend_model: str | None
    exchange: Exchange
    # The client wants NDJSON (the default for Ollama's streaming endpoints).
    stream: bool = True
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Frame:
    """One SSE frame of a relayed stream: its bytes as received and its parsed data."""

    raw: bytes  # the frame up to and including its blank line, exactly as the backend sent it
    data: str | None  # the event's data ("[DONE]" included); None for a comment or keep-alive
    event: dict[str, Any] | None  # ``data`` parsed, when it is a JSON object


@dataclass(slots=True)
class Reply:
    """What the backend answered: a complete body, an NDJSON line stream or SSE frames."""

    status: int = 200
    content_type: str = "application/json"
    body: bytes | None = None
    lines: AsyncGenerator[Batch, None] | None = None
    frames: AsyncGenerator[Frame, None] | None = None  # a relayed SSE stream (``/v1/*``)
    chunks: AsyncGenerator[bytes, None] | None = None  # a whole body too large to hold, as it arrives
    # What a stream holds until it ends (its backend connection, a llama-server).
    # The generators free it in ``finally:`` too, but a generator closed before
    # its first item never runs its body: a client that leaves before the
    # backend's first byte would leave the connection open, and the backend
    # writing into it, for good.
    on_close: list[Callable[[], None]] = field(default_factory=list)

    @property
    def streaming(self) -> bool:
        """True when the reply is a stream of lines."""
        return self.lines is not None

    async def close(self) -> None:
        """End the stream, read to its end or not, and free what it holds (once)."""
        try:
            for stream in (self.lines, self.frames, self.chunks):
                if stream is not None:
                    await stream.aclose()
        finally:
            callbacks, self.on_close = self.on_close, []
            for callback in callbacks:
                callback()


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
        """Relay one OpenAI-compatible (``/v1/*``) request; a stream comes back as ``frames``.

        The backend's status and body are kept, errors included; only transport
        failures (and a model the backend does not serve) raise ProxyErrors.
        """
