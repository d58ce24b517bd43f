"""Relaying a whole answer too large to hold, and the capped copy of a body kept for the record.

Shared by ``/api`` and ``/v1``: a body the proxy passes on unchanged and that
is larger than ``database.max_body_kb`` reaches the handler as ``chunks``
(the backend's reads). Each is written to the client as it comes, and only
the first ``database.max_body_kb`` are kept for the audit record, so an answer
of any size is relayed in bounded memory.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from ..audit.exchange import Exchange
from ..backends.base import Reply
from ..errors import ProxyError
from ..server import state as keys
from ..server.console import Console
from ..server.recording import CLIENT_GONE, why_cut_off


def stored_copy(body: bytes, keep: int, exchange: Exchange) -> bytes | None:
    """The part of ``body`` the record keeps: its first ``keep`` bytes (``truncated`` when cut)."""
    if len(body) > keep:
        exchange.truncated = True
        return body[:keep]
    return body or None


async def relay_chunks(
    request: web.Request,
    reply: Reply,
    exchange: Exchange,
    console: Console,
    keep: int,
    error_of: Callable[[int, bytes], str],
) -> web.StreamResponse:
    """Send the body as it arrives; the record keeps its first ``keep`` bytes.

    A failure once the body has begun cannot be put into it (a JSON document
    has no room for an error line): the connection is closed before the body's
    end, so the client sees an incomplete answer rather than a short one.
    ``error_of(status, copy)`` says what the record's error is for a 4xx/5xx.
    """
    assert reply.chunks is not None
    # Only Content-Type is passed on: the body is decoded (Content-Encoding is
    # gone) and sent chunked, so the backend's length would be stale.
    response = web.StreamResponse(status=reply.status, headers={"Content-Type": reply.content_type})
    exchange.status_code = reply.status
    copy = bytearray()
    try:
        await response.prepare(request)
        async for data in reply.chunks:
            await response.write(data)
            exchange.mark_first_byte()
            room = keep - len(copy)
            if room > 0:
                copy += data[:room]
            if len(data) > room:
                exchange.truncated = True
        await response.write_eof()
    except ProxyError as exc:
        exchange.status_code, exchange.error = exc.status, exc.message
        request[keys.FAILURE] = exc
        if request.transport is not None:
            request.transport.close()
    except ConnectionError:
        exchange.status_code, exchange.error = CLIENT_GONE, why_cut_off(request)
    finally:
        await reply.close()
        exchange.response_body = bytes(copy) or None
    if reply.status >= 400 and exchange.error is None:
        exchange.error = error_of(reply.status, bytes(copy))
    if console.raw_responses:
        console.response(exchange, bytes(copy))  # the stored copy: the body may be any size
    return response
