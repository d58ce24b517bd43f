"""A fast fake LLM backend for benchmarks: llama-server-style SSE or Ollama-style NDJSON.

Fixed small answers, a configurable number of chunks and delay between them.
Run: python bench/fake_backend.py --kind sse|ndjson --port PORT [--chunks N] [--delay S]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
from aiohttp import web

MODEL = "bench"


def sse_frames(chunks: int) -> list[bytes]:
    """The frames a llama-server stream of ``chunks`` tokens is made of."""
    base = {"created": 1795319481, "id": "chatcmpl-bench", "model": MODEL, "object": "chat.completion.chunk"}
    out = [
        {
            "choices": [{"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}],
            **base,
        }
    ]
    out += [
        {"choices": [{"finish_reason": None, "index": 0, "delta": {"content": f" tok{i}"}}], **base}
        for i in range(chunks)
    ]
    out.append({"choices": [{"finish_reason": "stop", "index": 0, "delta": {}}], **base})
    out.append(
        {
            "choices": [],
            **base,
            "usage": {"completion_tokens": chunks, "prompt_tokens": 10, "total_tokens": chunks + 10},
            "timings": {"prompt_n": 10, "prompt_ms": 1.0, "predicted_n": chunks, "predicted_ms": 2.0},
        }
    )
    return [b"data: " + orjson.dumps(e) + b"\n\n" for e in out] + [b"data: [DONE]\n\n"]


def ndjson_lines(chunks: int) -> list[bytes]:
    """The lines an Ollama chat stream of ``chunks`` tokens is made of."""
    stamp = "2026-11-22T04:05:06.123456789Z"
    out = [
        {
            "model": MODEL,
            "created_at": stamp,
            "message": {"role": "assistant", "content": f" tok{i}"},
            "done": False,
        }
        for i in range(chunks)
    ]
    out.append(
        {
            "model": MODEL,
            "created_at": stamp,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "total_duration": 1000,
            "load_duration": 0,
            "prompt_eval_count": 10,
            "prompt_eval_duration": 100,
            "eval_count": chunks,
            "eval_duration": 200,
        }
    )
    return [orjson.dumps(e) + b"\n" for e in out]


def make_app(kind: str, chunks: int, delay: float) -> web.Application:
    """The fake backend's routes."""
    made: dict[int, list[bytes]] = {}

    def frames_for(body: dict[str, object]) -> tuple[int, list[bytes]]:
        # The answer's length follows the request, as a real server's does:
        # max_tokens (OpenAI style) or options.num_predict (Ollama style).
        options = body.get("options")
        wanted = body.get("max_tokens") or (options.get("num_predict") if isinstance(options, dict) else None)
        count = wanted if isinstance(wanted, int) and wanted > 0 else chunks
        if count not in made:
            made[count] = sse_frames(count) if kind == "sse" else ndjson_lines(count)
        return count, made[count]

    async def stream(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        count, frames = frames_for(body)
        if kind == "ndjson" and body.get("stream") is False:
            answer = orjson.loads(frames[-1])
            answer["message"] = {"role": "assistant", "content": "".join(f" tok{i}" for i in range(count))}
            return web.Response(body=orjson.dumps(answer), content_type="application/json")
        ctype = "text/event-stream" if kind == "sse" else "application/x-ndjson"
        resp = web.StreamResponse(headers={"Content-Type": ctype})
        await resp.prepare(request)
        for frame in frames:
            await resp.write(frame)
            if delay:
                await asyncio.sleep(delay)
        await resp.write_eof()
        return resp

    async def models(request: web.Request) -> web.Response:
        data = {
            "object": "list",
            "data": [
                {
                    "id": MODEL,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "llamacpp",
                    "meta": {"size": 1000, "n_params": 1000},
                }
            ],
        }
        return web.json_response(data)

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": "0.12.6"})

    app = web.Application()
    if kind == "sse":
        app.router.add_post("/v1/chat/completions", stream)
        app.router.add_get("/v1/models", models)
        app.router.add_get("/health", ok)
    else:
        app.router.add_post("/api/chat", stream)
        app.router.add_get("/api/version", ok)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=("sse", "ndjson"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    web.run_app(
        make_app(args.kind, args.chunks, args.delay),
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
    )


if __name__ == "__main__":
    main()
