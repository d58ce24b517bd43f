"""The OpenAI-compatible API: /v1/* relayed to the backend and recorded like /api/*.

Requests go to the backend's own ``/v1/*`` endpoint (llama-server's, or
Ollama's compatibility layer) with only the model name mapped; answers come
back unchanged, streams frame by frame as they arrive. The rows they leave in
``logs`` have the same columns as Ollama API rows, with ``api = 'openai'``.

Streams always ask the backend for usage (``stream_options.include_usage``)
so every row has its token counts; the extra usage chunk that this adds is
kept from clients that did not ask for it themselves.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

import orjson
from aiohttp import web

from ..audit.exchange import Exchange
from ..backends.base import Call, Reply
from ..config import Config, ModelsConfig
from ..errors import BackendError, BadRequest, ProxyError
from ..server import state as keys
from ..server.console import Console
from ..server.middlewares import openai_error
from ..server.recording import CLIENT_GONE, why_cut_off
from ..translate.ollama_openai import error_from_backend
from ..translate.openai_assembler import OpenAIAssembler, is_usage_only
from . import body as body_mod
from . import validate
from .relay import relay_chunks, stored_copy

CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
MODELS, MODEL = "/v1/models", "/v1/models/{model}"
# Model ids may hold slashes ("hf.co/org/model"): the last route takes the rest of the path.
ROUTES = (
    ("POST", CHAT), ("POST", COMPLETIONS), ("POST", EMBEDDINGS),
    ("GET", MODELS), ("GET", "/v1/models/{model:.+}"),
)  # fmt: skip
STREAM_ROUTES = frozenset({CHAT, COMPLETIONS})
# Routes that make the backend generate, and so take a slot (backend.max_concurrency).
GATED_ROUTES = frozenset({CHAT, COMPLETIONS, EMBEDDINGS})


def setup_routes(app: web.Application) -> None:
    """Register every /v1 route on ``app``."""
    for method, path in ROUTES:
        app.router.add_route(method, path, handle)


async def handle(request: web.Request) -> web.StreamResponse:
    """Parse and relay one OpenAI-compatible request, filling in its audit record.

    The record (``request[keys.EXCHANGE]``, with ``api = 'openai'``) is created
    and submitted by the audit middleware, as for every other route.
    """
    app = request.app
    config, backend, console = app[keys.LIVE].config, app[keys.BACKEND], app[keys.CONSOLE]
    exchange = request[keys.EXCHANGE]
    call, usage_asked = await _parse(request, exchange, config)
    if console.raw_requests and call.body is not None:
        console.request(exchange, call.body)
    keep = config.database.max_body_kb * 1024  # bytes (or characters) of each copy the record keeps
    # Generation holds a backend slot until its last byte, as on /api/*.
    async with app[keys.GATE].slot_if(call.endpoint in GATED_ROUTES):
        reply = await backend.openai(call)
        if reply.frames is not None:
            return await _relay_stream(request, reply, exchange, console, keep, strip_usage=not usage_asked)
        if reply.chunks is not None:
            return await relay_chunks(request, reply, exchange, console, keep, _error_text)
        return _relay_body(reply, exchange, console, config.models, keep)


async def _parse(request: web.Request, exchange: Exchange, config: Config) -> tuple[Call, bool]:
    """The call to relay, and whether the client asked for usage in its stream."""
    raw = await body_mod.read(request)
    endpoint = exchange.endpoint
    exchange.request_body = raw or None
    body: dict[str, Any] | None = None
    model = backend_model = None
    stream = usage_asked = False
    if request.method == "POST":
        received = body_mod.json_object(raw)
        model, backend_model, body = body_mod.map_model(received, "model", config, use_default=True)
        if endpoint in STREAM_ROUTES:
            stream = body_mod.stream_flag(body, default=False)
        if stream:
            options = body.get("stream_options")
            if options is not None and not isinstance(options, dict):
                raise BadRequest("'stream_options' must be an object")
            usage_asked = bool(options and options.get("include_usage") is True)
            if not usage_asked:
                body = {**body, "stream_options": {**(options or {}), "include_usage": True}}
        if body is not received:
            raw = orjson.dumps(body)
            exchange.backend_request = body
    elif endpoint == MODEL:
        model = request.match_info["model"]
        validate.path_model(model)
        backend_model = config.models.backend_name(model)
    call = body_mod.make_call(
        request, exchange, body=body, raw=raw, model=model, backend_model=backend_model,
        stream=stream, prompt=_prompt(endpoint, body),
    )  # fmt: skip
    return call, usage_asked


def _prompt(endpoint: str, body: dict[str, Any] | None) -> str | None:
    """The request's prompt as plain text: the last user message, the prompt, the input."""
    if body is None:
        return None
    if endpoint == CHAT:
        messages = body.get("messages")
        if isinstance(messages, list):
            for message in reversed(messages):
                if isinstance(message, dict) and message.get("role") == "user":
                    return _text(message.get("content"))
        return None
    return _text(body.get("prompt" if endpoint == COMPLETIONS else "input"))


def _text(value: Any) -> str | None:
    """A string, or the text in a list of strings or of content parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts: list[str] = []
        for item in value:
            text = item.get("text") if isinstance(item, dict) else item
            if isinstance(text, str):
                parts.append(text)
        return "\n".join(parts) if parts else None
    return None


async def _relay_stream(
    request: web.Request, reply: Reply, exchange: Exchange, console: Console, keep: int, strip_usage: bool
) -> web.StreamResponse:
    """Send each SSE frame as it arrives; a failure after the start ends with an error frame."""
    assert reply.frames is not None
    frames = reply.frames
    response = web.StreamResponse(
        status=reply.status, headers={"Content-Type": reply.content_type, "Cache-Control": "no-cache"}
    )
    assembler = OpenAIAssembler(keep)
    exchange.status_code = reply.status
    done = False
    try:
        await response.prepare(request)
        async for frame in frames:
            if frame.event is not None and strip_usage and is_usage_only(frame.event):
                assembler.feed(frame.event)  # recorded, though the client did not ask for it
                continue
            done = done or (frame.event is None and frame.data == "[DONE]")
            await response.write(frame.raw)
            # Recorded once written: a client that left keeps in its row only what reached it.
            token = assembler.feed(frame.event) if frame.event is not None else False
            exchange.mark_first_byte()
            if token:
                exchange.mark_first_token()
            if console.raw_responses and frame.data is not None:
                console.response(exchange, frame.data.encode())
            if done:
                # The client has every byte: end its answer now. The openai SDK stops
                # reading at [DONE] and closes, and waiting here for the backend's end
                # of stream made that close look like a client that left (a 499 row).
                break
        if not done and assembler.error is None:
            raise BackendError(f"backend {exchange.backend_type} ended the stream without [DONE]", 502)
        await response.write_eof()
    except ProxyError as exc:
        exchange.status_code, exchange.error = exc.status, exc.message
        request[keys.FAILURE] = exc  # counted by kind in the metrics, as on /api/*
        with suppress(ConnectionError):
            error = orjson.dumps(openai_error(exc.message, exc.status))
            await response.write(b"data: " + error + b"\n\n")
            await response.write_eof()
    except ConnectionError:
        if not done:  # after [DONE] the client had the whole answer
            exchange.status_code, exchange.error = CLIENT_GONE, why_cut_off(request)
    finally:
        await reply.close()
        _record(exchange, assembler)
        exchange.response_body = assembler.result()
    return response


def _relay_body(
    reply: Reply, exchange: Exchange, console: Console, models: ModelsConfig, keep: int
) -> web.Response:
    """Send a whole answer (model lists with client-side names), recording what it says."""
    body = reply.body or b""
    exchange.status_code = reply.status
    exchange.mark_first_byte()
    lists = exchange.endpoint in (MODELS, MODEL)  # held whole by the backend to be renamed here
    obj = None
    if reply.content_type.startswith("application/json") and body and (lists or len(body) <= keep):
        with suppress(orjson.JSONDecodeError):
            obj = orjson.loads(body)
    if reply.status < 400 and isinstance(obj, dict):
        if lists:
            body = orjson.dumps(_client_side(obj, exchange, models))
        else:
            assembler = OpenAIAssembler(keep)
            if assembler.feed(obj):
                exchange.mark_first_token()
            _record(exchange, assembler)
    exchange.response_body = stored_copy(body, keep, exchange)
    if reply.status >= 400 and exchange.error is None:
        exchange.error = _error_text(reply.status, body)
    if console.raw_responses:
        console.response(exchange, body)
    return web.Response(body=body, status=reply.status, headers={"Content-Type": reply.content_type})


def _error_text(status: int, body: bytes) -> str:
    return error_from_backend(status, body).message


def _record(exchange: Exchange, assembler: OpenAIAssembler) -> None:
    """Copy what the assembled answer says into the exchange record."""
    exchange.response = assembler.text
    exchange.thinking = assembler.reasoning
    exchange.tool_calls = assembler.tool_calls
    exchange.done_reason = assembler.finish_reason
    exchange.prompt_tokens = assembler.prompt_tokens
    exchange.completion_tokens = assembler.completion_tokens
    exchange.truncated = exchange.truncated or assembler.truncated
    if assembler.error is not None and exchange.error is None:
        # A mid-stream error frame: the client saw 200, then the error.
        code = assembler.error_code
        exchange.status_code = code if code is not None and 400 <= code < 600 else 500
        exchange.error = assembler.error


def _client_side(obj: dict[str, Any], exchange: Exchange, models: ModelsConfig) -> dict[str, Any]:
    """A model list or model with the names clients use (``models.mappings``)."""
    if exchange.endpoint == MODEL:
        return {**obj, "id": exchange.model} if "id" in obj else obj
    data = obj.get("data")
    if not isinstance(data, list):
        return obj
    listed: list[Any] = []
    for entry in data:
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            listed += [{**entry, "id": name} for name in _client_names(entry["id"], models)]
        else:
            listed.append(entry)
    return {**obj, "data": listed}


def _client_names(backend_id: str, models: ModelsConfig) -> list[str]:
    """Every name a client can ask for ``backend_id`` by: its aliases, else its own id."""
    return models.aliases(backend_id) or [backend_id]
