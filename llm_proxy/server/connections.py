"""Client connections: at most ``server.max_connections`` at once, idle ones making room.

Every open connection costs a file descriptor, and systemd gives a service 1024
unless told otherwise: 2,000 idle connections once left new clients with
ECONNRESET until aiohttp's keep-alive timer (75 s) freed some. Now a new
connection over the limit closes the connection that has been idle longest (no
request in hand: one that never sent a request, or waits between two) to make
room. Only when every connection has a request in hand is the new one refused,
plainly: ``503`` with the API's JSON error and ``Connection: close``.

aiohttp counts connections in :class:`aiohttp.web.Server` but bounds nothing;
:class:`CappedServer` is that server with the limit, and :func:`run` is
``web.run_app`` serving through it::

    run → Runner (web.AppRunner) → CappedServer (web.Server, the protocol factory)
                                    ├── RequestHandler per connection (aiohttp's)
                                    └── Refusal per connection over the limit
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .middlewares import json_error

if TYPE_CHECKING:
    from aiohttp.web_request import BaseRequest

REFUSAL_LINGER = 2.0  # seconds a refused connection may take to read its answer


class ConnectionLimit:
    """Which connections are open and which are idle; pure bookkeeping, any hashable as a connection."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        # Connections without a request in hand, the longest idle first.
        self._idle: OrderedDict[Any, None] = OrderedDict()
        self._busy: dict[Any, int] = {}  # connection → requests in hand
        self.refused = 0  # connections turned away because every one was busy
        self.closed_idle = 0  # idle connections closed to make room

    @property
    def open(self) -> int:
        """Connections open now."""
        return len(self._idle) + len(self._busy)

    def opened(self, connection: Any) -> None:
        """A new connection: idle until its first request."""
        self._idle[connection] = None

    def closed(self, connection: Any) -> None:
        """``connection`` is gone (however it ended)."""
        self._idle.pop(connection, None)
        self._busy.pop(connection, None)

    def started(self, connection: Any) -> None:
        """A request on ``connection`` is being answered."""
        if connection in self._busy:
            self._busy[connection] += 1
        elif connection in self._idle:
            del self._idle[connection]
            self._busy[connection] = 1

    def finished(self, connection: Any) -> None:
        """A request on ``connection`` is answered; with none left, it is idle from now."""
        if connection not in self._busy:
            return  # closed meanwhile
        self._busy[connection] -= 1
        if not self._busy[connection]:
            del self._busy[connection]
            self._idle[connection] = None  # the most recently idle: the last to be closed

    def make_room(self, can_close: Callable[[Any], bool]) -> Any | None:
        """At the limit, the idle connection to close for a new one (forgotten here); None when
        there is room. Raises :class:`Full` when every connection is busy."""
        if self.open < self.maximum:
            return None
        for connection in self._idle:
            if can_close(connection):
                del self._idle[connection]
                self.closed_idle += 1
                return connection
        self.refused += 1
        raise Full()


# The client connections open, counted by the server that :func:`run` runs.
CONNECTIONS = web.AppKey("connections", ConnectionLimit)


class Full(Exception):
    """Every connection has a request in hand: a new one is refused."""


class Refusal(asyncio.Protocol):
    """A connection over the limit: its request gets a 503, then the connection is closed.

    The answer waits for the request line: clients read only once they have
    sent, and one that finds the connection ended before that (aiohttp's
    client) reports a dropped connection, not the 503. The line's path picks
    the error shape (OpenAI's under ``/v1/``). What the client sends after it
    is read and dropped (closing with bytes unread would reset the connection,
    and the client could lose the answer). All of it within
    :data:`REFUSAL_LINGER` seconds.
    """

    def __init__(self, answers: tuple[bytes, bytes]) -> None:
        self.answers = answers  # Ollama's shape, OpenAI's
        self._head = b""
        self._answered = False
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is one, if not by class
        self._timer = asyncio.get_running_loop().call_later(REFUSAL_LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        if self._answered or self._transport is None:
            return  # the rest of the request: unread, by design
        self._head += data
        if b"\n" not in self._head and len(self._head) < 8192:
            return
        target = self._head.split(b" ", 2)[1] if b" " in self._head else b""
        self._transport.write(self.answers[target.startswith(b"/v1/")])
        self._answered = True
        if self._transport.can_write_eof():
            self._transport.write_eof()

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


def refusal_answers(maximum: int) -> tuple[bytes, bytes]:
    """The answer a refused connection gets: in Ollama's error shape, and in OpenAI's."""
    message = (
        f"too many connections: the proxy serves at most {maximum} at once (server.max_connections) "
        "and every one is busy; retry shortly"
    )
    return _answer(json_error(message, 503)), _answer(json_error(message, 503, "/v1/"))


def _answer(response: web.Response) -> bytes:
    assert isinstance(response.body, bytes)
    head = (
        f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {response.headers['Content-Type']}\r\n"
        f"Content-Length: {len(response.body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + response.body


class CappedServer(web.Server):
    """aiohttp's low-level server (the protocol factory), with :class:`ConnectionLimit` applied."""

    def __init__(self, limit: ConnectionLimit, handler: Any, **kwargs: Any) -> None:
        super().__init__(self._answer, **kwargs)
        self.limit = limit
        self._handler = handler
        self._refusals = refusal_answers(limit.maximum)

    def __call__(self) -> RequestHandler:
        try:
            idle = self.limit.make_room(_connected)
        except Full:
            # asyncio wants a protocol; the refusal is one, if not aiohttp's.
            return Refusal(self._refusals)  # type: ignore[return-value]
        if idle is not None:
            idle.force_close()  # what aiohttp's keep-alive timer does, only sooner
        handler = super().__call__()
        self.limit.opened(handler)
        return handler

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self.limit.closed(handler)

    async def _answer(self, request: BaseRequest) -> web.StreamResponse:
        # The app writes every answer before it returns (the audit middleware and
        # the access observer send whole ones): once this returns, the
        # connection has nothing in hand.
        connection = request.protocol
        self.limit.started(connection)
        try:
            response: web.StreamResponse = await self._handler(request)
            return response
        finally:
            self.limit.finished(connection)


def _connected(handler: RequestHandler) -> bool:
    # One whose transport is not set up yet cannot be closed: it has not begun.
    return handler.connected


class Runner(web.AppRunner):
    """``web.AppRunner`` serving through a :class:`CappedServer`."""

    def __init__(self, app: web.Application, limit: ConnectionLimit, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limit = limit

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # starts the app; its Server only lends its parts
        return CappedServer(
            self.limit, made.request_handler, request_factory=made.request_factory, **self._kwargs
        )


def run(
    app: web.Application,
    limit: ConnectionLimit,
    *,
    host: str,
    port: int,
    loop: asyncio.AbstractEventLoop,
    on_listening: Callable[[], None],
    shutdown_timeout: float,
    **handler_args: Any,
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, as ``web.run_app`` does, within ``limit``."""

    async def serve() -> None:
        runner = Runner(app, limit, handle_signals=True, shutdown_timeout=shutdown_timeout, **handler_args)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            on_listening()
            await asyncio.Event().wait()  # until a signal raises GracefulExit
        finally:
            await runner.cleanup()

    asyncio.set_event_loop(loop)
    main = loop.create_task(serve())
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():  # a signal: shut down gracefully now
                main.cancel()
                with suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            rest = asyncio.all_tasks(loop)
            for task in rest:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()
