"""Relaying an OpenAI-compatible request to a backend's own ``/v1/*`` endpoint.

Both backends serve ``/v1/*`` this way (llama-server natively, Ollama through
its compatibility layer). Bodies and statuses come back as the backend sent
them; an SSE answer is cut into whole frames and each frame is handed on with
its bytes untouched, as soon as it is complete.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import orjson

from ..translate import TooLong
from ..translate.sse import SSEDecoder, SSEFramer
from . import transport
from .base import Call, Frame, Frames, Reply, Whole

JSON = "application/json"
SSE = "text/event-stream"


async def forward(
    session: transport.Session,
    endpoint: str,
    path: str,
    call: Call,
    *,
    limit: int,
    hold: int | None,
    sent: Any = None,
) -> Reply:
    """Send ``call`` to ``endpoint + path``; an SSE answer comes back as :class:`~.base.Frames`.

    ``limit`` (backend.max_answer_mb in bytes) bounds a frame, and a body read
    whole because the pipeline changes it (``hold=None``: model lists). Any other
    body is held up to ``hold`` bytes (the stored copy) and relayed as it comes
    beyond that. ``sent`` is what the reply reports as sent (the call's body,
    when the backend changed it).
    """
    data = call.raw if call.method == "POST" else None
    headers = {"Content-Type": JSON} if data is not None else None
    resp = await transport.send(
        session, call.method, transport.url(endpoint, path), backend=endpoint, data=data, headers=headers
    )
    content_type = resp.headers.get("Content-Type", JSON)
    if resp.status < 400 and content_type.startswith(SSE):
        stream = frames(resp, endpoint, limit)
        return Frames(resp.status, content_type, stream, release=resp.release, sent=sent)
    if hold is not None:
        return await transport.relayed(resp, endpoint, hold, sent)
    async with resp:
        body = await transport.read_body(resp, endpoint, limit)
    return Whole(resp.status, content_type, body, sent=sent)


async def frames(resp: transport.Response, backend: str, limit: int) -> AsyncGenerator[Frame, None]:
    """The SSE answer frame by frame as it arrives, each with its parsed data.

    A frame longer than ``limit`` bytes ends the stream with a 502.
    Frames.close() releases ``resp``, whether or not this generator ever ran.
    """
    framer, decoder = SSEFramer(limit), SSEDecoder(limit)
    try:
        async for data in transport.iter_chunks(resp, backend):
            for raw in framer.feed(data):
                yield frame_of(raw, decoder.feed(raw))
        rest = framer.flush()
        events = decoder.feed(rest) + decoder.flush()
    except TooLong as exc:
        raise transport.too_long(exc) from None
    if rest or events:
        yield frame_of(rest, events)


def frame_of(raw: bytes, events: list[str]) -> Frame:
    """The frame ``raw`` with its event's data (``events``, as the SSE decoder gave them) parsed."""
    # A frame ends at the first blank line, so it holds one event at most.
    data = events[0] if events else None
    event = None
    if data is not None and data.startswith("{"):
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = None
        event = parsed if isinstance(parsed, dict) else None
    return Frame(raw, data, event)
