"""The backend hop: one tuned aiohttp ClientSession per backend, its failures as ProxyErrors.

Backends send with :func:`send` and read an answer whole within a cap
(:func:`read_body`), as it arrives (:func:`iter_chunks`), or whole when it is
small and piece by piece when it is not (:func:`relayed`). Reads are of
bounded size and aiohttp's flow control pauses the backend's socket while the
client is slow, so memory follows configuration, not the backend. What can go
wrong becomes one of the proxy's errors::

    ProxyError
    ├── BackendUnavailable (502)  not connected, or the request failed before any answer
    ├── BackendTimeout     (504)  no connection within backend.connect_timeout, or
    │                             no next bytes within backend.timeout
    └── BackendError       (502)  the answer broke off, or is over backend.max_answer_mb

A request is sent a second time in one case only: it went out on a kept-alive
connection that the backend had already closed, and failed before a single
byte of answer came back. llama-server does this after every streamed answer:
it says ``Keep-Alive`` and closes the connection once the last chunk is out,
so the next request that picks that connection from the pool, a moment
before its close is seen, meets a dead socket. aiohttp resends only
idempotent methods in that case; a POST here has no effect on the backend
beyond the answer it asks for (RFC 9110 §9.2.2's "known to be safe to
retry"), and the second try is on a new connection. A request that changes the
backend (pull, push, create, copy, delete, a blob) is never resent, nor one
that failed on a new connection or after any byte of answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from .. import __version__
from ..config import BackendConfig
from ..errors import BackendError, BackendTimeout, BackendUnavailable, ProxyError
from ..telemetry import outgoing
from ..translate import TooLong
from .base import Chunks, Whole

HEALTH_TIMEOUT = 3.0  # seconds a health probe may take
READ_SIZE = 64 * 1024  # bytes taken from the backend's answer per read
# Seconds an unused connection is kept: under llama-server's own 5 s, so the
# proxy closes idle connections before the server does (a request never meets
# one the server is closing).
KEEPALIVE = 4.0
MIB = 1024 * 1024
# Tries more a request gets when each went out on a kept-alive connection that
# the backend had already closed (see the module's docstring).
STALE_RETRIES = 2

# What a path may keep as it is (RFC 3986 pchar and "/"); everything else is
# quoted. The query keeps its escapes ("%") and the characters that separate it.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?%"

Session = aiohttp.ClientSession
Response = aiohttp.ClientResponse


class _Attempt:
    """One try of a request, as aiohttp's tracing sees it: was its connection a kept-alive one?"""

    __slots__ = ("reused",)

    def __init__(self) -> None:
        self.reused = False


async def _on_reuse(_session: Session, context: Any, _params: Any) -> None:
    attempt = context.trace_request_ctx
    if isinstance(attempt, _Attempt):
        attempt.reused = True


def _reuse_tracer() -> aiohttp.TraceConfig:
    """Tracing that tells :func:`send` which tries went out on a pooled connection."""
    trace = aiohttp.TraceConfig()
    trace.on_connection_reuseconn.append(_on_reuse)
    return trace


def new_session(config: BackendConfig) -> Session:
    """The one session a backend reuses for every request, tuned for a few local backends."""
    headers = {"User-Agent": f"llm-proxy/{__version__}"}
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    connector = aiohttp.TCPConnector(
        limit=0,  # bounded per backend host below (llamacpp runs one host per model)
        limit_per_host=config.max_connections,
        keepalive_timeout=KEEPALIVE,
        ttl_dns_cache=300,
    )
    # `timeout` bounds each wait for the next bytes (sock_read), not the whole
    # answer: a long generation that keeps streaming must not be cut at 300 s.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout, sock_read=config.timeout)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers=headers,
        cookie_jar=aiohttp.DummyCookieJar(),  # a backend's cookies are nobody's business here
        auto_decompress=True,  # a gzip answer is relayed decoded, as its Content-Type says
        trust_env=False,  # the backend is addressed directly, never through $HTTP_PROXY
        trace_configs=[_reuse_tracer()],  # see send(): a dead kept-alive connection is retried
    )


def url(endpoint: str, path: str, query: str = "") -> URL:
    """``endpoint + path (+ ?query)`` exactly as given: no dot segment is resolved.

    ``path`` is decoded (as aiohttp's router gives it) and is quoted here; the
    query is passed on as the client sent it, with only what a request line
    cannot carry (spaces, CR, LF, non-ASCII) quoted. The URL is built
    ``encoded=True`` so yarl does not resolve ``..`` either.
    """
    target = quote(path, safe=_PATH_SAFE)
    if query:
        target = f"{target}?{quote(query, safe=_QUERY_SAFE)}"
    return URL(endpoint + target, encoded=True)


async def send(
    session: Session,
    method: str,
    target: URL | str,
    *,
    backend: str,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    within: float | None = None,
    replayable: bool = True,
) -> Response:
    """Send one request and wait for the answer's head; ``within`` seconds bound the whole of it.

    ``replayable`` False (a pull, a delete: a request that changes the backend)
    is never sent twice, not even after a kept-alive connection that was found
    closed (the module's docstring).
    """
    extra: dict[str, Any] = {}
    if within is not None:
        extra["timeout"] = aiohttp.ClientTimeout(total=within)
    if isinstance(target, str):
        target = URL(target, encoded=True)
    if (trace := outgoing()) is not None:  # telemetry: the backend continues this request's trace
        headers = {**headers, **trace} if headers else trace
    try:
        for tries_left in range(STALE_RETRIES, -1, -1):
            attempt = _Attempt()
            try:
                resp = await session.request(
                    method, target, data=data, headers=headers, trace_request_ctx=attempt, **extra
                )
                break
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                stale = attempt.reused and not isinstance(exc, aiohttp.ClientConnectorError)
                if not (stale and replayable and tries_left):
                    raise
                # The pooled connection was closed by the backend before this request
                # went out. One turn of the loop lets the closes of any others be seen.
                await asyncio.sleep(0)
    except TimeoutError:  # aiohttp's ServerTimeoutError and ConnectionTimeoutError are ones
        raise BackendTimeout(f"backend {backend} did not answer in time") from None
    except aiohttp.ClientConnectorError as exc:
        raise BackendUnavailable(f"backend {backend} is unreachable: {_reason(exc)}") from None
    except aiohttp.ClientError as exc:
        raise BackendUnavailable(f"backend {backend} failed: {_reason(exc)}") from None
    _end_body_with_connection(resp)
    return resp


def _end_body_with_connection(resp: Response) -> None:
    """Make a body whose connection is gone fail at once instead of waiting for ever.

    aiohttp 3.14's client leaves a body reader waiting when the answer breaks
    its framing after the head (a malformed chunk size, say): the parser's
    error goes to the connection, the connection closes, and the body never
    hears of either, so the proxy held the request until backend.timeout (or,
    with the read timer dropped by that error, without end). Once the
    connection is lost, a body that has neither ended nor failed fails here.
    """
    connection = resp.connection
    if connection is None or connection.protocol is None:
        return  # already read whole (or no body): nothing to wait for
    content = resp.content

    def lost(_: object = None) -> None:
        if not content.is_eof() and content.exception() is None:
            content.set_exception(aiohttp.ClientPayloadError("the connection closed mid-answer"))

    closed = connection.protocol.closed
    if closed is None:  # lost before anyone asked
        lost()
        return
    closed.add_done_callback(lost)

    def ended() -> None:  # a kept-alive connection serves many answers: each callback goes with its body
        closed.remove_done_callback(lost)

    content.on_eof(ended)


async def read_body(resp: Response, backend: str, limit: int) -> bytes:
    """The whole body, for an answer the proxy must hold to change; 502 beyond ``limit`` bytes."""
    if resp.content_length is not None and resp.content_length > limit and not _encoded(resp):
        resp.close()
        raise _too_large(limit)
    pieces: list[bytes] = []
    size = 0
    async for data in _read(resp, backend, stream=False):
        size += len(data)
        if size > limit:
            resp.close()
            raise _too_large(limit)
        pieces.append(data)
    return b"".join(pieces)


async def relayed(resp: Response, backend: str, hold: int, sent: Any = None) -> Whole | Chunks:
    """The answer whole up to ``hold`` bytes, else relayed as it comes; ``sent`` as the reply's.

    Either way nothing more than ``hold`` bytes and one read is held: a larger
    answer comes back as :class:`~.base.Chunks` that pass each read on to the client.
    """
    content_type = resp.headers.get("Content-Type", "application/json")
    length = resp.content_length
    if length is not None and length <= hold and not _encoded(resp):
        # Its length says it fits: read in one go (an async generator per answer
        # cost 4 % of the proxy's CPU on small answers).
        try:
            body = await _read_all(resp, backend)
        finally:
            resp.release()
        return Whole(resp.status, content_type, body, sent=sent)
    pieces: list[bytes] = []
    size = 0
    reads = _read(resp, backend, stream=False)
    try:
        async for data in reads:
            pieces.append(data)
            size += len(data)
            if size > hold:
                rest = _rest(pieces, reads)
                return Chunks(resp.status, content_type, rest, release=resp.release, sent=sent)
    except BaseException:
        resp.release()
        raise
    resp.release()
    return Whole(resp.status, content_type, b"".join(pieces), sent=sent)


async def _rest(first: list[bytes], reads: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    """What was read already, then the rest as it arrives (Chunks.close() releases the answer)."""
    held = b"".join(first)
    first.clear()
    yield held
    del held
    async for data in reads:
        yield data


async def iter_chunks(resp: Response, backend: str) -> AsyncGenerator[bytes, None]:
    """A streamed body as it arrives, in reads of at most READ_SIZE bytes."""
    async for data in _read(resp, backend, stream=True):
        yield data


async def _read(resp: Response, backend: str, *, stream: bool) -> AsyncGenerator[bytes, None]:
    """The body in bounded reads; failures part-way become ProxyErrors."""
    try:
        async for data in resp.content.iter_chunked(READ_SIZE):
            yield data
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise _broke_off(exc, backend, stream) from None


async def _read_all(resp: Response, backend: str) -> bytes:
    """A body whose Content-Length the caller checked, read at once; failures as :func:`_read`'s."""
    try:
        return await resp.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise _broke_off(exc, backend, stream=False) from None


def _broke_off(exc: BaseException, backend: str, stream: bool) -> ProxyError:
    """The error for a body that failed part-way: the backend fell silent, or its answer broke."""
    if isinstance(exc, TimeoutError):
        where = " mid-stream" if stream else ""
        return BackendTimeout(f"backend {backend} stopped answering{where}")
    what = "the stream" if stream else "its answer"
    return BackendError(f"backend {backend} broke off {what}: {_reason(exc)}")


def too_long(exc: TooLong) -> BackendError:
    """The error for a stream line or event over backend.max_answer_mb: the stream ends with it."""
    return BackendError(
        f"backend sent {exc.what} larger than {_mib(exc.limit)} MiB (backend.max_answer_mb)", 502
    )


def _too_large(limit: int) -> BackendError:
    return BackendError(f"backend answer larger than {_mib(limit)} MiB (backend.max_answer_mb)", 502)


def _mib(size: int) -> str:
    return f"{size / MIB:.4g}"  # the setting as written: 0.1, not 0.0999994


def _encoded(resp: Response) -> bool:
    """True when the body is compressed: its Content-Length is not the length read."""
    return bool(resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity"))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.strerror or str(exc.os_error) or type(exc).__name__
    return str(exc) or type(exc).__name__
