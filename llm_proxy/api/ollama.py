"""The Ollama API: every /api/* route is parsed, sent to the backend, relayed and recorded.

One generic handler serves all routes; what differs between them (does it take
a model, may it stream) is data in the tables below.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

import orjson
from aiohttp import web

from ..audit.exchange import Exchange
from ..backends.base import Call, Reply
from ..config import Config
from ..errors import ProxyError
from ..server import state as keys
from ..server.console import Console
from ..server.recording import CLIENT_GONE, why_cut_off
from ..translate.ndjson import ChunkAssembler
from . import body as body_mod
from . import validate
from .relay import relay_chunks, stored_copy

# (method, route) pairs of the Ollama API that clients call.
ROUTES = (
    ("POST", "/api/chat"), ("POST", "/api/generate"), ("POST", "/api/show"),
    ("POST", "/api/embed"), ("POST", "/api/embeddings"), ("POST", "/api/pull"),
    ("POST", "/api/push"), ("POST", "/api/create"), ("POST", "/api/copy"),
    ("DELETE", "/api/delete"), ("GET", "/api/tags"), ("GET", "/api/ps"),
    ("GET", "/api/version"), ("HEAD", "/api/blobs/{digest}"), ("POST", "/api/blobs/{digest}"),
    ("GET", "/"), ("HEAD", "/"),
)  # fmt: skip

# Routes whose JSON body names a model (in "model", or the older "name").
MODEL_ROUTES = frozenset({
    "/api/chat", "/api/generate", "/api/show", "/api/embed", "/api/embeddings",
    "/api/pull", "/api/push", "/api/create", "/api/delete", "/api/copy",
})  # fmt: skip
# Routes where a missing model is filled from models.default.
DEFAULT_MODEL_ROUTES = frozenset({"/api/chat", "/api/generate", "/api/show", "/api/embed", "/api/embeddings"})
# Routes that stream NDJSON unless the request says "stream": false.
STREAM_ROUTES = frozenset({"/api/chat", "/api/generate", "/api/pull", "/api/push", "/api/create"})
# Routes whose body is not JSON.
RAW_ROUTES = frozenset({"/api/blobs/{digest}"})
# Routes that make the backend compute, and so wait for a slot (backend.max_concurrency).
# Model lists stay outside: Home Assistant polls them with a 5 s timeout during long answers.
GATED_ROUTES = frozenset({"/api/chat", "/api/generate", "/api/embed", "/api/embeddings"})


def setup_routes(app: web.Application) -> None:
    """Register every Ollama route on ``app``."""
    for method, path in ROUTES:
        app.router.add_route(method, path, handle)


async def handle(request: web.Request) -> web.StreamResponse:
    """Parse, forward and relay one Ollama API request, filling in its audit record.

    The record itself (``request[keys.EXCHANGE]``) is created and submitted by
    the audit middleware, which also records how a failure here ended.
    """
    app = request.app
    config, backend, console = app[keys.LIVE].config, app[keys.BACKEND], app[keys.CONSOLE]
    exchange = request[keys.EXCHANGE]
    call = await _parse(request, exchange, config)
    if console.raw_requests and call.body is not None:
        console.request(exchange, call.body)
    keep = config.database.max_body_kb * 1024  # bytes (or characters) of each copy the record keeps
    # The slot is held until the last byte is relayed: a stream keeps the backend busy.
    async with app[keys.GATE].slot_if(call.endpoint in GATED_ROUTES):
        reply = await backend.call(call)
        if reply.lines is not None:
            return await _relay_stream(request, reply, exchange, console, keep)
        if reply.chunks is not None:
            return await relay_chunks(request, reply, exchange, console, keep, _error_text)
        return _relay_body(reply, exchange, console, keep)


async def _parse(request: web.Request, exchange: Exchange, config: Config) -> Call:
    """Read and check the request; map the model name."""
    endpoint = exchange.endpoint
    if endpoint in RAW_ROUTES:
        validate.digest(request.match_info["digest"])
    raw = await body_mod.read(request)
    exchange.request_body = raw or None
    body: dict[str, Any] | None = None
    if request.method in ("POST", "DELETE") and endpoint not in RAW_ROUTES:
        body = body_mod.json_object(raw)
        validate.request(endpoint, body)
    model = backend_model = None
    if body is not None and endpoint in MODEL_ROUTES:
        model, backend_model, mapped = _map_model(endpoint, body, config)
        if mapped is not body:
            body, raw = mapped, orjson.dumps(mapped)
    stream = endpoint in STREAM_ROUTES and body_mod.stream_flag(body, default=True)
    return body_mod.make_call(
        request, exchange, body=body, raw=raw, model=model, backend_model=backend_model,
        stream=stream, prompt=_prompt(endpoint, body),
    )  # fmt: skip


def _map_model(endpoint: str, body: dict[str, Any], config: Config) -> tuple[str, str, dict[str, Any]]:
    """The client's model name, the backend's, and the body with the backend's name in it."""
    if endpoint == "/api/copy":
        key = "source"  # the destination is a new name, not a model to map
    else:
        key = "model" if body.get("model") is not None or "name" not in body else "name"
    return body_mod.map_model(body, key, config, use_default=endpoint in DEFAULT_MODEL_ROUTES)


def _prompt(endpoint: str, body: dict[str, Any] | None) -> str | None:
    """The request's prompt as plain text: what a person reading the log wants to see."""
    if body is None:
        return None
    if endpoint == "/api/generate" or endpoint == "/api/embeddings":
        prompt = body.get("prompt")
        return prompt if isinstance(prompt, str) else None
    if endpoint == "/api/chat":
        messages = body.get("messages")
        if isinstance(messages, list):
            for message in reversed(messages):
                if isinstance(message, dict) and message.get("role") == "user":
                    content = message.get("content")
                    return content if isinstance(content, str) else None
        return None
    if endpoint == "/api/embed":
        given = body.get("input")
        if isinstance(given, str):
            return given
        if isinstance(given, list):
            return "\n".join(item for item in given if isinstance(item, str))
    return None


async def _relay_stream(
    request: web.Request, reply: Reply, exchange: Exchange, console: Console, keep: int
) -> web.StreamResponse:
    """Send NDJSON lines as they arrive; a failure after the start ends with an error line."""
    assert reply.lines is not None
    lines = reply.lines
    response = web.StreamResponse(status=reply.status, headers={"Content-Type": "application/x-ndjson"})
    assembler = ChunkAssembler(keep)
    exchange.status_code = reply.status
    try:
        await response.prepare(request)
        async for batch in lines:
            # One write per backend read: each line goes out as soon as it is
            # here, and a burst of lines costs one syscall instead of many.
            await response.write(b"\n".join([line for line, _ in batch]) + b"\n")
            # Recorded once written: a client that left keeps in its row only
            # what reached it.
            token = False
            for line, obj in batch:
                token = assembler.feed(obj) or token
                if console.raw_responses:
                    console.response(exchange, line)
            exchange.mark_first_byte()
            if token:
                exchange.mark_first_token()
        await response.write_eof()
    except ProxyError as exc:
        exchange.status_code, exchange.error = exc.status, exc.message
        request[keys.FAILURE] = exc
        with suppress(ConnectionError):
            await response.write(orjson.dumps({"error": exc.message}) + b"\n")
            await response.write_eof()
    except ConnectionError:
        exchange.status_code, exchange.error = CLIENT_GONE, why_cut_off(request)
    finally:
        await reply.close()
        _record_answer(exchange, assembler, streamed=True)
    return response


def _relay_body(reply: Reply, exchange: Exchange, console: Console, keep: int) -> web.Response:
    """Send a whole answer, recording what it says (parsed when it is within the stored copy)."""
    body = reply.body or b""
    exchange.status_code = reply.status
    exchange.mark_first_byte()
    # A body larger than the copy kept is held only because the proxy changed it
    # (a fold, a rename): its record keeps the capped bytes, unparsed.
    if reply.content_type.startswith("application/json") and body and len(body) <= keep:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            assembler = ChunkAssembler(keep)
            if assembler.feed(obj):
                exchange.mark_first_token()
            _record_answer(exchange, assembler)
    if exchange.response_body is None and body:
        exchange.response_body = stored_copy(body, keep, exchange)
    if reply.status >= 400 and exchange.error is None:
        exchange.error = _error_text(reply.status, body)
    if console.raw_responses:
        console.response(exchange, body)
    return web.Response(body=body, status=reply.status, headers={"Content-Type": reply.content_type})


def _error_text(status: int, body: bytes) -> str:
    """What the record says for an error answer: its start, or its status."""
    return body[:8000].decode("utf-8", errors="replace")[:2000] or f"HTTP {status}"


def _record_answer(exchange: Exchange, assembler: ChunkAssembler, streamed: bool = False) -> None:
    """Copy what the assembled answer says into the exchange record."""
    if assembler.last is None:
        return
    exchange.truncated = exchange.truncated or assembler.truncated
    result = assembler.result()
    exchange.response_body = result
    if assembler.kind is not None:
        exchange.response = assembler.text
        exchange.thinking = assembler.thought or None
    elif isinstance(result.get("status"), str):
        exchange.response = result["status"]  # pull/push/create progress: the last status
    exchange.tool_calls = assembler.tool_calls or None
    # Streams put their counts on the done chunk; whole answers such as
    # /api/embed carry them without one.
    final = assembler.final or assembler.last or {}
    exchange.done_reason = _str(final.get("done_reason"))
    exchange.prompt_tokens = _int(final.get("prompt_eval_count"))
    exchange.completion_tokens = _int(final.get("eval_count"))
    if assembler.error and exchange.error is None:
        exchange.error = assembler.error
        # One rule for every backend and API: a stream that broke off after its
        # 200 header is recorded with the error's status, 500 when none is named
        # (an Ollama error line names none), as the translating backend does.
        if streamed and exchange.status_code is not None and exchange.status_code < 400:
            exchange.status_code = 500


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
