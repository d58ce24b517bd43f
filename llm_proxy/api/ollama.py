"""The Ollama API: every /api/* route, run through the one pipeline with Ollama's codec.

One generic handler serves all routes; what differs between them (does it take
a model, may it stream) is data in the tables below. What differs from the
OpenAI API is :class:`OllamaCodec`: NDJSON lines, ``{"error": message}``,
streams unless ``"stream": false``.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from ..audit.exchange import Exchange
from ..backends.base import Backend, Batch, Call, Frame, Reply, Whole
from ..config import Config, ModelsConfig
from ..errors import ProxyError
from ..translate import Assembler
from ..translate.ndjson import ChunkAssembler
from . import body as body_mod
from . import pipeline, validate

# (method, route) pairs of the Ollama API that clients call.
ROUTES = (
    ("POST", "/api/chat"), ("POST", "/api/generate"), ("POST", "/api/show"),
    ("POST", "/api/embed"), ("POST", "/api/embeddings"), ("POST", "/api/pull"),
    ("POST", "/api/push"), ("POST", "/api/create"), ("POST", "/api/copy"),
    ("DELETE", "/api/delete"), ("GET", "/api/tags"), ("GET", "/api/ps"),
    ("GET", "/api/version"), ("HEAD", "/api/blobs/{digest}"), ("POST", "/api/blobs/{digest}"),
    ("GET", "/"), ("HEAD", "/"),
    # Newer clients probe these: HEAD answers as GET does, without the body
    # (aiohttp leaves it out); /api/status says whether Ollama's cloud is on.
    ("HEAD", "/api/tags"), ("HEAD", "/api/version"), ("GET", "/api/status"),
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
    return await pipeline.handle(request, CODEC)


class OllamaCodec:
    """NDJSON lines, Ollama's error shape, ChunkAssembler; ``stream`` defaults to true."""

    gated = GATED_ROUTES

    def check_path(self, request: web.Request, endpoint: str) -> None:
        if endpoint in RAW_ROUTES:
            validate.digest(request.match_info["digest"])

    def parse(self, request: web.Request, endpoint: str, raw: bytes, config: Config) -> pipeline.Parsed:
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
        return pipeline.Parsed(body, raw, model, backend_model, stream, _prompt(endpoint, body))

    async def send(self, backend: Backend, call: Call) -> Reply:
        return await backend.call(call)

    def assembler(self, keep: int) -> Assembler:
        return ChunkAssembler(keep)

    def stream_headers(self, content_type: str) -> dict[str, str]:
        return {"Content-Type": "application/x-ndjson"}

    def piece(self, item: Batch | Frame, hide_usage: bool) -> pipeline.Piece:
        assert isinstance(item, list), "an /api/* stream is NDJSON lines"
        # One write per backend read: each line goes out as soon as it is
        # here, and a burst of lines costs one syscall instead of many.
        lines = [line for line, _ in item]
        return pipeline.Piece(b"\n".join(lines) + b"\n", [obj for _, obj in item], lines, False)

    def unfinished(self, exchange: Exchange) -> ProxyError | None:
        return None  # NDJSON has no end marker: the done line is the backend's to send

    def error_item(self, exc: ProxyError) -> bytes:
        return orjson.dumps({"error": exc.message}) + b"\n"

    def error_text(self, status: int, body: bytes) -> str:
        """Ollama's ``{"error": message}``, else the body's start, else the status."""
        if body.startswith(b"{"):
            try:
                obj = orjson.loads(body)
            except orjson.JSONDecodeError:
                obj = None
            if isinstance(obj, dict) and obj.get("error"):
                return str(obj["error"])
        return body[:8000].decode("utf-8", errors="replace")[:2000] or f"HTTP {status}"

    def present(self, exchange: Exchange, reply: Whole, models: ModelsConfig) -> bytes:
        return reply.body  # the backend showed client-side names already


CODEC = OllamaCodec()


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
