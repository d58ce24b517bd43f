"""The audit middleware: where every request's Exchange is created and handed to the writer.

It sits inside the error boundary and outside authentication, rate limiting and
the handlers, so a request turned away with 401, 429 or 413 leaves its row by
the same path as one that reached the backend. Handlers fill in the exchange
they find under ``request[state.EXCHANGE]``; the row is submitted from
``finally:``, so failed and cancelled requests are recorded too.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from ..audit.exchange import Exchange
from ..errors import ClientGone, ProxyError
from ..telemetry import Telemetry, Trace, current
from . import state
from .middlewares import header_text

log = logging.getLogger("llm_proxy.telemetry")

CLIENT_GONE = ClientGone.status  # 499, nginx's and Ollama's "the client closed the request"

# The proxy's own probes and scrapes: polled every few seconds, they would drown the trail.
UNRECORDED = frozenset({"/health", "/health/live", "/health/ready", "/metrics"})


@web.middleware
async def audit_trail(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Create the request's Exchange, run the rest, and submit the finished record."""
    if request.path in UNRECORDED:
        return await handler(request)
    app = request.app
    recorder, console = app[state.RECORDER], app[state.CONSOLE]
    await recorder.admit()
    resource = request.match_info.route.resource
    exchange = Exchange(
        endpoint=resource.canonical if resource is not None else request.path,
        method=request.method,
        backend_type=app[state.BACKEND].type,
        api="openai" if request.path.startswith("/v1/") else "ollama",
        request_id=request.get(state.REQUEST_ID),
        client_addr=request.remote,
        user_agent=header_text(request, "User-Agent"),
        replay_of=replay_of(request),
    )
    request[state.EXCHANGE] = exchange
    telemetry = app.get(state.TELEMETRY)
    trace = begin(telemetry, request, exchange) if telemetry is not None else None
    try:
        with current(trace):
            response = await handler(request)
    except ProxyError as exc:
        exchange.status_code, exchange.error = exc.status, exc.message
        request[state.FAILURE] = exc  # for the metrics, by kind
        raise
    except web.HTTPException as exc:
        exchange.status_code = exc.status
        if exc.status >= 400:
            exchange.error = exc.reason.lower()
        raise
    except asyncio.CancelledError:
        exchange.status_code = CLIENT_GONE
        exchange.error = why_cut_off(request)
        raise
    except Exception as exc:
        exchange.status_code, exchange.error = 500, f"internal error: {type(exc).__name__}: {exc}"
        raise
    else:
        if exchange.status_code is None:
            exchange.status_code = response.status
        if not response.prepared:
            await send_whole(request, response, exchange)
        return response
    finally:
        exchange.finish()
        if trace is not None:  # the span ends once the row is stored: it carries the row's id
            exchange.on_stored = trace.end
        recorder.submit(exchange)
        for hook in app[state.ON_RECORD]:
            hook(exchange)
        console.summary(exchange)


def replay_of(request: web.Request) -> int | None:
    """The row a request replays, from ``X-Replay-Of`` (set by ``llm-proxy replay``); else None.

    Only a plain positive id is taken: anything else is no replay, never an error.
    """
    value = request.headers.get("X-Replay-Of", "").strip()
    if value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value) or None
    return None


def begin(telemetry: Telemetry, request: web.Request, exchange: Exchange) -> Trace | None:
    """The exchange's span; None (untraced) should the SDK fail: telemetry never fails a request."""
    try:
        return telemetry.begin(request.headers, exchange)
    except Exception:
        log.exception("telemetry: the span of request %s could not be started", exchange.request_id)
        return None


async def send_whole(request: web.Request, response: web.StreamResponse, exchange: Exchange) -> None:
    """Send a whole answer now, so its row says whether the client was still there to get it.

    Handlers are not cancelled when a client leaves (the CLI serves with
    handler_cancellation=False): one that waited for a whole answer returns it
    all the same, and aiohttp, writing it later, drops it without a word. The
    row said 200. aiohttp sends nothing more for a prepared response.
    """
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:  # aiohttp's ClientConnectionResetError is one: the transport is gone
        exchange.status_code, exchange.error = CLIENT_GONE, why_cut_off(request)


def why_cut_off(request: web.Request) -> str:
    """Why a request ended early: its client left, or the proxy is stopping."""
    if request.app[state.LIFECYCLE].stopping:
        return "interrupted: the proxy is shutting down"
    return "client disconnected"
