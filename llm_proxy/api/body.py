"""The request body: read within ``server.max_body_mb``, parsed as one JSON object.

Shared by every API the proxy speaks, so a body is refused the same way, with
the same words, whichever endpoint it was sent to.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from ..errors import BadRequest, PayloadTooLarge


async def read(request: web.Request) -> bytes:
    """The whole body, up to ``server.max_body_mb``; 413 beyond it."""
    limit = request.client_max_size
    too_large = PayloadTooLarge(
        f"request body is larger than the limit of {limit / 1048576:g} MiB (server.max_body_mb)"
    )
    # A declared length over the limit is refused before a byte of it is read.
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None


def json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 for anything else."""
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
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
