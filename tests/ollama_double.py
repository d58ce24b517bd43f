"""A test double of Ollama that answers in Ollama's real wire format.

It replays what a real Ollama 0.x sends (NDJSON streams with ``created_at`` in
RFC3339 nanoseconds, integer durations, ``{"error": ...}`` bodies), records the
requests it received, and can hold a stream open until a test releases it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

MODELS = {
    "llama3.2:latest": {"family": "llama", "parameter_size": "3.2B", "quantization_level": "Q4_K_M"},
    "nomic-embed-text:latest": {
        "family": "nomic-bert",
        "parameter_size": "137M",
        "quantization_level": "F16",
    },
}
CREATED = "2026-11-22T04:05:06.123456789Z"
ANSWER = ["The", " sky", " is", " blue", "."]


@dataclass
class OllamaDouble:
    """State shared by the double's handlers; tests read ``requests`` and set the knobs."""

    requests: list[tuple[str, dict[str, Any] | None]] = field(default_factory=list)
    # When set, streams send their first chunk, then wait for this event.
    hold: asyncio.Event | None = None
    # When set, a stream sends its first chunk and then drops the connection.
    die_mid_stream: bool = False
    chunk_delay: float = 0.0
    # The Authorization header of every request with a body (None when absent).
    authorizations: list[str | None] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=128 * 1024 * 1024)  # no 1 MB cap, like the real Ollama
        app.router.add_get("/", self.root)
        app.router.add_get("/api/version", self.version)
        app.router.add_get("/api/tags", self.tags)
        app.router.add_get("/api/ps", self.ps)
        app.router.add_post("/api/show", self.show)
        app.router.add_post("/api/chat", self.chat)
        app.router.add_post("/api/generate", self.generate)
        app.router.add_post("/api/embed", self.embed)
        app.router.add_post("/api/embeddings", self.embeddings)
        app.router.add_post("/api/pull", self.pull)
        app.router.add_delete("/api/delete", self.delete)
        app.router.add_post("/api/push", self.pull)  # the same progress lines, as Ollama sends
        app.router.add_post("/api/create", self.pull)
        app.router.add_post("/api/copy", self.copy)
        app.router.add_route("HEAD", "/api/blobs/{digest}", self.blob)
        app.router.add_post("/api/blobs/{digest}", self.blob)
        return app

    async def _body(self, request: web.Request) -> dict[str, Any]:
        body = orjson.loads(await request.read())
        self.requests.append((request.path, body))
        self.authorizations.append(request.headers.get("Authorization"))
        return body

    @staticmethod
    def _missing(model: str) -> web.Response:
        return web.json_response({"error": f"model '{model}' not found"}, status=404)

    async def root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.3"})

    async def tags(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, None))
        return web.json_response({"models": [_entry(name) for name in MODELS]})

    async def ps(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, None))
        entry = {
            **_entry("llama3.2:latest"),
            "size_vram": 0,
            "expires_at": "2026-11-22T05:05:06.1Z",
            "context_length": 4096,
        }
        return web.json_response({"models": [entry]})

    async def show(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        model = _model(body)
        if model not in MODELS and f"{model}:latest" not in MODELS:
            return self._missing(model)
        return web.json_response({
            "modelfile": "FROM llama3.2", "parameters": "", "template": "{{ .Prompt }}",
            "details": _entry("llama3.2:latest")["details"],
            "model_info": {"general.architecture": "llama", "llama.context_length": 131072},
            "capabilities": ["completion", "tools"], "modified_at": CREATED,
        })  # fmt: skip

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        return await self._answer(request, body, lambda t: {"message": {"role": "assistant", "content": t}})

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        return await self._answer(request, body, lambda t: {"response": t})

    async def _answer(self, request: web.Request, body: dict[str, Any], piece: Any) -> web.StreamResponse:
        model = _model(body)
        if model not in MODELS and f"{model}:latest" not in MODELS:
            return self._missing(model)
        final = {
            "model": model, "created_at": CREATED, **piece(""), "done": True, "done_reason": "stop",
            "total_duration": 1_234_567, "load_duration": 1000, "prompt_eval_count": 26,
            "prompt_eval_duration": 200_000, "eval_count": len(ANSWER), "eval_duration": 900_000,
        }  # fmt: skip
        if body.get("stream", True) is False:
            return web.json_response({**final, **piece("".join(ANSWER))})
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for i, token in enumerate(ANSWER):
            chunk = {"model": model, "created_at": CREATED, **piece(token), "done": False}
            await response.write(orjson.dumps(chunk) + b"\n")
            if i == 0 and self.die_mid_stream:
                assert request.transport is not None
                request.transport.close()
                return response
            if i == 0 and self.hold is not None:
                await self.hold.wait()
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        await response.write(orjson.dumps(final) + b"\n")
        await response.write_eof()
        return response

    async def embed(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        given = body.get("input") or []  # Ollama answers a missing input with no embeddings
        inputs = given if isinstance(given, list) else [given]
        return web.json_response({
            "model": _model(body), "embeddings": [[0.1, 0.2, 0.3] for _ in inputs],
            "total_duration": 14_143_917, "load_duration": 1_019_500, "prompt_eval_count": 8,
        })  # fmt: skip

    async def embeddings(self, request: web.Request) -> web.Response:
        await self._body(request)
        return web.json_response({"embedding": [0.5, 0.25, 0.125]})

    async def pull(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        statuses = [
            {"status": "pulling manifest"},
            {"status": "verifying sha256 digest"},
            {"status": "writing manifest"},
            {"status": "success"},
        ]
        if body.get("stream", True) is False:
            return web.json_response({"status": "success"})
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for status in statuses:
            await response.write(orjson.dumps(status) + b"\n")
        await response.write_eof()
        return response

    async def copy(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if body.get("source") not in MODELS and f"{body.get('source')}:latest" not in MODELS:
            return web.json_response({"error": f"model '{body.get('source')}' not found"}, status=404)
        return web.Response(status=200)

    async def blob(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, None))
        if request.method == "HEAD":
            return web.Response(status=404)  # Ollama: no such blob yet
        await request.read()
        return web.Response(status=201)

    async def delete(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if _model(body) not in MODELS:
            return self._missing(_model(body))
        return web.Response(status=200)


def _model(body: dict[str, Any]) -> str:
    """The model a request names: Ollama reads "model", and the older "name" when it is absent."""
    return str(body.get("model") or body.get("name") or "")


def _entry(name: str) -> dict[str, Any]:
    info = MODELS[name]
    return {
        "name": name, "model": name, "modified_at": CREATED, "size": 2019393189,
        "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
        "details": {"parent_model": "", "format": "gguf", "family": info["family"],
                    "families": [info["family"]], "parameter_size": info["parameter_size"],
                    "quantization_level": info["quantization_level"]},
    }  # fmt: skip
