"""The outermost middleware: one access log line and the metrics for every request.

It sits outside the error boundary, so it sees the answer the client got. For
``/api/*`` requests the status is the audit row's (a stream that broke off after
its 200 header counts as the error it ended with; a client that left, as 499).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress

from aiohttp import web
from aiohttp.typedefs import Handler

from ..audit.exchange import Exchange
from . import logging_setup, state
from .metrics import METRICS
from .recording import CLIENT_GONE

METRICS_PATH = "/metrics"


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time the request, then log it and count it."""
    app = request.app
    metrics = app[METRICS]
    # Scrapes are not counted: the counters then show the traffic alone.
    counted = request.path != METRICS_PATH
    started = time.perf_counter()
    status = 500
    if counted:
        metrics.in_flight.inc()
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            # A whole answer goes out now, rather than after the log line and the
            # metrics below (aiohttp would send it once this returns).
            with suppress(ConnectionError):  # the client left: it is counted all the same
                await response.prepare(request)
                await response.write_eof()
        return response
    except web.HTTPException as exc:  # redirects and the like, which the error boundary lets through
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_GONE
        raise
    finally:
        seconds = time.perf_counter() - started
        exchange = request.get(state.EXCHANGE)
        if exchange is not None and exchange.status_code is not None:
            status = exchange.status_code
        resource = request.match_info.route.resource
        endpoint = resource.canonical if resource is not None else "unmatched"
        if counted:
            metrics.in_flight.dec()
            metrics.observe(endpoint, status, seconds, exchange, request.get(state.FAILURE))
        logging_setup.access(
            request_id=request.get(state.REQUEST_ID),
            method=request.method,
            path=request.path,
            status=status,
            latency_ms=int(seconds * 1000),
            model=exchange.model if exchange is not None else None,
            # With several backends, the name of the one that answered (its type when one).
            backend=_backend(app, exchange),
        )


def _backend(app: web.Application, exchange: Exchange | None) -> str:
    router = app[state.ROUTER]
    if len(router.members) > 1 and exchange is not None and exchange.backend_name is not None:
        return exchange.backend_name
    return router.type
