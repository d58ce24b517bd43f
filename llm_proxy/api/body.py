"""The request body: read within ``server.max_body_mb``, parsed as one JSON object,
its model name mapped and its ``stream`` flag read.

Shared by every API the proxy speaks, so a body is refused the same way, with
the same words, whichever endpoint it was sent to.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from ..config import Config
from ..errors import BadRequest, ClientGone, PayloadTooLarge, RequestTimeout
from ..server import state as keys
from ..server.recording import why_cut_off


async def read(request: web.Request) -> bytes:
    """The whole body, up to ``server.max_body_mb``; 413 beyond it, 408 when the client falls silent."""
    limit = request.client_max_size
    # A declared length over the limit is refused before a byte of it is read.
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    try:
        if request.content.is_eof():  # it all came with the headers: nothing to wait for
            return await request.read()
        return await _read_while_it_comes(request, limit)
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit) from None
    except ConnectionError:  # aiohttp fails the body with "Connection lost" when the client leaves
        raise ClientGone(why_cut_off(request)) from None


async def _read_while_it_comes(request: web.Request, limit: int) -> bytes:
    """The body, each silence bounded by ``server.keepalive_timeout``.

    aiohttp waits for body bytes without end: a client that sends its headers
    and then trickles (or nothing, or a chunk its parser refuses, which aiohttp
    never reports to the reader) would hold its connection, and a place under
    ``server.max_connections``, for good.
    """
    silence = request.app[keys.CONFIG].server.keepalive_timeout
    loop = asyncio.get_running_loop()
    body = bytearray()
    try:
        async with asyncio.timeout(silence) as quiet:
            while chunk := await request.content.readany():
                body += chunk
                if len(body) > limit:
                    raise _too_large(limit)
                quiet.reschedule(loop.time() + silence)
    except TimeoutError:
        raise RequestTimeout(
            f"the client sent nothing for {silence:g} s in the middle of its request body "
            "(server.keepalive_timeout)"
        ) from None
    return bytes(body)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body is larger than the limit of {limit / 1048576:g} MiB (server.max_body_mb)"
    )


def json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 for anything else."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if not raw.strip():
            raise BadRequest("missing request body") from None
        raise BadRequest(f"invalid JSON in request body: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    # Nesting N levels deep takes N opening brackets: a body with fewer in all
    # (nearly every request, images included) needs no further look.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        check_depth(body)
    return body


# orjson parses 1024 levels of nesting but writes only 254, and everything after
# the parse writes with orjson: the body re-encoded after model mapping, the
# translated request (which puts client fields a few levels deeper), the audit
# row, the console. Writing the body inside DEPTH_HEADROOM more lists proves, at
# C speed, that all of those will fit.
DEPTH_HEADROOM = 14
MAX_DEPTH = 254 - DEPTH_HEADROOM


def check_depth(body: dict[str, Any]) -> None:
    """400 when the body is nested too deep for orjson to write it again."""
    wrapped: Any = body
    for _ in range(DEPTH_HEADROOM):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped)
    except TypeError:
        raise BadRequest(f"request body is nested more than {MAX_DEPTH} levels deep") from None


def map_model(
    body: dict[str, Any], key: str, config: Config, use_default: bool
) -> tuple[str, str, dict[str, Any]]:
    """The client's model name (``body[key]``), the backend's, and the body naming the backend's."""
    model = body.get(key)
    if (model is None or model == "") and use_default:
        model = config.models.default
    if model is not None and not isinstance(model, str):
        raise BadRequest(f"'{key}' must be a string")
    if not model:
        raise BadRequest(f"{'model' if key == 'name' else key} is required")
    backend_model = config.models.backend_name(model)
    if backend_model != body.get(key):
        body = {**body, key: backend_model}
    return model, backend_model, body


def stream_flag(body: dict[str, Any] | None, default: bool) -> bool:
    """``body["stream"]``; absent or null means the API's default (Ollama: true, OpenAI: false)."""
    value = None if body is None else body.get("stream")
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest("'stream' must be true or false")
    return value
