"""Memory follows configuration, not the backend: every limit as a user meets it.

A small aiohttp backend on 127.0.0.1 answers in Ollama's or llama-server's
wire format with whatever size the test asks for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from .conftest import MakeProxy

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve(aiohttp_server: Any, routes: dict[str, Handler]) -> str:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    server = await aiohttp_server(app, host="127.0.0.1")
    return str(server.make_url("")).rstrip("/")


async def streamed(request: web.Request, content_type: str, pieces: list[bytes]) -> web.StreamResponse:
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": content_type})
    await response.prepare(request)
    for piece in pieces:
        await response.write(piece)
    await response.write_eof()
    return response


async def test_an_ndjson_line_over_max_answer_mb_ends_the_stream_with_an_error_line(
    make_proxy: MakeProxy, aiohttp_server: Any
) -> None:
    first = b'{"model":"m","message":{"role":"assistant","content":"Hi"},"done":false}\n'
    endless = [b'{"model":"m","message":{"content":"' + b"x" * 4096 for _ in range(64)]  # never ends

    async def chat(request: web.Request) -> web.StreamResponse:
        return await streamed(request, "application/x-ndjson", [first, *endless])

    url = await serve(aiohttp_server, {"/api/chat": chat})
    proxy = await make_proxy(url, backend={"max_answer_mb": 0.1})
    async with aiohttp.ClientSession() as http, http.post(f"{proxy.url}/api/chat", json=CHAT) as resp:
        assert resp.status == 200
        lines = [orjson.loads(line) async for line in resp.content]
    assert lines[0]["message"]["content"] == "Hi"
    assert lines[-1] == {"error": "backend sent an NDJSON line larger than 0.1 MiB (backend.max_answer_mb)"}
    [row] = await proxy.wait_rows(1)
    assert (row["status_code"], row["response"]) == (502, "Hi")
    assert "(backend.max_answer_mb)" in row["error"]


async def test_an_sse_frame_over_max_answer_mb_ends_the_stream_with_an_error_frame(
    make_proxy: MakeProxy, aiohttp_server: Any
) -> None:
    first = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    endless = [b'data: {"choices":[{"delta":{"content":"' + b"x" * 4096 for _ in range(64)]

    async def chat(request: web.Request) -> web.StreamResponse:
        return await streamed(request, "text/event-stream", [first, *endless])

    url = await serve(aiohttp_server, {"/v1/chat/completions": chat})
    proxy = await make_proxy(url, backend={"max_answer_mb": 0.1})
    body = {**CHAT, "stream": True}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{proxy.url}/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status == 200
        frames = (await resp.read()).split(b"\n\n")
    assert frames[0] == first.rstrip(b"\n")
    error = orjson.loads(frames[1].removeprefix(b"data: "))["error"]
    assert error["message"] == "backend sent an SSE frame larger than 0.1 MiB (backend.max_answer_mb)"
    assert error["code"] == 502
    [row] = await proxy.wait_rows(1)
    assert (row["status_code"], row["response"]) == (502, "Hi")
