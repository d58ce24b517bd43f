"""A test double of llama.cpp's llama-server that replays frames recorded from the real binary.

The bodies in ``tests/fixtures/llama-server/`` were recorded byte for byte from
a real llama-server (see the README there). The double sends them back in small
odd-sized pieces, so frame boundaries fall anywhere, and adds what no real
server produces on demand: a mid-stream error frame, EOF without ``[DONE]``,
reasoning deltas, a model still loading, a stream held open.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

FIXTURES = Path(__file__).parent / "fixtures" / "llama-server"
PIECE = 7  # bytes per write: frames and UTF-8 characters get split


def fixture(name: str) -> bytes:
    """A recorded response body."""
    return (FIXTURES / f"{name}.body").read_bytes()


def sse_events(name: str) -> list[dict[str, Any]]:
    """The JSON events of a recorded SSE body, in order."""
    out = []
    for frame in fixture(name).split(b"\n\n"):
        if frame.startswith(b"data: {"):
            out.append(orjson.loads(frame[len(b"data: ") :]))
    return out


def frames(*events: dict[str, Any], done: bool = True) -> bytes:
    """SSE bytes for ``events`` in llama-server's framing."""
    body = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
    return body + (b"data: [DONE]\n\n" if done else b"")


def reasoning_stream() -> bytes:
    """A thinking model's stream: reasoning_content deltas, then content (the real wire shape)."""
    base = {
        "created": 1795319481,
        "id": "chatcmpl-think",
        "model": "smollm2",
        "object": "chat.completion.chunk",
    }

    def delta(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"choices": [{"finish_reason": finish, "index": 0, "delta": d}], **base}

    return frames(
        delta({"role": "assistant", "content": None}),
        delta({"reasoning_content": "The user"}),
        delta({"reasoning_content": " greets me."}),
        delta({"content": "Hello"}),
        delta({"content": "!"}),
        delta({}, "stop"),
        {"choices": [], **base, "usage": {"completion_tokens": 4, "prompt_tokens": 9, "total_tokens": 13},
         "timings": {"prompt_n": 9, "prompt_ms": 12.5, "predicted_n": 4, "predicted_ms": 40.25}},
    )  # fmt: skip


@dataclass
class LlamaServerDouble:
    """Handlers plus knobs; ``requests`` keeps every (path, body) received."""

    requests: list[tuple[str, Any]] = field(default_factory=list)
    # Replaces the next chat/completions answer: a fixture name, or one of
    # "mid-stream-error", "eof", "reasoning", "loading".
    scenario: str | None = None
    # When set, a stream sends its first frames, then waits for this event.
    hold: asyncio.Event | None = None
    # Seconds a stream waits after each frame: a model generating token by token.
    pace: float = 0.0
    loading: bool = False
    # Streams sent to the end (their last frame written).
    streams_finished: int = 0
    # SSE bodies the next chat requests stream, first one first (before ``scenario``).
    queued: list[bytes] = field(default_factory=list)
    # The W3C traceparent header of each request received (None when it had none).
    traceparents: list[str | None] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=128 * 1024 * 1024)  # no 1 MB cap, like the real server
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/props", self.props)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        return app

    def _loading(self) -> web.Response | None:
        if self.loading:
            return _replay_json("health-loading", 503)
        return None

    async def health(self, request: web.Request) -> web.Response:
        return self._loading() or _replay_json("health", 200)

    async def models(self, request: web.Request) -> web.Response:
        return self._loading() or _replay_json("models", 200)

    async def props(self, request: web.Request) -> web.Response:
        return self._loading() or _replay_json("props", 200)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.requests.append((request.path, body))
        self.traceparents.append(request.headers.get("traceparent"))
        if loading := self._loading():
            return loading
        if self.queued:
            return await self._stream(request, self.queued.pop(0))
        scenario, self.scenario = self.scenario, None
        if scenario and scenario.startswith("error-"):
            meta = orjson.loads((FIXTURES / f"{scenario}.meta.json").read_bytes())
            return _replay_json(scenario, meta["status"])
        if body.get("stream") is not True and not scenario:
            # Non-streamed (only /v1/* clients ask for it): the recorded whole answers.
            return _replay_json("chat-tools" if body.get("tools") else "chat", 200)
        if scenario == "mid-stream-error":
            events = sse_events("chat-stream")[:3]
            error = {
                "error": {
                    "code": 500,
                    "message": "llama_decode failed: out of memory",
                    "type": "server_error",
                }
            }
            return await self._stream(request, frames(*events, done=False) + frames(error, done=False))
        if scenario == "eof":
            return await self._stream(request, frames(*sse_events("chat-stream")[:4], done=False))
        if scenario == "reasoning":
            return await self._stream(request, reasoning_stream())
        if scenario:
            return await self._stream(request, fixture(scenario))
        messages = body.get("messages") or []
        if body.get("tools") and messages and messages[-1].get("role") != "tool":
            return await self._stream(request, fixture("chat-tools-stream"))
        if messages and messages[-1].get("role") == "tool":
            return await self._stream(request, fixture("chat-tool-result"))
        return await self._stream(request, fixture("chat-stream"))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, orjson.loads(await request.read())))
        self.traceparents.append(request.headers.get("traceparent"))
        return await self._stream(request, fixture("completions-stream"))

    async def embeddings(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.requests.append((request.path, body))
        scenario, self.scenario = self.scenario, None
        if scenario == "error-embeddings-disabled":
            return _replay_json(scenario, 501)
        recorded = orjson.loads(fixture("embeddings"))
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{**recorded["data"][i % len(recorded["data"])], "index": i} for i in range(len(inputs))]
        return web.json_response({**recorded, "data": data})

    async def _stream(self, request: web.Request, body: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        first_frame_end = body.find(b"\n\n", body.find(b"\n\n") + 2) + 2  # after two frames
        for start in range(0, len(body), PIECE):
            await response.write(body[start : start + PIECE])
            if self.hold is not None and start < first_frame_end <= start + PIECE:
                await self.hold.wait()
            if self.pace and b"\n\n" in body[start : start + PIECE + 1]:
                await asyncio.sleep(self.pace)
        self.streams_finished += 1
        await response.write_eof()
        return response


def _replay_json(name: str, status: int) -> web.Response:
    return web.Response(body=fixture(name), status=status, content_type="application/json")
