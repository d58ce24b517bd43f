"""The one request pipeline of ``/api`` and ``/v1``: parse, validate, gate, backend, relay, record.

Both APIs run every request through :func:`handle`. What differs between them
is a small :class:`Codec` (``api/ollama.py``, ``api/openai.py``): how a request
is read (which routes name a model, the default of ``stream``, the prompt a
person reading the log wants to see), how a stream item is written and how an
error ends a stream, the error shape, and which
:class:`~llm_proxy.translate.Assembler` folds the answer for the record.

The record (``request[keys.EXCHANGE]``) is created and submitted by the audit
middleware; the pipeline fills it in: the request as parsed, what the backend
was sent (``Reply.sent``, or a ProxyError's ``sent``), the answer as it went
out, the times to first byte and first token. Backends never touch it.

A reply is one of four kinds (``backends/base.py``), each relayed its own way:

* ``Whole``: sent at once; a JSON body within the stored copy is assembled.
* ``Lines`` and ``Frames``: a stream, one write per backend read (NDJSON) or
  per frame (SSE); a failure after the 200 header ends it with the API's error
  item, and the row follows one rule for both APIs (see :func:`_record`).
* ``Chunks``: a body too large to hold, written as it arrives; only the first
  ``database.max_body_kb`` are kept for the record.

The backend slot (``max_concurrency`` of the backend the router chose) is held
until the last byte is relayed: a stream keeps the backend busy.

Before the slot, the gate's two other checks run, once the model is known:
the key's quota (``server/quota.py``: 403 or 429, settled with what the
answer cost once it is relayed), then the answer cache (``cache/``): a hit is
a kept reply replayed through the same relay, without the backend or a slot;
a qualifying miss is recorded as it is relayed and kept if it ended whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import orjson
from aiohttp import web

from ..audit.exchange import Exchange
from ..backends.base import Backend, Batch, Call, Chunks, Frame, Frames, Lines, Reply, Route, Whole
from ..cache import policy
from ..config import Config, ModelsConfig
from ..errors import ProxyError
from ..server import state as keys
from ..server.console import Console
from ..server.quota import LISTINGS, QUOTAS, listing
from ..server.recording import CLIENT_GONE, why_cut_off
from ..translate import Assembler
from . import body as body_mod


@dataclass(frozen=True, slots=True)
class Parsed:
    """A request as its API reads it: what the pipeline makes the Call and the record from."""

    body: dict[str, Any] | None  # the JSON body, its model mapped to the backend's name
    raw: bytes  # the body to forward: as received, or re-encoded after a change
    model: str | None = None
    backend_model: str | None = None
    stream: bool = False
    prompt: str | None = None
    sent: Any = None  # the body as it goes to the backend, when the API changed more than the model
    hide_usage: bool = False  # a usage-only chunk added for the record, kept from the client


class Piece(NamedTuple):
    """What one stream item puts on the wire and in the record."""

    data: bytes | None  # the bytes to write; None: nothing for the client
    objects: Sequence[dict[str, Any]]  # what the assembler is fed, once ``data`` is written
    shown: Sequence[bytes]  # what server.log_raw_responses prints
    last: bool  # the client has the whole answer (SSE's [DONE]): stop reading


class Codec(Protocol):
    """What an API adds to the pipeline: its requests' shape, its wire format, its error shape."""

    # Routes that make the backend compute, and so wait for a slot (backend.max_concurrency).
    gated: frozenset[str]

    def check_path(self, request: web.Request, endpoint: str) -> None:
        """Refuse what the path carries (a blob digest, a model id) before the body is read."""

    def parse(self, request: web.Request, endpoint: str, raw: bytes, config: Config) -> Parsed:
        """Parse and check the body (400 naming the field), map the model; the one check at the edge."""

    async def send(self, backend: Backend, call: Call) -> Reply:
        """Ask the backend through the API's entry point."""

    def assembler(self, keep: int) -> Assembler:
        """A fresh assembler of this API's answers, keeping ``keep`` characters."""

    def stream_headers(self, content_type: str) -> dict[str, str]:
        """The headers of a streamed answer whose backend said ``content_type``."""

    def piece(self, item: Batch | Frame, hide_usage: bool) -> Piece:
        """One stream item as it goes out."""

    def unfinished(self, exchange: Exchange) -> ProxyError | None:
        """The error for a stream that ended without its end marker; None when it has none."""

    def error_item(self, exc: ProxyError) -> bytes:
        """The stream item that ends a stream broken by ``exc``, in the API's error shape."""

    def error_text(self, status: int, body: bytes) -> str:
        """What the record's ``error`` says for an error answer (or the start of one)."""

    def present(self, exchange: Exchange, reply: Whole, models: ModelsConfig) -> bytes:
        """A whole answer as the client gets it (model lists with client-side names)."""


async def handle(request: web.Request, codec: Codec) -> web.StreamResponse:
    """Parse, check, gate, forward and relay one request, filling in its audit record."""
    app = request.app
    config, backend, console = app[keys.LIVE].config, app[keys.BACKEND], app[keys.CONSOLE]
    exchange = request[keys.EXCHANGE]
    endpoint = exchange.endpoint
    codec.check_path(request, endpoint)
    raw = await body_mod.read(request)
    exchange.request_body = raw or None
    parsed = codec.parse(request, endpoint, raw, config)
    call = Call(
        endpoint=endpoint,
        method=request.method,
        path=request.path,
        body=parsed.body,
        raw=parsed.raw,
        query=request.rel_url.raw_query_string,  # as sent: still percent-encoded
        model=parsed.model,
        backend_model=parsed.backend_model,
        started=exchange.started_mono,
        stream=parsed.stream,
        gated=endpoint in codec.gated,  # waits for a slot of the chosen backend's gate
    )
    exchange.model, exchange.backend_model = parsed.model, parsed.backend_model
    exchange.stream, exchange.prompt = parsed.stream, parsed.prompt
    if parsed.sent is not None:
        exchange.backend_request = parsed.sent
    if console.raw_requests and call.body is not None:
        console.request(exchange, call.body)
    keep = config.database.max_body_bytes  # bytes (or characters) of each copy the record keeps
    # The gate: the key's quota, then the answer cache; a hit takes no backend slot.
    quotas = app[QUOTAS]
    ticket = quotas.admit(request.get(keys.KEY_NAME), endpoint, parsed.model, parsed.backend_model)
    cache = app[keys.CACHE]
    key = policy.key_for(config, call)
    answer = cache.get(key) if key is not None else None
    if key is not None:
        exchange.cache_hit = answer is not None
    headers = {} if key is None else {"X-Cache": "miss" if answer is None else "hit"}
    ended: int | None = None  # the status a failure ends the request with, for the quota
    try:
        if endpoint in LISTINGS and (allowed := quotas.models_for(request.get(keys.KEY_NAME))):
            return await _listing(request, codec, call, exchange, console, keep, parsed, allowed)
        if answer is not None:
            # Nothing reached the backend: the row says what the hit spared it instead.
            exchange.backend_request = None
            exchange.cache_saved_ms, exchange.cache_saved_tokens = answer.saved_ms, answer.saved_tokens
            return await _relay(request, answer.reply(), exchange, console, codec, keep, parsed, headers)
        # The slot of the backend the router chooses is taken there (call.gated).
        try:
            reply = await codec.send(backend, call)
        except ProxyError as exc:
            if exc.sent is not None:
                exchange.backend_request = exc.sent
            _routed(exchange, exc.route)
            raise
        if reply.sent is not None:
            exchange.backend_request = reply.sent
        _routed(exchange, reply.route)
        if key is None:
            return await _relay(request, reply, exchange, console, codec, keep, parsed, headers)
        recording = cache.record(reply)
        try:
            return await _relay(request, reply, exchange, console, codec, keep, parsed, headers)
        finally:
            tokens = (exchange.prompt_tokens or 0) + (exchange.completion_tokens or 0)
            cache.finish(key, recording, _answered(exchange), exchange.elapsed_ms(), tokens or None)
    except ProxyError as exc:
        ended = exc.status
        raise
    except asyncio.CancelledError:
        ended = CLIENT_GONE
        raise
    finally:
        if ticket is not None:
            quotas.settle(ticket, exchange, ended, from_cache=answer is not None)


async def _listing(
    request: web.Request,
    codec: Codec,
    call: Call,
    exchange: Exchange,
    console: Console,
    keep: int,
    parsed: Parsed,
    allowed: tuple[str, ...],
) -> web.StreamResponse:
    """A model list for a key limited to some models: only those, as a request for each would be judged."""
    response = await _relay(request, await codec.send(request.app[keys.BACKEND], call), exchange, console,
                            codec, keep, parsed, {})  # fmt: skip
    if isinstance(response, web.Response) and isinstance(response.body, bytes) and response.status < 400:
        response.body = listing(response.body, allowed, request.app[keys.LIVE].config.models)
        exchange.response_body = stored_copy(response.body, keep, exchange)
    return response


def _answered(exchange: Exchange) -> bool:
    """True when the exchange ended in a whole answer: no error, a success status (what may be kept)."""
    return exchange.error is None and exchange.status_code is not None and exchange.status_code < 400


async def _relay(
    request: web.Request,
    reply: Reply,
    exchange: Exchange,
    console: Console,
    codec: Codec,
    keep: int,
    parsed: Parsed,
    headers: dict[str, str],
) -> web.StreamResponse:
    """Relay a reply of any kind to the client."""
    config = request.app[keys.LIVE].config
    if isinstance(reply, Whole):
        return _relay_whole(reply, exchange, console, codec, keep, config.models, headers)
    if isinstance(reply, Chunks):
        return await _relay_chunks(request, reply, exchange, console, codec, keep, headers)
    return await _relay_stream(request, reply, exchange, console, codec, keep, parsed.hide_usage, headers)


def _routed(exchange: Exchange, route: Route | None) -> None:
    """Record where the request went: the backend that answered and every try."""
    if route is None:
        return
    exchange.backend_name = route.backend
    if route.type is not None:
        exchange.backend_type = route.type
    if route.attempts:
        exchange.attempts = [attempt.as_dict() for attempt in route.attempts]
    if route.backend_model is not None:  # retried on models.fallback's model
        exchange.backend_model = route.backend_model


async def _relay_stream(
    request: web.Request,
    reply: Lines | Frames,
    exchange: Exchange,
    console: Console,
    codec: Codec,
    keep: int,
    hide_usage: bool,
    headers: dict[str, str],
) -> web.StreamResponse:
    """Send each item as it arrives; a failure after the start ends with the API's error item."""
    response = web.StreamResponse(
        status=reply.status, headers={**codec.stream_headers(reply.content_type), **headers}
    )
    assembler = codec.assembler(keep)
    exchange.status_code = reply.status
    ended = False
    try:
        await response.prepare(request)
        item: Batch | Frame
        async for item in reply:
            piece = codec.piece(item, hide_usage)
            if piece.data is not None:
                await response.write(piece.data)
            # Recorded once written: a client that left keeps in its row only what reached it.
            token = False
            for obj in piece.objects:
                token = assembler.feed(obj) or token
            if piece.data is None:
                continue
            if console.raw_responses:
                for shown in piece.shown:
                    console.response(exchange, shown)
            exchange.mark_first_byte()
            if token:
                exchange.mark_first_token()
            if piece.last:
                # The client has every byte: end its answer now. The openai SDK stops
                # reading at [DONE] and closes, and waiting here for the backend's end
                # of stream made that close look like a client that left (a 499 row).
                ended = True
                break
        if not ended and assembler.error is None and (missing := codec.unfinished(exchange)):
            raise missing
        await response.write_eof()
    except ProxyError as exc:
        exchange.status_code, exchange.error = exc.status, exc.message
        request[keys.FAILURE] = exc  # counted by kind in the metrics
        with suppress(ConnectionError):
            await response.write(codec.error_item(exc))
            await response.write_eof()
    except ConnectionError:
        if not ended:  # after its end marker the client had the whole answer
            exchange.status_code, exchange.error = CLIENT_GONE, why_cut_off(request)
    finally:
        await reply.close()
        _record(exchange, assembler)
        exchange.response_body = assembler.result()
    return response


def _relay_whole(
    reply: Whole,
    exchange: Exchange,
    console: Console,
    codec: Codec,
    keep: int,
    models: ModelsConfig,
    headers: dict[str, str],
) -> web.Response:
    """Send a whole answer, recording what it says (assembled when it is within the stored copy)."""
    exchange.status_code = reply.status
    exchange.mark_first_byte()
    body = reply.body
    if reply.status < 400:
        body = codec.present(exchange, reply, models)
        # A body larger than the copy kept is held only because the proxy changed
        # it (a fold, a rename): its record keeps the capped bytes, unparsed.
        obj = _json_object(reply.content_type, body, keep)
        if obj is not None:
            assembler = codec.assembler(keep)
            if assembler.feed(obj):
                exchange.mark_first_token()
            _record(exchange, assembler)
    elif exchange.error is None:
        exchange.error = codec.error_text(reply.status, body)
    exchange.response_body = stored_copy(body, keep, exchange)
    if console.raw_responses:
        console.response(exchange, body)
    headers = {"Content-Type": reply.content_type, **headers}
    return web.Response(body=body, status=reply.status, headers=headers)


async def _relay_chunks(
    request: web.Request,
    reply: Chunks,
    exchange: Exchange,
    console: Console,
    codec: Codec,
    keep: int,
    headers: dict[str, str],
) -> web.StreamResponse:
    """Send a body too large to hold as it arrives; the record keeps its first ``keep`` bytes.

    A failure once the body has begun cannot be put into it (a JSON document
    has no room for an error line): the connection is closed before the body's
    end, so the client sees an incomplete answer rather than a short one.
    """
    # Only Content-Type is passed on: the body is decoded (Content-Encoding is
    # gone) and sent chunked, so the backend's length would be stale.
    headers = {"Content-Type": reply.content_type, **headers}
    response = web.StreamResponse(status=reply.status, headers=headers)
    exchange.status_code = reply.status
    copy = bytearray()
    try:
        await response.prepare(request)
        async for data in reply:
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
        exchange.error = codec.error_text(reply.status, bytes(copy))
    if console.raw_responses:
        console.response(exchange, bytes(copy))  # the stored copy: the body may be any size
    return response


def _record(exchange: Exchange, assembler: Assembler) -> None:
    """Copy what the assembled answer says into the exchange record.

    One rule for every backend and both APIs: an answer that reports an error
    after a success status (a stream that broke off after its 200 header) is
    recorded with the error's status, 500 when it names none (an Ollama error
    line names none).
    """
    exchange.response = assembler.text
    exchange.thinking = assembler.thinking
    exchange.tool_calls = assembler.tool_calls or None
    exchange.done_reason = assembler.done_reason
    exchange.prompt_tokens = assembler.prompt_tokens
    exchange.completion_tokens = assembler.completion_tokens
    exchange.truncated = exchange.truncated or assembler.truncated
    if assembler.error is not None and exchange.error is None:
        exchange.error = assembler.error
        status, named = exchange.status_code, assembler.error_status
        if status is not None and status < 400:
            exchange.status_code = named if named is not None and 400 <= named < 600 else 500


def stored_copy(body: bytes, keep: int, exchange: Exchange) -> bytes | None:
    """The part of ``body`` the record keeps: its first ``keep`` bytes (``truncated`` when cut)."""
    if len(body) > keep:
        exchange.truncated = True
        return body[:keep]
    return body or None


def _json_object(content_type: str, body: bytes, keep: int) -> dict[str, Any] | None:
    """``body`` parsed, when it is a JSON object within the stored copy."""
    if not (content_type.startswith("application/json") and body and len(body) <= keep):
        return None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None
