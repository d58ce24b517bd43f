"""The OpenAI-compatible API: /v1/* relayed to the backend through the one pipeline.

Requests go to the backend's own ``/v1/*`` endpoint (llama-server's, or
Ollama's compatibility layer) with only the model name mapped; answers come
back unchanged, streams frame by frame as they arrive. The rows they leave in
``logs`` have the same columns as Ollama API rows, with ``api = 'openai'``.

Streams always ask the backend for usage (``stream_options.include_usage``)
so every row has its token counts; the extra usage chunk that this adds is
kept from clients that did not ask for it themselves. What differs from the
Ollama API is :class:`OpenAICodec`: SSE frames passed on as received, OpenAI's
error shape, ``stream`` false unless asked for.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

import orjson
from aiohttp import web

from ..audit.exchange import Exchange
from ..backends.base import Backend, Batch, Call, Frame, Reply, Whole
from ..config import Config, ModelsConfig
from ..errors import BackendError, BadRequest, ProxyError
from ..server.middlewares import openai_error
from ..translate import Assembler
from ..translate.errors import error_from_backend
from ..translate.openai_assembler import OpenAIAssembler, is_usage_only
from . import body as body_mod
from . import pipeline, validate

CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
MODELS, MODEL = "/v1/models", "/v1/models/{model}"
# Model ids may hold slashes ("hf.co/org/model"): the last route takes the rest of the path.
ROUTES = (
    ("POST", CHAT), ("POST", COMPLETIONS), ("POST", EMBEDDINGS),
    ("GET", MODELS), ("GET", "/v1/models/{model:.+}"),
)  # fmt: skip
ROUTE_PATHS = frozenset(path for _, path in ROUTES)
# Routes whose streams are chat chunks ending in [DONE], with usage asked for.
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
    return await pipeline.handle(request, CODEC)


class OpenAICodec:
    """SSE frames, OpenAI's error shape, OpenAIAssembler; ``stream`` defaults to false."""

    gated = GATED_ROUTES

    def check_path(self, request: web.Request, endpoint: str) -> None:
        if endpoint == MODEL:
            validate.path_model(request.match_info["model"])

    def parse(self, request: web.Request, endpoint: str, raw: bytes, config: Config) -> pipeline.Parsed:
        """The body with the model mapped and, for a stream, usage asked for."""
        body: dict[str, Any] | None = None
        model = backend_model = sent = None
        stream = usage_asked = False
        if request.method == "POST":
            received = body_mod.json_object(raw)
            model, backend_model, body = body_mod.map_model(received, "model", config, use_default=True)
            if endpoint in STREAM_ROUTES or endpoint not in ROUTE_PATHS:
                stream = body_mod.stream_flag(body, default=False)
            if stream and endpoint in STREAM_ROUTES:
                options = body.get("stream_options")
                if options is not None and not isinstance(options, dict):
                    raise BadRequest("'stream_options' must be an object")
                usage_asked = bool(options and options.get("include_usage") is True)
                if not usage_asked:
                    body = {**body, "stream_options": {**(options or {}), "include_usage": True}}
            if body is not received:
                raw, sent = orjson.dumps(body), body
        elif endpoint == MODEL:
            model = request.match_info["model"]
            backend_model = config.models.backend_name(model)
        prompt = _prompt(endpoint, body)
        return pipeline.Parsed(body, raw, model, backend_model, stream, prompt, sent, not usage_asked)

    async def send(self, backend: Backend, call: Call) -> Reply:
        return await backend.openai(call)

    def assembler(self, keep: int) -> Assembler:
        return OpenAIAssembler(keep)

    def stream_headers(self, content_type: str) -> dict[str, str]:
        return {"Content-Type": content_type, "Cache-Control": "no-cache"}

    def piece(self, item: Batch | Frame, hide_usage: bool) -> pipeline.Piece:
        assert isinstance(item, Frame), "a /v1/* stream is SSE frames"
        event, data = item.event, item.data
        if event is not None and hide_usage and is_usage_only(event):
            return pipeline.Piece(None, (event,), (), False)  # recorded, though the client did not ask
        shown = (data.encode(),) if data is not None else ()
        if event is None:
            return pipeline.Piece(item.raw, (), shown, data == "[DONE]")
        return pipeline.Piece(item.raw, (event,), shown, False)

    def unfinished(self, exchange: Exchange) -> ProxyError | None:
        return BackendError(f"backend {exchange.backend_type} ended the stream without [DONE]", 502)

    def error_item(self, exc: ProxyError) -> bytes:
        return b"data: " + orjson.dumps(openai_error(exc.message, exc.status)) + b"\n\n"

    def error_text(self, status: int, body: bytes) -> str:
        return error_from_backend(status, body).message

    def present(self, exchange: Exchange, reply: Whole, models: ModelsConfig) -> bytes:
        """Model lists with the names clients use; any other answer as it came."""
        if exchange.endpoint not in (MODELS, MODEL) or not reply.content_type.startswith("application/json"):
            return reply.body
        obj = None
        with suppress(orjson.JSONDecodeError):
            obj = orjson.loads(reply.body)
        if not isinstance(obj, dict):
            return reply.body
        return orjson.dumps(_client_side(obj, exchange, models))


CODEC = OpenAICodec()


def _prompt(endpoint: str, body: dict[str, Any] | None) -> str | None:
    """The request's prompt as plain text: the last user message, the prompt, the input."""
    if body is None:
        return None
    if endpoint == CHAT:
        messages = body.get("messages")
        if isinstance(messages, list):
            for message in reversed(messages):
                if isinstance(message, dict) and message.get("role") == "user":
                    return text_of(message.get("content"))
        return None
    return text_of(body.get("prompt" if endpoint == COMPLETIONS else "input"))


def text_of(value: Any) -> str | None:
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
