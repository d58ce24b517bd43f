"""The backend-hop HTTP client: framing, keep-alive, failures and slow readers.

Real servers on 127.0.0.1 throughout: aiohttp for ordinary answers, and a raw
asyncio server where exact bytes (or a connection closed at a chosen moment)
are the point.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from llm_proxy.backends import http
from llm_proxy.backends.wire import Client, WireError, WireTimeout
from llm_proxy.config import BackendConfig
from llm_proxy.errors import BackendError, BackendTimeout, BackendUnavailable

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


def client(limit: float = 5.0) -> Client:
    return Client(limit=limit, headers=None, agent="llm-proxy-test")


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


@pytest.mark.parametrize("split", range(1, len(CHUNKED)))
async def test_chunked_answer_split_anywhere(split: int) -> None:
    """Wherever TCP cuts the answer, the body comes out whole and the trailer is skipped."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(CHUNKED[:split])
        await writer.drain()
        await asyncio.sleep(0.002)  # the two pieces arrive as two reads
        writer.write(CHUNKED[split:])
        await writer.drain()
        await reader.read()  # keep the connection open: the framing alone ends the body

    c = client()
    async with raw_server(answer) as url:
        resp = await c.request("GET", f"{url}/api/chat")
        assert resp.status == 200 and resp.headers.get("Content-Type") == "application/x-ndjson"
        assert await resp.read() == BODY
    await c.close()


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
    c = client()
    try:
        for i in range(5):
            body = b'{"n":%d}' % i
            resp = await c.request("POST", str(server.make_url("/echo")), data=body)
            assert (resp.status, await resp.read()) == (200, body)
        resp = await c.request("GET", str(server.make_url("/echo")))
        assert await resp.read() == b"empty"
    finally:
        await c.close()
        await server.close()
    assert len(peers) == 1


async def test_connection_closed_as_the_request_goes_out_is_retried() -> None:
    """llama-server drops idle keep-alive connections: a request that meets a closed one is resent."""
    answered: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        answered.append(request.rsplit(b"\r\n\r\n", 1)[1])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_request(reader)  # the second request on this connection: closed unanswered

    c = client()
    async with raw_server(answer) as url:
        for i in range(3):
            resp = await c.request("POST", f"{url}/v1/chat/completions", data=b'{"n":%d}' % i)
            assert await resp.read() == b"ok"
    await c.close()
    assert answered == [b'{"n":0}', b'{"n":1}', b'{"n":2}']


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

    c = client()
    async with raw_server(answer) as url:
        resp = await c.request("GET", f"{url}/")
        assert await resp.read() == b"until the end"
        head = await c.request("HEAD", f"{url}/api/blobs/sha256:00")
        assert (head.status, await head.read()) == (200, b"")
        after = await c.request("GET", f"{url}/")
        assert (after.status, await after.read()) == (204, b"")
    await c.close()


async def test_slow_reader_gets_every_byte() -> None:
    """A 4 MB answer read slowly (the socket is paused meanwhile) arrives intact."""
    payload = bytes(range(256)) * 16384

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=payload)

    app = web.Application()
    app.router.add_get("/big", big)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    c = client()
    try:
        resp = await c.request("GET", str(server.make_url("/big")))
        parts = []
        async for data in resp.iter_any():
            parts.append(data)
            await asyncio.sleep(0.001)
        assert b"".join(parts) == payload
        again = await c.request("GET", str(server.make_url("/big")))  # the connection was handed back
        assert len(await again.read()) == len(payload)
    finally:
        await c.close()
        await server.close()


async def test_failures_become_proxy_errors() -> None:
    """Unreachable is 502, silence is 504, an answer cut short is a 502 naming the backend."""
    config = BackendConfig(timeout=0.3)
    c = http.new_client(config)

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

    async with raw_server(stall) as url:
        with pytest.raises(BackendTimeout, match="did not answer in time"):
            await http.send(c, "GET", f"{url}/silent", backend=url)
        resp = await http.send(c, "GET", f"{url}/slow-body", backend=url)
        with pytest.raises(BackendTimeout, match="stopped answering mid-stream"):
            async for _ in http.iter_chunks(resp, url):
                pass
        resp = await http.send(c, "GET", f"{url}/cut", backend=url)
        with pytest.raises(BackendError, match="broke off its answer") as caught:
            await http.read_body(resp, url)
        assert caught.value.status == 502
    port = url.rsplit(":", 1)[1]
    with pytest.raises(BackendUnavailable, match="unreachable") as refused:
        await http.send(c, "GET", f"http://127.0.0.1:{port}/", backend="llama")
    assert refused.value.status == 502
    await c.close()
    with pytest.raises(WireError, match="closed"):
        await c.request("GET", f"http://127.0.0.1:{port}/")


async def test_bad_answers_are_refused() -> None:
    """Garbage where a status line belongs is an error, not a hang."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    c = client(limit=2)
    async with raw_server(garbage) as url:
        with pytest.raises(WireError, match="bad status line") as caught:
            await c.request("GET", f"{url}/")
        assert not isinstance(caught.value, WireTimeout)
    await c.close()


async def test_read_resumes_a_socket_paused_before_it_was_called() -> None:
    """A large answer that filled the buffer before read() began is read whole, not timed out."""
    payload = b'{"embeddings":[' + b",".join(b"[0.125]" for _ in range(150_000)) + b"]}"

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=payload, content_type="application/json")

    app = web.Application()
    app.router.add_get("/big", big)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    c = client(limit=2)
    try:
        for _ in range(3):
            resp = await c.request("GET", str(server.make_url("/big")))
            await asyncio.sleep(0.2)  # the answer arrives (and the socket pauses) meanwhile
            assert await asyncio.wait_for(resp.read(), 1.5) == payload
    finally:
        await c.close()
        await server.close()


async def test_a_cancelled_caller_never_cuts_a_connection_another_request_took() -> None:
    """Cancelled after its answer was complete: the connection, back in the pool, is left alone."""
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append((await read_request(reader)).split(b" ", 2)[1])
            await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    c = client()
    async with raw_server(answer) as url:
        first = asyncio.create_task(c.request("GET", f"{url}/a"))
        await asyncio.sleep(0.01)
        [origin] = c._origins.values()
        for _ in range(100_000):  # until the answer to /a is complete and its connection pooled
            if origin.idle:
                break
            await asyncio.sleep(0)
        first.cancel()  # before the first caller ran again
        resp = await c.request("POST", f"{url}/b", data=b"{}")  # takes that connection
        assert await resp.read() == b"ok"
        with pytest.raises(asyncio.CancelledError):
            await first
    await c.close()
    assert seen == [b"/a", b"/b"]  # /b was sent once


async def test_a_target_is_never_sent_with_raw_line_breaks_or_non_latin_1() -> None:
    """Whatever reaches the client as a URL, the request line stays one line."""
    received: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            received.append(await read_request(reader))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    c = client()
    async with raw_server(answer) as url:
        for target in ("/api/tags?a= HTTP/1.1\r\nX-Injected: yes\r\n\r\nDELETE /x", "/api/tags?a=€"):
            resp = await c.request("GET", url + target)
            assert await resp.read() == b"ok"
    await c.close()
    assert [r.split(b"\r\n", 1)[0] for r in received] == [
        b"GET /api/tags?a=%20HTTP/1.1%0D%0AX-Injected:%20yes%0D%0A%0D%0ADELETE%20/x HTTP/1.1",
        b"GET /api/tags?a=%E2%82%AC HTTP/1.1",
    ]
    assert not any(b"X-Injected: yes" in r for r in received)


@pytest.mark.parametrize("framing", [b"Content-Length: -1\r\n", b"Transfer-Encoding: chunked\r\n"])
async def test_bad_lengths_are_refused(framing: bytes) -> None:
    """A negative length, or a chunk size int() would take ("-1", "0x10"), is an error."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        body = b"0x10\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n" if b"chunked" in framing else b""
        writer.write(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n" + body)
        await writer.drain()
        await asyncio.sleep(1)

    c = client(limit=2)
    async with raw_server(answer) as url:
        with pytest.raises(WireError, match="bad"):
            resp = await c.request("GET", f"{url}/")
            await resp.read()
    await c.close()
