"""The backend hop (aiohttp's client, tuned): framing, keep-alive, failures, never a resent POST.

Real servers on 127.0.0.1 throughout: aiohttp for ordinary answers, and a raw
asyncio server where exact bytes (or a connection closed at a chosen moment)
are the point.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.client_proto import ResponseHandler
from aiohttp.test_utils import TestServer

from llm_proxy import __version__
from llm_proxy.backends import transport
from llm_proxy.config import BackendConfig
from llm_proxy.errors import BackendError, BackendTimeout, BackendUnavailable

from .conftest import MakeProxy

# An NDJSON stream as Ollama sends it: chunked, with a chunk extension thrown in.
LINES = [b'{"message":{"content":"Hel"},"done":false}\n', b'{"message":{"content":"lo"},"done":false}\n']
LAST = b'{"done":true,"done_reason":"stop"}\n'
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"".join(b"%x\r\n%s\r\n" % (len(line), line) for line in LINES)
    + b"%x;ext=1\r\n%s\r\n" % (len(LAST), LAST)
    + b"0\r\nX-Trailer: yes\r\n\r\n"
)
BODY = b"".join(LINES) + LAST
LIMIT = 1 << 20
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


@asynccontextmanager
async def session(read: float = 5.0, **settings: float) -> AsyncIterator[transport.Session]:
    """A backend session whose backend.timeout is ``read``."""
    s = transport.new_session(BackendConfig(timeout=read, **settings))  # type: ignore[arg-type]
    try:
        yield s
    finally:
        await s.close()


Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(answer: Answer) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 that runs ``answer`` for each connection; yields its URL."""
    connections: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        try:
            await answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for writer in connections:
            writer.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head and body (by Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


async def get(s: transport.Session, url: str, method: str = "GET", data: bytes | None = None) -> bytes:
    resp = await transport.send(s, method, url, backend=url, data=data)
    async with resp:
        return await transport.read_body(resp, url, LIMIT)


class Watch:
    """What aiohttp's client protocol does, as events a test can wait for: reads and pauses."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: list[bytes] = []
        self.read = asyncio.Event()  # set by every read from the socket
        self.paused = asyncio.Event()  # set when the client stops reading: its buffer is full
        data_received, pause_reading = ResponseHandler.data_received, ResponseHandler.pause_reading

        def on_data(protocol: ResponseHandler, data: bytes) -> None:
            if data:  # aiohttp calls itself with b"" to resume a decoder: not a read
                self.reads.append(data)
                self.read.set()
            data_received(protocol, data)

        def on_pause(protocol: ResponseHandler) -> None:
            self.paused.set()
            pause_reading(protocol)

        monkeypatch.setattr(ResponseHandler, "data_received", on_data)
        monkeypatch.setattr(ResponseHandler, "pause_reading", on_pause)


@pytest.mark.parametrize("split", range(1, len(CHUNKED)))
async def test_chunked_answer_split_anywhere(split: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wherever TCP cuts the answer, the body comes out whole and the trailer is skipped."""
    watch = Watch(monkeypatch)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(CHUNKED[:split])
        await writer.drain()
        await watch.read.wait()  # the client has read the first piece: the second is a read of its own
        writer.write(CHUNKED[split:])
        await writer.drain()
        await reader.read()  # keep the connection open: the framing alone ends the body

    async with raw_server(answer) as url, session() as s:
        resp = await transport.send(s, "GET", f"{url}/api/chat", backend=url)
        assert resp.status == 200 and resp.headers.get("Content-Type") == "application/x-ndjson"
        assert b"".join([data async for data in transport.iter_chunks(resp, url)]) == BODY
    assert len(watch.reads) >= 2 and len(watch.reads[0]) <= split  # cut where the test meant


async def test_keep_alive_reuses_one_connection() -> None:
    """Sequential requests, bodies in both directions, travel over a single connection."""
    peers: set[object] = set()

    async def echo(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        return web.Response(body=await request.read() or b"empty", content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("/echo"))
    try:
        async with session() as s:
            for i in range(5):
                body = b'{"n":%d}' % i
                assert await get(s, url, "POST", body) == body
            assert await get(s, url) == b"empty"
    finally:
        await server.close()
    assert len(peers) == 1


async def test_a_chat_meeting_a_closed_kept_alive_connection_goes_again_on_a_new_one(
    make_proxy: MakeProxy,
) -> None:
    """What llama-server does after each stream: the pooled connection is dead when the next chat comes."""
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(OK)  # the first request on each connection is answered...
        await writer.drain()
        seen.append(await read_request(reader))
        # ...the second is read, and the connection closed unanswered: an idle close

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    async with raw_server(answer) as url, aiohttp.ClientSession() as http:
        proxy = await make_proxy(url)
        for _ in range(2):
            async with http.post(f"{proxy.url}/api/chat", json=body) as resp:
                assert resp.status == 200
    # The second chat twice: on the closed connection, then on a new one.
    assert [r.split(b" ", 2)[:2] for r in seen] == [[b"POST", b"/api/chat"]] * 3
    rows = await proxy.wait_rows(2)
    assert [(r["status_code"], r["error"]) for r in rows] == [(200, None), (200, None)]


async def test_a_pull_is_never_sent_twice(make_proxy: MakeProxy) -> None:
    """A request that changes the backend is not resent, even after a closed kept-alive connection."""
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(OK)
        await writer.drain()
        seen.append(await read_request(reader))  # read, then closed unanswered

    async with raw_server(answer) as url, aiohttp.ClientSession() as http:
        proxy = await make_proxy(url)
        async with http.get(f"{proxy.url}/api/version") as first:
            assert first.status == 200
        pull = {"model": "m", "stream": False}
        async with http.post(f"{proxy.url}/api/pull", json=pull) as second:
            assert second.status == 502
            error = (await second.json())["error"]
    assert error.startswith(f"backend {url} failed:")
    assert [r.split(b" ", 2)[:2] for r in seen] == [[b"GET", b"/api/version"], [b"POST", b"/api/pull"]]
    rows = await proxy.wait_rows(2)
    assert [r["status_code"] for r in rows] == [200, 502]


async def test_a_post_that_fails_on_a_new_connection_is_not_resent(make_proxy: MakeProxy) -> None:
    """A backend that reads a request and drops it on a fresh connection may have crashed on it."""
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))  # read, then closed unanswered

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    async with raw_server(answer) as url, aiohttp.ClientSession() as http:
        proxy = await make_proxy(url)
        async with http.post(f"{proxy.url}/api/chat", json=body) as resp:
            assert resp.status == 502
    assert len(seen) == 1
    [row] = await proxy.wait_rows(1)
    assert row["status_code"] == 502 and row["error"].startswith(f"backend {url} failed:")


async def test_a_get_meeting_a_closed_kept_alive_connection_is_resent() -> None:
    """Idempotent requests may be resent on a new connection; the caller sees only the answer."""
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(OK)
        await writer.drain()
        seen.append(await read_request(reader))  # read, then closed unanswered

    async with raw_server(answer) as url, session() as s:
        assert await get(s, f"{url}/api/tags") == b"{}"
        assert await get(s, f"{url}/api/tags") == b"{}"
    assert len(seen) == 3  # the second GET twice: once on the closed connection, once anew


async def test_answer_until_close_and_head() -> None:
    """An answer with neither length nor chunks ends when the server closes; HEAD has no body."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        if request.startswith(b"HEAD"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            await writer.drain()
            await read_request(reader)  # the connection stays usable after a HEAD
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        else:
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        await writer.drain()

    async with raw_server(answer) as url, session() as s:
        assert await get(s, f"{url}/") == b"until the end"
        assert await get(s, f"{url}/api/blobs/sha256:00", "HEAD") == b""
        assert await get(s, f"{url}/") == b""  # the 204 on the connection the HEAD used


async def test_slow_reader_gets_every_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4 MB answer read slowly (the socket is paused meanwhile) arrives intact."""
    watch = Watch(monkeypatch)
    payload = bytes(range(256)) * 16384

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=payload)

    app = web.Application()
    app.router.add_get("/big", big)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("/big"))
    try:
        async with session(read=2) as s:
            resp = await transport.send(s, "GET", url, backend=url)
            await asyncio.wait_for(watch.paused.wait(), 10)  # the answer filled the buffer: reading stopped
            parts = []
            async for data in transport.iter_chunks(resp, url):
                assert len(data) <= transport.READ_SIZE
                parts.append(data)
            assert b"".join(parts) == payload
            watch.paused.clear()
            resp = await transport.send(s, "GET", url, backend=url)
            await asyncio.wait_for(watch.paused.wait(), 10)  # the same before a read of the whole body
            async with resp:
                assert await transport.read_body(resp, url, len(payload)) == payload
    finally:
        await server.close()


async def test_failures_become_proxy_errors() -> None:
    """Unreachable is 502, silence is 504, an answer cut short is a 502 naming the backend."""

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        if b"/cut" in request:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            await writer.drain()
            return  # the connection closes with 93 bytes missing
        if b"/slow-body" in request:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
            await writer.drain()
        await asyncio.sleep(5)

    async with raw_server(stall) as url, session(read=0.3) as s:
        with pytest.raises(BackendTimeout, match="did not answer in time"):
            await transport.send(s, "GET", f"{url}/silent", backend=url)
        resp = await transport.send(s, "GET", f"{url}/slow-body", backend=url)
        with pytest.raises(BackendTimeout, match="stopped answering mid-stream"):
            async for _ in transport.iter_chunks(resp, url):
                pass
        resp = await transport.send(s, "GET", f"{url}/cut", backend=url)
        with pytest.raises(BackendError, match="broke off its answer") as caught:
            await transport.read_body(resp, url, LIMIT)
        assert caught.value.status == 502
        port = url.rsplit(":", 1)[1]
    async with session() as s:
        with pytest.raises(BackendUnavailable, match=r"^backend llama is unreachable: ") as refused:
            await transport.send(s, "GET", f"http://127.0.0.1:{port}/", backend="llama")
    assert refused.value.status == 502


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",  # not HTTP at all
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x10\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n",
    ],
)
async def test_bad_answers_are_refused(answer: bytes) -> None:
    """Garbage where a status line belongs, a negative length, a chunk size int() would take: 502."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        await asyncio.sleep(1)

    async with raw_server(garbage) as url, session(read=2) as s:
        with pytest.raises((BackendUnavailable, BackendError)) as caught:
            await get(s, f"{url}/")
    assert caught.value.status == 502


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
async def test_a_body_that_breaks_its_framing_after_the_head_fails_at_once(stream: bool) -> None:
    """A malformed chunk once the head and a first chunk are in: 502, not a wait for the timeout.

    aiohttp's client alone leaves the body reader waiting for ever here; the
    backend.timeout of an hour below would hold the request that long.
    """
    first = LINES[0]

    async def breaks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(CHUNKED[: CHUNKED.index(b"\r\n\r\n") + 4] + b"%x\r\n%s\r\n" % (len(first), first))
        await writer.drain()
        await asyncio.sleep(0.2)  # the head and the first chunk are read before the bad one comes
        writer.write(b"zz\r\nnot a chunk\r\n")
        await writer.drain()

    got: list[bytes] = []
    async with raw_server(breaks) as url, session(read=3600) as s:
        resp = await transport.send(s, "POST", f"{url}/api/chat", backend="b", data=b"{}")
        with pytest.raises(BackendError, match="broke off") as caught:
            async with asyncio.timeout(30):  # a guard against the hang, not a speed target
                if stream:
                    async for data in transport.iter_chunks(resp, "b"):
                        got.append(data)
                else:
                    got.append(await transport.read_body(resp, "b", LIMIT))
    assert caught.value.status == 502
    assert got == ([first] if stream else [])


async def test_a_target_is_never_sent_with_raw_line_breaks_or_non_ascii() -> None:
    """Whatever reaches the proxy as a query, the request line stays one line."""
    received: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            received.append(await read_request(reader))
            writer.write(OK)
            await writer.drain()

    async with raw_server(answer) as url, session() as s:
        for query in ("a= HTTP/1.1\r\nX-Injected: yes\r\n\r\nDELETE /x", "a=€", "a=%20b&c"):
            assert await get(s, transport.url(url, "/api/tags", query)) == b"{}"  # type: ignore[arg-type]
    assert [r.split(b"\r\n", 1)[0] for r in received] == [
        b"GET /api/tags?a=%20HTTP/1.1%0D%0AX-Injected:%20yes%0D%0A%0D%0ADELETE%20/x HTTP/1.1",
        b"GET /api/tags?a=%E2%82%AC HTTP/1.1",
        b"GET /api/tags?a=%20b&c HTTP/1.1",  # escapes the client made are kept as they are
    ]
    assert not any(b"X-Injected: yes" in r for r in received)


async def test_backend_headers_user_agent_and_api_key() -> None:
    """Every request names the proxy and carries the backend's API key; no cookie comes back."""
    received: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            received.append(await read_request(reader))
            writer.write(b"HTTP/1.1 200 OK\r\nSet-Cookie: id=1\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()

    async with raw_server(answer) as url:
        s = transport.new_session(BackendConfig(api_key="sekrit"))
        try:
            for _ in range(2):
                await get(s, f"{url}/api/tags")
        finally:
            await s.close()
    for request in received:
        head = request.decode().lower()
        assert f"user-agent: llm-proxy/{__version__}\r\n" in head
        assert "authorization: bearer sekrit\r\n" in head
        assert "cookie" not in head


async def test_a_gzip_answer_reaches_the_client_decoded(make_proxy: MakeProxy) -> None:
    """A backend answering with Content-Encoding: gzip: the client gets the JSON, with no stale headers."""
    tags = orjson.dumps({"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest"}]})
    packed = gzip.compress(tags)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(packed)
        )
        writer.write(head + packed)
        await writer.drain()
        await reader.read()

    async with raw_server(answer) as url, aiohttp.ClientSession(auto_decompress=False) as http:
        proxy = await make_proxy(url)
        async with http.get(f"{proxy.url}/api/tags") as resp:
            assert resp.status == 200
            assert "Content-Encoding" not in resp.headers
            raw = await resp.read()
            assert resp.headers.get("Content-Length") in (None, str(len(raw)))
    assert orjson.loads(raw) == orjson.loads(tags)
    [row] = await proxy.wait_rows(1)
    assert orjson.loads(row["response_body"]) == orjson.loads(tags)


async def test_settings_reach_the_session() -> None:
    """backend.timeout bounds each read, backend.connect_timeout the connect; the pool has a size."""
    async with session(read=300, connect_timeout=7, max_connections=3) as s:
        assert (s.timeout.total, s.timeout.sock_read, s.timeout.sock_connect) == (None, 300, 7)
        assert isinstance(s.connector, aiohttp.TCPConnector) and s.connector.limit_per_host == 3
        assert isinstance(s.cookie_jar, aiohttp.DummyCookieJar)


def test_urls_resolve_no_dot_segment_and_quote_what_a_path_cannot_carry() -> None:
    """yarl would turn /v1/models/../../api/delete into /api/delete; the transport's URLs do not."""
    assert transport.url("http://h:1", "/v1/models/../../api/delete").raw_path == (
        "/v1/models/../../api/delete"
    )
    assert transport.url("http://h:1/base", "/api/blobs/sha256:ab").raw_path == "/base/api/blobs/sha256:ab"
    assert transport.url("http://h:1", "/v1/models/my model%").raw_path == "/v1/models/my%20model%25"
