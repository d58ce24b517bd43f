"""A small HTTP/1.1 client for the hop to the backend.

The proxy talks to one or a few backends, over and over, with requests it
builds itself: no cookies, redirects, proxies or content encodings. A general
client pays for all of those on every request (aiohttp's was about a quarter of
the proxy's CPU time per request); this one is an :class:`asyncio.Protocol`
that writes a request in one send, parses the answer as it arrives and hands
the connection back to its pool the moment the answer's last byte is in.

Errors are :class:`WireError` (the connection failed or broke off) and
:class:`WireTimeout` (nothing arrived within the timeout); ``http.py`` turns
them into the proxy's own errors.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast
from urllib.parse import quote

# Bytes of answer held for a slow reader before the socket stops being read.
HIGH_WATER = 256 * 1024
MAX_HEAD = 64 * 1024  # a status line and headers longer than this are refused
IDLE_LIMIT = 30.0  # seconds a pooled connection may sit unused before it is dropped

# What a request target may keep as it is when it needs quoting (RFC 3986 path,
# query and the percent sign of escapes already made).
_TARGET_SAFE = "/?#[]@!$&'()*+,;=:%-._~"

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE, _DONE = range(8)


class WireError(Exception):
    """The connection could not be made, or broke off."""

    def __init__(self, reason: str, *, connecting: bool = False) -> None:
        super().__init__(reason)
        self.connecting = connecting


class WireTimeout(WireError):
    """Nothing arrived within the timeout."""


class Headers(dict[str, str]):
    """Response headers by lower-case name; :meth:`get` takes any case."""

    def get(self, key: str, default: Any = None) -> Any:
        return dict.get(self, key.lower(), default)


class Origin:
    """Where a URL's requests go: scheme, host and port, and its idle connections."""

    __slots__ = ("host", "host_header", "idle", "open", "port", "tls")

    def __init__(self, scheme: str, authority: str) -> None:
        self.tls = scheme == "https"
        host, port = authority, 443 if self.tls else 80
        if authority.startswith("["):  # [::1]:8080
            end = authority.index("]")
            host = authority[1:end]
            if authority[end + 1 : end + 2] == ":":
                port = int(authority[end + 2 :])
        elif authority.count(":") == 1:
            host, _, text = authority.partition(":")
            port = int(text)
        self.host, self.port = host, port
        self.host_header = authority
        self.idle: list[Connection] = []  # kept alive, most recently used last
        self.open: set[Connection] = set()  # every connection, idle or answering


class Response:
    """An answer: status and headers at once, the body as it arrives."""

    __slots__ = (
        "_conn", "_done", "_error", "_fed_at", "_held", "_pieces", "_timeout", "_timer", "_waiter", "_whole",
        "headers", "status",
    )  # fmt: skip

    def __init__(self, conn: Connection, status: int, headers: Headers, timeout: float | None) -> None:
        self.status = status
        self.headers = headers
        self._conn: Connection | None = conn
        self._pieces: list[bytes] = []
        self._held = 0
        self._done = False
        self._error: WireError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timeout = timeout
        self._whole = False  # read() is waiting for the end: no wake-up per piece
        self._fed_at = 0.0

    async def read(self) -> bytes:
        """The whole body, waking once at its end rather than for every piece.

        The time-out still bounds each silence, not the whole answer: a long
        generation that keeps sending is not cut off.
        """
        self._whole = True
        if self._conn is not None:
            self._fed_at = self._conn.loop.time()
            # Pieces that came before read() may have filled the high-water mark
            # and paused the socket: read() takes everything, so reading goes on.
            self._held = 0
            self._conn.resume()
        while not self._done:
            if self._error is not None:
                raise self._error
            await self._wait()
        pieces, self._pieces = self._pieces, []
        return b"".join(pieces)

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body in the pieces it arrived in, joined when several are waiting."""
        while True:
            pieces = self._pieces
            if pieces:
                data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                pieces.clear()
                if self._held >= HIGH_WATER and self._conn is not None:
                    self._conn.resume()
                self._held = 0
                yield data
            elif self._done:
                return
            elif self._error is not None:
                raise self._error
            else:
                await self._wait()

    def release(self) -> None:
        """Done with the answer: an unfinished one closes its connection."""
        self._pieces.clear()
        conn, self._conn = self._conn, None
        if conn is not None and not self._done:
            conn.abort()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    # -- fed by the connection --------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._pieces.append(data)
        if self._whole:
            assert self._conn is not None  # fed by it, so still reading
            self._fed_at = self._conn.loop.time()
            return
        self._held += len(data)
        if self._held >= HIGH_WATER and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        self._done = True
        self._conn = None  # the connection went back to its pool
        self._wake()

    def _fail(self, error: WireError) -> None:
        if not self._done and self._error is None:  # a time-out stays a time-out
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        assert self._conn is not None  # not done, not failed: its connection is still reading
        loop = self._conn.loop
        waiter = self._waiter = loop.create_future()
        if self._timeout is not None:
            self._timer = loop.call_later(self._timeout, self._timed_out, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _timed_out(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done():
            return
        if self._whole and self._conn is not None and self._timeout is not None:
            silent = self._conn.loop.time() - self._fed_at
            if silent < self._timeout:  # bytes came meanwhile: wait out the rest of a silence
                self._timer = self._conn.loop.call_later(self._timeout - silent, self._timed_out, waiter)
                return
        self._error = WireTimeout("timed out")
        if self._conn is not None:
            self._conn.abort()
        waiter.set_result(None)


def _chunk_size(line: bytes) -> int:
    """The size on a chunk's first line (hex, perhaps followed by ``;extensions``)."""
    size = line.split(b";", 1)[0].strip()
    if not size or size.strip(b"0123456789abcdefABCDEF"):  # int() would take "-1", "0x10", "1_0"
        raise WireError(f"bad chunk size {line[:20]!r}")
    return int(size, 16)


class Connection(asyncio.Protocol):
    """One kept-alive connection to an origin; it parses one answer at a time."""

    def __init__(self, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.origin = origin
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.received = False  # any byte of the current answer has arrived
        self._buf = b""
        self._state = _DONE
        self._left = 0  # bytes of body, or of the current chunk, still to come
        self._keep = True
        self._head_only = False
        self._timeout: float | None = None
        self._head: asyncio.Future[Response] | None = None
        self._resp: Response | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.origin.open.add(self)

    def data_received(self, data: bytes) -> None:
        if self._state == _DONE:  # nothing was asked: the server is not speaking HTTP to us
            self.abort()
            return
        self.received = True
        try:
            self._parse(self._buf + data if self._buf else data)
        except WireError as exc:
            self._break(exc)

    def eof_received(self) -> bool:
        if self._state == _UNTIL_CLOSE:
            self._state = _DONE
            self._keep = False
            assert self._resp is not None
            self._resp._finish()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.origin.open.discard(self)
        if self in self.origin.idle:
            self.origin.idle.remove(self)
        if self._state != _DONE:
            reason = str(exc) if exc is not None else "the server closed the connection"
            self._break(WireError(reason or type(exc).__name__))

    # -- used by the client -------------------------------------------------------

    def send(
        self, head: bytes, body: bytes | None, timeout: float | None, head_only: bool
    ) -> asyncio.Future[Response]:
        """Write one request; the future resolves when the answer's headers are in."""
        assert self.transport is not None
        loop = self.loop
        self._state = _HEAD
        self._buf = b""
        self._keep = True
        self._head_only = head_only
        self._timeout = timeout
        self.received = False
        self._resp = None
        future = self._head = loop.create_future()
        if timeout is not None:
            self._timer = loop.call_later(timeout, self._head_timed_out)
        self.transport.write(head + body if body else head)
        return future

    def abort(self) -> None:
        """Close at once (an answer left unread cannot be skipped on a kept-alive connection)."""
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    # -- parsing ------------------------------------------------------------------

    def _parse(self, data: bytes) -> None:
        """Take in what arrived; the body bytes found go to the answer in one piece."""
        self._buf = b""
        body: list[bytes] = []
        try:
            self._walk(data, body)
        finally:
            if body and self._resp is not None:
                self._resp._feed(body[0] if len(body) == 1 else b"".join(body))

    def _walk(self, data: bytes, body: list[bytes]) -> None:
        # Positions rather than slices of the rest: a read can hold a thousand chunks.
        pos, end_of_data = 0, len(data)
        while pos < end_of_data:
            state = self._state
            if state == _CHUNK_SIZE:
                end = data.find(b"\r\n", pos)
                if end < 0:
                    self._keep_partial(data[pos:])
                    return
                size = _chunk_size(data[pos:end])
                pos = end + 2
                if not size:
                    self._state = _TRAILER
                    continue
                stop = pos + size
                if data[stop : stop + 2] == b"\r\n":  # the whole chunk is here
                    body.append(data[pos:stop])
                    pos = stop + 2
                else:
                    self._state, self._left = _CHUNK_DATA, size
            elif state in (_LENGTH, _CHUNK_DATA):
                take = min(self._left, end_of_data - pos)
                body.append(data[pos : pos + take])
                pos += take
                self._left -= take
                if self._left:
                    return
                if state == _LENGTH:
                    self._end_of_body(body)
                else:
                    self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if end_of_data - pos < 2:
                    self._buf = data[pos:]
                    return
                if data[pos : pos + 2] != b"\r\n":
                    raise WireError("a chunk did not end with CRLF")
                pos += 2
                self._state = _CHUNK_SIZE
            elif state == _HEAD:
                end = data.find(b"\r\n\r\n", pos)
                if end < 0:
                    if end_of_data - pos > MAX_HEAD:
                        raise WireError("the answer's headers are too long")
                    self._buf = data[pos:]
                    return
                self._head_parsed(data[pos:end])
                pos = end + 4
            elif state == _TRAILER:
                end = data.find(b"\r\n", pos)
                if end < 0:
                    self._keep_partial(data[pos:])
                    return
                blank = end == pos  # the blank line that ends the trailers
                pos = end + 2
                if blank:
                    self._end_of_body(body)
            elif state == _UNTIL_CLOSE:
                body.append(data[pos:] if pos else data)
                return
            else:  # _DONE: bytes after the answer, unasked for
                raise WireError("the server sent more than one answer")

    def _keep_partial(self, data: bytes) -> None:
        if len(data) > MAX_HEAD:
            raise WireError("a chunk header is too long")
        self._buf = data

    def _end_of_body(self, body: list[bytes]) -> None:
        if body and self._resp is not None:
            self._resp._feed(body[0] if len(body) == 1 else b"".join(body))
        body.clear()
        self._complete()

    def _head_parsed(self, head: bytes) -> None:
        """Take the status line and headers, and learn how the body is framed."""
        lines = head.decode("latin-1").split("\r\n")  # one decode: header bytes are latin-1
        parts = lines[0].split(" ", 2)
        try:
            version, status = parts[0], int(parts[1])
        except (IndexError, ValueError):
            raise WireError(f"bad status line {lines[0][:60]!r}") from None
        if not version.startswith("HTTP/1."):
            raise WireError(f"bad status line {lines[0][:60]!r}")
        if 100 <= status < 200:  # 100 Continue and the like: the real answer follows
            return
        headers = Headers()
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise WireError(f"bad header line {line[:60]!r}")
            key, text = name.strip().lower(), value.strip()
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        connection = headers.get("connection", "").lower()
        self._keep = "close" not in connection and (version != "HTTP/1.0" or "keep-alive" in connection)
        self._cancel_timer()
        self._resp = Response(self, status, headers, self._timeout)
        if self._head is not None and not self._head.done():
            self._head.set_result(self._resp)
        if self._head_only or status in (204, 304):
            self._complete()  # anything after it is an error, which _parse reports
            return
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = _CHUNK_SIZE
            return
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit() or not length.isascii():
                raise WireError(f"bad Content-Length {length[:20]!r}")
            self._left = int(length)
            if self._left == 0:
                self._complete()
            else:
                self._state = _LENGTH
            return
        self._state = _UNTIL_CLOSE
        self._keep = False

    def _complete(self) -> None:
        """The answer's last byte is in: the connection can serve the next request."""
        self._state = _DONE
        resp, self._resp = self._resp, None
        self.resume()  # paused for a slow reader: the next answer must be read
        if self._keep and not self.closed:
            self.idle_since = self.loop.time()
            self.origin.idle.append(self)
        else:
            self.abort()
        if resp is not None:
            resp._finish()

    def _break(self, error: WireError) -> None:
        self._state = _DONE
        self._cancel_timer()
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        if self._resp is not None:
            self._resp._fail(error)
            self._resp = None
        self.abort()

    def _head_timed_out(self) -> None:
        self._timer = None
        self._break(WireTimeout("timed out"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Client:
    """Pooled connections to any number of origins; one per app and backend."""

    def __init__(self, *, limit: float | None, headers: Mapping[str, str] | None, agent: str) -> None:
        self.limit = limit  # seconds each wait (to connect, or for the next bytes) may take
        extra = {"User-Agent": agent, **(headers or {})}
        self._extra = "".join(f"{k}: {v}\r\n" for k, v in extra.items())
        self._origins: dict[str, Origin] = {}
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        limit: float | None = None,
    ) -> Response:
        """Send one request and wait for the answer's headers; ``limit`` overrides the client's."""
        if self._closed:
            raise WireError("the client is closed")
        origin, target = self._split(url)
        if not (target.isascii() and target.isprintable()) or " " in target:
            # A query passed on decoded could hold CR LF (a header, or a whole
            # second request, smuggled to the backend) or bytes no request line takes.
            target = quote(target, safe=_TARGET_SAFE)
        limit = self.limit if limit is None else limit
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {origin.host_header}\r\n", self._extra]
        if headers:
            lines.extend(f"{k}: {v}\r\n" for k, v in headers.items())
        if data or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(data) if data else 0}\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        while True:
            conn, reused = await self._connection(origin, limit)
            if self._closed:  # closed while connecting
                conn.abort()
                raise WireError("the client is closed")
            answer = conn.send(head, data, limit, method == "HEAD")
            try:
                return await answer
            except WireTimeout:
                raise
            except WireError:
                # A kept-alive connection the server closed as the request went out:
                # nothing of it was answered, so it is sent again on a new one.
                if reused and not conn.received:
                    continue
                raise
            except BaseException:
                # Cancelled. If the answer's head had come, that answer is released
                # (its connection may already serve another request, and must not be
                # cut); if not, the connection is mid-request and cannot be reused.
                if answer.done() and not answer.cancelled() and answer.exception() is None:
                    answer.result().release()
                else:
                    conn.abort()
                raise

    async def close(self) -> None:
        """Close every connection."""
        self._closed = True
        for origin in self._origins.values():
            for conn in list(origin.open):
                conn.abort()
            origin.idle.clear()

    def _split(self, url: str) -> tuple[Origin, str]:
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in ("http", "https"):
            raise WireError(f"not an http(s) URL: {url[:100]}", connecting=True)
        slash = rest.find("/")
        authority, target = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
        key = f"{scheme}://{authority}"
        origin = self._origins.get(key)
        if origin is None:
            try:
                origin = self._origins[key] = Origin(scheme, authority)
            except ValueError:
                raise WireError(f"bad port in {url[:100]}", connecting=True) from None
        return origin, target

    async def _connection(self, origin: Origin, limit: float | None) -> tuple[Connection, bool]:
        """An idle connection when there is a fresh one, else a new one."""
        idle = origin.idle
        loop = asyncio.get_running_loop()
        if idle:
            now = loop.time()
            while idle and now - idle[0].idle_since >= IDLE_LIMIT:  # the oldest, unused too long
                idle.pop(0).abort()
            while idle:
                conn = idle.pop()
                alive = not conn.closed and conn.transport is not None and not conn.transport.is_closing()
                if alive and now - conn.idle_since < IDLE_LIMIT:
                    return conn, True
                conn.abort()
        tls: ssl.SSLContext | None = None
        if origin.tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            async with asyncio.timeout(limit):
                _, conn = await loop.create_connection(
                    lambda: Connection(origin, loop), origin.host, origin.port, ssl=tls
                )
        except TimeoutError:
            raise WireTimeout("timed out connecting", connecting=True) from None
        except OSError as exc:
            raise WireError(exc.strerror or str(exc) or type(exc).__name__, connecting=True) from None
        return conn, False
