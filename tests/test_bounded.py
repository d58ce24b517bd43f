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


# -- whole answers: relayed piece by piece when passed on unchanged --------------

BIG = 5 * 1024 * 1024


def big_answer() -> bytes:
    """A non-stream Ollama chat answer of about 5 MiB."""
    text = "All work and no play. " * (BIG // 22)
    return orjson.dumps({"model": "m", "message": {"role": "assistant", "content": text}, "done": True})


async def test_a_large_whole_answer_is_relayed_unchanged_and_its_copy_capped(
    make_proxy: MakeProxy, aiohttp_server: Any
) -> None:
    answer = big_answer()

    async def chat(request: web.Request) -> web.StreamResponse:
        return await streamed(request, "application/json; charset=utf-8", [answer[:1000], answer[1000:]])

    url = await serve(aiohttp_server, {"/api/chat": chat, "/v1/embeddings": chat})
    proxy = await make_proxy(url, database={"max_body_kb": 64})
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{proxy.url}/api/chat", json={**CHAT, "stream": False}) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "application/json; charset=utf-8"
            assert await resp.read() == answer
        async with http.post(f"{proxy.url}/v1/embeddings", json={"model": "m", "input": "x"}) as resp:
            assert resp.status == 200 and await resp.read() == answer
    rows = await proxy.wait_rows(2)
    for row in rows:
        assert row["status_code"] == 200 and row["error"] is None
        assert row["response_body"] == answer[: 64 * 1024].decode()  # the stored copy: its first 64 KiB


async def test_a_whole_answer_breaking_off_midway_is_not_passed_off_as_complete(
    make_proxy: MakeProxy, aiohttp_server: Any
) -> None:
    answer = big_answer()

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(answer)
        await response.prepare(request)
        await response.write(answer[: len(answer) // 2])
        assert request.transport is not None
        request.transport.close()  # half the answer, then the backend is gone
        return response

    url = await serve(aiohttp_server, {"/api/chat": chat})
    proxy = await make_proxy(url, database={"max_body_kb": 64})
    body = {**CHAT, "stream": False}
    async with aiohttp.ClientSession() as http, http.post(f"{proxy.url}/api/chat", json=body) as resp:
        assert resp.status == 200  # sent before the break
        try:
            got = await resp.read()
        except aiohttp.ClientPayloadError:
            got = None
    assert got is None  # the client learns the answer is incomplete
    [row] = await proxy.wait_rows(1)
    assert row["status_code"] == 502 and "broke off its answer" in row["error"]


async def test_an_answer_held_to_be_changed_is_bounded_by_max_answer_mb(
    make_proxy: MakeProxy, aiohttp_server: Any
) -> None:
    answer = big_answer()

    async def chat(request: web.Request) -> web.StreamResponse:
        return await streamed(request, "application/json", [answer])

    url = await serve(aiohttp_server, {"/api/chat": chat})
    # A mapped model name must be shown in the answer: the proxy holds it whole to change it.
    proxy = await make_proxy(url, backend={"max_answer_mb": 1}, models={"mappings": {"alias": "m"}})
    async with aiohttp.ClientSession() as http:
        body = {**CHAT, "model": "alias", "stream": False}
        async with http.post(f"{proxy.url}/api/chat", json=body) as resp:
            assert resp.status == 502
            assert (await resp.json())["error"] == "backend answer larger than 1 MiB (backend.max_answer_mb)"
    [row] = await proxy.wait_rows(1)
    assert row["status_code"] == 502 and "(backend.max_answer_mb)" in row["error"]


async def test_a_stream_false_fold_is_bounded_by_max_answer_mb(
    make_proxy: MakeProxy, aiohttp_server: Any
) -> None:
    delta = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"y" * 1000 + b'"}}]}\n\n'

    async def chat(request: web.Request) -> web.StreamResponse:
        return await streamed(request, "text/event-stream", [delta] * 2000 + [b"data: [DONE]\n\n"])

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "m"}]})

    url = await serve(aiohttp_server, {"/v1/chat/completions": chat, "/v1/models": models})
    proxy = await make_proxy(url, backend_type="openai", backend={"max_answer_mb": 1})
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{proxy.url}/api/chat", json={**CHAT, "stream": False}) as resp:
            assert resp.status == 502
            assert "(backend.max_answer_mb)" in (await resp.json())["error"]
        async with http.post(f"{proxy.url}/api/chat", json={**CHAT, "stream": True}) as resp:
            lines = [orjson.loads(line) async for line in resp.content]  # streamed: no such bound
    assert "".join(line["message"]["content"] for line in lines) == "y" * 2_000_000
    assert lines[-1]["done"] is True


async def test_a_long_stream_keeps_only_max_body_kb_of_its_text(
    make_proxy: MakeProxy, aiohttp_server: Any
) -> None:
    piece = b'{"model":"m","message":{"role":"assistant","content":"' + b"z" * 1000 + b'"},"done":false}\n'
    last = b'{"model":"m","message":{"role":"assistant","content":""},"done":true,"eval_count":3000}\n'

    async def chat(request: web.Request) -> web.StreamResponse:
        return await streamed(request, "application/x-ndjson", [piece] * 3000 + [last])

    url = await serve(aiohttp_server, {"/api/chat": chat})
    proxy = await make_proxy(url, database={"max_body_kb": 16})
    async with aiohttp.ClientSession() as http, http.post(f"{proxy.url}/api/chat", json=CHAT) as resp:
        lines = [orjson.loads(line) async for line in resp.content]
    assert sum(len(line["message"]["content"]) for line in lines) == 3_000_000  # the client got it all
    [row] = await proxy.wait_rows(1)
    assert row["response"] == "z" * 16 * 1024  # the record kept its first 16 KiB
    assert (row["status_code"], row["completion_tokens"]) == (200, 3000)
