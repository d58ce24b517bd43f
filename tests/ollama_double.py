"""A test double of Ollama that answers in Ollama's real wire format.

It replays what a real Ollama 0.x sends (NDJSON streams with ``created_at`` in
RFC3339 nanoseconds, integer durations, ``{"error": ...}`` bodies), records the
requests it received, and can hold a stream open until a test releases it.

Its ``/v1/*`` routes answer as Ollama's OpenAI compatibility layer does
(ollama/ollama ``openai/openai.go`` and ``middleware/openai.go``): SSE frames
``data: {...}\n\n`` ending in ``data: [DONE]\n\n``, the usage chunk with
``choices: []`` when ``stream_options.include_usage`` is set (the completions
stream also puts zero usage on every chunk), a whole tool call per chunk,
thinking as ``delta.reasoning``, and errors as ``{"error": {"message", "type",
"param": null, "code": null}}``.
"""

from __future__ import annotations

import asyncio
import hashlib
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
    # When set, a whole (stream: false) chat or generate answer waits for this event.
    hold_whole: asyncio.Event | None = None
    # When set, a stream sends its first chunk and then drops the connection.
    die_mid_stream: bool = False
    chunk_delay: float = 0.0
    blobs: dict[str, bytes] = field(default_factory=dict)
    # When set, /v1/chat/completions thinks first (``delta.reasoning``).
    think: bool = False
    # The Authorization header of every request with a body (None when absent).
    authorizations: list[str | None] = field(default_factory=list)
    # prompt_eval_count and eval_count of chat and generate answers.
    counts: tuple[int, int] = (26, len(ANSWER))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=128 * 1024 * 1024)  # no 1 MB cap, like the real Ollama
        app.router.add_get("/", self.root)
        app.router.add_get("/api/version", self.version)
        app.router.add_get("/api/status", self.status)
        app.router.add_get("/api/tags", self.tags)
        app.router.add_get("/api/ps", self.ps)
        app.router.add_post("/api/show", self.show)
        app.router.add_post("/api/chat", self.chat)
        app.router.add_post("/api/generate", self.generate)
        app.router.add_post("/api/embed", self.embed)
        app.router.add_post("/api/embeddings", self.embeddings)
        app.router.add_post("/api/pull", self.pull)
        app.router.add_delete("/api/delete", self.delete)
        app.router.add_post("/api/copy", self.copy)
        app.router.add_post("/api/create", self.progress)
        app.router.add_post("/api/push", self.progress)
        app.router.add_route("HEAD", "/api/blobs/{digest}", self.blob_exists)
        app.router.add_post("/api/blobs/{digest}", self.blob_upload)
        app.router.add_post("/v1/chat/completions", self.v1_chat)
        app.router.add_post("/v1/completions", self.v1_completions)
        app.router.add_post("/v1/embeddings", self.v1_embeddings)
        app.router.add_get("/v1/models", self.v1_models)
        app.router.add_get("/v1/models/{model}", self.v1_model)
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

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response({"cloud": {"disabled": False, "source": "default"}})

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
            "total_duration": 1_234_567, "load_duration": 1000, "prompt_eval_count": self.counts[0],
            "prompt_eval_duration": 200_000, "eval_count": self.counts[1], "eval_duration": 900_000,
        }  # fmt: skip
        if body.get("stream", True) is False:
            if self.hold_whole is not None:
                await self.hold_whole.wait()
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

    async def delete(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if not _known(_model(body)):
            return self._missing(_model(body))
        return web.Response(status=200)

    async def copy(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if not _known(body["source"]):
            return self._missing(body["source"])
        return web.Response(status=200)

    async def progress(self, request: web.Request) -> web.StreamResponse:
        """create and push: NDJSON progress lines ending in success, like pull."""
        await self._body(request)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for status in ("reading model metadata", "writing manifest", "success"):
            await response.write(orjson.dumps({"status": status}) + b"\n")
        await response.write_eof()
        return response

    async def blob_exists(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, None))
        return web.Response(status=200 if request.match_info["digest"] in self.blobs else 404)

    async def blob_upload(self, request: web.Request) -> web.Response:
        data = await request.read()
        self.requests.append((request.path, None))
        digest = request.match_info["digest"]
        if digest != "sha256:" + hashlib.sha256(data).hexdigest():
            return web.json_response({"error": "digest mismatch"}, status=400)
        self.blobs[digest] = data
        return web.Response(status=201)

    # -- the OpenAI-compatible layer -------------------------------------------

    async def v1_chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if not _known(body.get("model")):
            return _v1_missing(body.get("model"))
        if not body.get("messages"):
            return _v1_error(400, "[] is too short - 'messages'")
        head = {"id": "chatcmpl-421", "object": "chat.completion.chunk", "created": CREATED_UNIX,
                "model": body["model"], "system_fingerprint": "fp_ollama"}  # fmt: skip
        tool_calls = [_v1_tool_call(body["tools"][0])] if body.get("tools") else []
        finish = "tool_calls" if tool_calls else "stop"
        usage = {"prompt_tokens": 26, "completion_tokens": len(ANSWER), "total_tokens": 26 + len(ANSWER)}
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": "".join(ANSWER)}
            if self.think:
                message["reasoning"] = "".join(THOUGHT)
            if tool_calls:
                message["tool_calls"] = tool_calls
            choice = {"index": 0, "message": message, "finish_reason": finish}
            return _v1_json({**head, "object": "chat.completion", "choices": [choice], "usage": usage})

        def chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": {"role": "assistant", **delta}, "finish_reason": reason}
            return {**head, "choices": [choice]}

        chunks = [chunk({"content": "", "reasoning": t}) for t in (THOUGHT if self.think else [])]
        chunks += [chunk({"content": t}) for t in ANSWER]
        chunks += [chunk({"content": "", "tool_calls": tool_calls})] if tool_calls else []
        chunks.append(chunk({"content": ""}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**head, "choices": [], "usage": usage})
        return await self._sse(request, chunks)

    async def v1_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if not _known(body.get("model")):
            return _v1_missing(body.get("model"))
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        usage = {"prompt_tokens": 4, "completion_tokens": len(ANSWER), "total_tokens": 4 + len(ANSWER)}

        def chunk(text: str, reason: str | None = None, zero_usage: bool = False) -> dict[str, Any]:
            out = {"id": "cmpl-77", "object": "text_completion", "created": CREATED_UNIX,
                   "choices": [{"text": text, "index": 0, "finish_reason": reason}],
                   "model": body["model"], "system_fingerprint": "fp_ollama"}  # fmt: skip
            if zero_usage:  # Ollama puts empty usage on every chunk when usage is asked for
                out["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            return out

        if not body.get("stream"):
            return _v1_json({**chunk("".join(ANSWER), "stop"), "usage": usage})
        chunks = [chunk(t, zero_usage=with_usage) for t in ANSWER]
        chunks.append(chunk("", "stop", zero_usage=with_usage))
        if with_usage:
            chunks.append({**chunks[-1], "choices": [], "usage": usage})
        return await self._sse(request, chunks)

    async def v1_embeddings(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if not _known(body.get("model")):
            return _v1_missing(body.get("model"))
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "embedding": [0.1, 0.2, 0.3], "index": i} for i in range(len(inputs))]
        return _v1_json({"object": "list", "data": data, "model": body["model"],
                         "usage": {"prompt_tokens": 8, "total_tokens": 8}})  # fmt: skip

    async def v1_models(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, None))
        data = [{"id": n, "object": "model", "created": CREATED_UNIX, "owned_by": "library"} for n in MODELS]
        return _v1_json({"object": "list", "data": data})

    async def v1_model(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, None))
        name = request.match_info["model"]
        if not _known(name):
            return _v1_missing(name)
        return _v1_json({"id": name, "object": "model", "created": CREATED_UNIX, "owned_by": "library"})

    async def _sse(self, request: web.Request, chunks: list[dict[str, Any]]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, chunk in enumerate(chunks):
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            if i == 0 and self.hold is not None:
                await self.hold.wait()
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


CREATED_UNIX = 1795320306
THOUGHT = ["The user", " asks about the sky."]


def _known(model: Any) -> bool:
    """Ollama's lookup: ``x`` means ``x:latest``."""
    return isinstance(model, str) and (model in MODELS or f"{model}:latest" in MODELS)


def _v1_json(obj: dict[str, Any], status: int = 200) -> web.Response:
    # Go's json.Encoder ends the body with a newline.
    return web.Response(
        body=orjson.dumps(obj) + b"\n", status=status, content_type="application/json", charset="utf-8"
    )


def _v1_error(status: int, message: str) -> web.Response:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return _v1_json({"error": {"message": message, "type": kind, "param": None, "code": None}}, status)


def _v1_missing(model: Any) -> web.Response:
    return _v1_error(404, f'model "{model}" not found, try pulling it first')


def _v1_tool_call(tool: dict[str, Any]) -> dict[str, Any]:
    name = tool["function"]["name"]
    return {"id": "call_u1b3kx9f", "index": 0, "type": "function",
            "function": {"name": name, "arguments": '{"name":"kitchen light"}'}}  # fmt: skip


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
