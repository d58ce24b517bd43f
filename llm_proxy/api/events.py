"""OpenAI's Responses API (/v1/responses) and Anthropic's Messages API (/v1/messages), relayed.

llama-server serves both (as does Ollama); the proxy passes them to the
backend like ``/v1/chat/completions``, with the model name mapped and the
answer unchanged, and records them in the same columns with ``api = 'openai'``.
What differs from chat is the stream: typed events that end with their own
last event (``response.completed``, ``message_stop``) instead of ``[DONE]``,
and for Messages, Anthropic's error shape. A backend that does not serve the
route is told apart from one that lacks the model: the client gets 501 saying
so, in the route's error shape.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from aiohttp import web

from ..audit.exchange import Exchange
from ..backends.base import Backend, Batch, Call, Frame, Reply, Whole
from ..config import Config
from ..errors import BackendError, ProxyError
from ..server.middlewares import MESSAGES_PATH, anthropic_error
from ..translate import Assembler
from ..translate.errors import error_from_backend
from ..translate.event_assembler import MessagesAssembler, ResponsesAssembler
from . import pipeline
from .openai import OpenAICodec, text_of

RESPONSES_PATH = "/v1/responses"
# The events after which a stream has said everything.
_LAST_EVENTS = {
    RESPONSES_PATH: frozenset({"response.completed", "response.incomplete", "response.failed"}),
    MESSAGES_PATH: frozenset({"message_stop"}),
}


def setup_routes(app: web.Application) -> None:
    """Register /v1/responses and /v1/messages on ``app``."""
    app.router.add_post(RESPONSES_PATH, _handle_responses)
    app.router.add_post(MESSAGES_PATH, _handle_messages)


async def _handle_responses(request: web.Request) -> web.StreamResponse:
    return await pipeline.handle(request, RESPONSES)


async def _handle_messages(request: web.Request) -> web.StreamResponse:
    return await pipeline.handle(request, MESSAGES)


class EventCodec(OpenAICodec):
    """OpenAICodec for an API whose streams are typed events ending in an event of their own."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.gated = frozenset({endpoint})
        self._last = _LAST_EVENTS[endpoint]

    def parse(self, request: web.Request, endpoint: str, raw: bytes, config: Config) -> pipeline.Parsed:
        parsed = super().parse(request, endpoint, raw, config)
        return dataclasses.replace(parsed, prompt=_prompt(endpoint, parsed.body))

    async def send(self, backend: Backend, call: Call) -> Reply:
        reply = await backend.openai(call)
        if isinstance(reply, Whole) and _not_served(reply):
            raise ProxyError(f"the backend does not serve {self.endpoint}", 501)
        return reply

    def assembler(self, keep: int) -> Assembler:
        return ResponsesAssembler(keep) if self.endpoint == RESPONSES_PATH else MessagesAssembler(keep)

    def piece(self, item: Batch | Frame, hide_usage: bool) -> pipeline.Piece:
        assert isinstance(item, Frame), f"a {self.endpoint} stream is SSE frames"
        event = item.event
        shown = (item.data.encode(),) if item.data is not None else ()
        if event is None:
            return pipeline.Piece(item.raw, (), shown, False)
        return pipeline.Piece(item.raw, (event,), shown, event.get("type") in self._last)

    def unfinished(self, exchange: Exchange) -> ProxyError | None:
        last = " or ".join(sorted(self._last))
        return BackendError(f"backend {exchange.backend_type} ended the stream before {last}", 502)

    def error_item(self, exc: ProxyError) -> bytes:
        if self.endpoint == MESSAGES_PATH:
            event = anthropic_error(exc.message, exc.status)
        else:
            event = {"type": "error", "code": str(exc.status), "message": exc.message, "param": None}
        return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"


def _not_served(reply: Whole) -> bool:
    """A 404/405/501 that is about the route, not the model (llama-server: "File Not Found")."""
    if reply.status not in (404, 405, 501):
        return False
    message = error_from_backend(reply.status, reply.body).message
    return "model" not in message.lower()


def _prompt(endpoint: str, body: dict[str, Any] | None) -> str | None:
    """The last user message's text: Responses' ``input`` (a string or items), Messages' ``messages``."""
    if body is None:
        return None
    items = body.get("input") if endpoint == RESPONSES_PATH else body.get("messages")
    if isinstance(items, str):
        return items
    if isinstance(items, list):
        for item in reversed(items):
            if isinstance(item, dict) and item.get("role", "user") == "user" and "content" in item:
                return text_of(item["content"])
    return None


RESPONSES = EventCodec(RESPONSES_PATH)
MESSAGES = EventCodec(MESSAGES_PATH)
