"""Request ids, CORS, and the one error boundary that gives clients their API's error shape.

Ollama's ``{"error": message}`` everywhere, except under ``/v1/`` (the
OpenAI-compatible API): ``{"error": {"message", "type", "code"}}``, and at
``/v1/messages`` (Anthropic's Messages API): ``{"type": "error", "error": {"type", "message"}}``.
"""

from __future__ import annotations

import itertools
import logging
import os
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import ProxyError
from . import state

log = logging.getLogger("llm_proxy")

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, X-Request-Id, X-API-Key",
    "Access-Control-Expose-Headers": "X-Request-Id, X-Cache",
    "Access-Control-Max-Age": "86400",
}


# OpenAI's error types by status (llama-server uses the same words).
OPENAI_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error",
    501: "not_supported_error", 503: "unavailable_error",
}  # fmt: skip


# Anthropic's error types by status, for /v1/messages.
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
}  # fmt: skip
MESSAGES_PATH = "/v1/messages"


def json_error(message: str, status: int, path: str = "") -> web.Response:
    """Ollama's error shape ``{"error": message}``, OpenAI's for a ``/v1/`` path, Anthropic's for messages."""
    if path == MESSAGES_PATH:
        return web.json_response(anthropic_error(message, status), status=status)
    if path.startswith("/v1/"):
        return web.json_response(openai_error(message, status), status=status)
    return web.json_response({"error": message}, status=status)


def openai_error(message: str, status: int) -> dict[str, Any]:
    """OpenAI's error shape; ``code`` is the status, as llama-server gives it."""
    kind = OPENAI_ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "code": status}}


def anthropic_error(message: str, status: int) -> dict[str, Any]:
    """Anthropic's error shape, as its SDK reads it: ``{"type": "error", "error": {type, message}}``."""
    kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


# Request ids: a random prefix per process and a counter. Unique across restarts
# and far cheaper than uuid4(), which costs a getrandom() call per request.
_ID_PREFIX = os.urandom(4).hex()
_ID_COUNTER = itertools.count(1)


def next_request_id() -> str:
    """A fresh request id, e.g. ``9f86d081000004d2``."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"


def header_text(request: web.Request, name: str) -> str | None:
    """A request header as storable text: bytes that are not UTF-8 become U+FFFD.

    aiohttp keeps such bytes as lone surrogates, which neither SQLite nor a
    UTF-8 log line can hold: one byte would stop the row (or the line) that
    carries it.
    """
    value = request.headers.get(name)
    if value is None or value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@web.middleware
async def error_boundary(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id and turn every failure into its API's error shape."""
    request_id = header_text(request, "X-Request-Id") or next_request_id()
    request[state.REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except ProxyError as exc:
        response = json_error(exc.message, exc.status, request.path)
        response.headers.update(exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        message = message.lower() if exc.status in (404, 405) else message
        response = json_error(message, exc.status, request.path)
    except Exception as exc:  # the boundary: anything unexpected is a 500 with a log entry
        log.exception("unhandled error in %s %s", request.method, request.path)
        response = json_error(f"internal error: {type(exc).__name__}: {exc}", 500, request.path)
    return response


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: every answer, streams included, names its request id."""
    request_id = request.get(state.REQUEST_ID)
    if request_id:
        response.headers["X-Request-Id"] = request_id


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook used when ``server.enable_cors`` is on."""
    response.headers.update(CORS_HEADERS)


@web.middleware
async def cors_preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer CORS preflight requests directly (when ``server.enable_cors`` is on)."""
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return web.Response(status=204)
    return await handler(request)
