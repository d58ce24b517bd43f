"""Benchmark: proxy memory while it relays a 1 GiB answer, whole and streamed.

Starts, on 127.0.0.1, a fake Ollama (this script with ``--serve``) that makes
its answers up as it sends them, never holding one whole, and a real
``python -m llm_proxy serve`` with the ollama backend in front of it, logging
to its own SQLite file. It then asks the proxy for the same amount of answer
three ways:

- ``/api/chat`` with ``"stream": false``: one JSON object, passed through;
- ``/api/chat`` streamed: NDJSON lines of 4 KiB of content each;
- ``/v1/chat/completions`` streamed: SSE frames of 4 KiB of content each;

and prints, for each, the proxy's peak RSS while relaying (VmRSS from
/proc/PID/status, sampled every 20 ms) minus its RSS when idle, with the
bytes the client got and the rate. The target is at most +64 MiB.

Run: python bench/big_answer.py [--size-mb 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web
from run import wait_up  # bench/ is this script's folder, first on sys.path

ROOT = Path(__file__).resolve().parent.parent
PIECE = 4096  # characters of content per NDJSON line or SSE frame
WHOLE_WRITE = 1 << 20  # bytes per write of the stream:false answer
MIB = 1 << 20


# -- the fake backend -------------------------------------------------------------


def fake_backend(size: int) -> web.Application:
    """Ollama's /api/chat (whole or NDJSON) and /v1/chat/completions (SSE), ``size`` bytes of text."""
    text = b"x" * PIECE
    whole = b"y" * WHOLE_WRITE

    async def chat(request: web.Request) -> web.StreamResponse:
        try:
            return await _chat(request)
        except ConnectionError:  # the warm-up request leaves after its first bytes
            return web.Response()

    async def _chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        stream = body.get("stream", True)
        content_type = "application/x-ndjson" if stream else "application/json"
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        head = b'{"model":"bench","message":{"role":"assistant","content":"'
        if stream:
            line = head + text + b'"},"done":false}\n'
            for _ in range(size // PIECE):
                await response.write(line)
            await response.write(head + b'"},"done":true}\n')
        else:
            await response.write(head)
            for _ in range(size // WHOLE_WRITE):
                await response.write(whole)
            await response.write(b'"},"done":true,"done_reason":"stop"}')
        await response.write_eof()
        return response

    async def v1_chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        frame = b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"'
        frame += text + b'"},"finish_reason":null}]}\n\n'
        for _ in range(size // PIECE):
            await response.write(frame)
        usage = b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n'
        await response.write(usage + b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.6"})

    app = web.Application()
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/v1/chat/completions", v1_chat)
    app.router.add_get("/api/version", version)
    return app


# -- the measurement --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else float("nan")


async def relay(
    http: aiohttp.ClientSession, url: str, body: dict[str, object], pid: int
) -> tuple[int, float, float]:
    """Ask once, read the answer in 64 KiB pieces: bytes got, seconds, peak RSS in MiB."""
    peak = rss_mib(pid)
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mib(pid))
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    got = 0
    async with http.post(url, json=body) as resp:
        assert resp.status == 200, (resp.status, await resp.text())
        async for data in resp.content.iter_chunked(1 << 16):
            got += len(data)
    elapsed = time.perf_counter() - started
    done.set()
    await sampler
    return got, elapsed, peak


CHAT = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}
CASES = [
    ("/api/chat stream:false (whole, passed through)", "/api/chat", {**CHAT, "stream": False}),
    ("/api/chat streamed (NDJSON lines)", "/api/chat", {**CHAT, "stream": True}),
    ("/v1/chat/completions streamed (SSE)", "/v1/chat/completions", {**CHAT, "stream": True}),
]


async def drive(size: int, backend: str, url: str, pid: int) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await wait_up(http, backend, "/api/version")
        await wait_up(http, url, "/health")
        async with http.post(f"{url}/api/chat", json={**CHAT, "stream": False}) as warm:
            assert warm.status == 200  # a first request, so idle RSS includes what one costs
            async for _ in warm.content.iter_chunked(1 << 16):
                break
        await asyncio.sleep(1.0)
        idle = rss_mib(pid)
        print(f"answer size {size / MIB:.0f} MiB of text; proxy idle RSS {idle:.1f} MiB")
        print(f"{'case':50} {'client got':>12} {'seconds':>8} {'MiB/s':>7} {'peak-idle':>10}")
        for name, path, body in CASES:
            got, seconds, peak = await relay(http, url + path, body, pid)
            print(
                f"{name:50} {got / MIB:>8.0f} MiB {seconds:>8.1f} {got / MIB / seconds:>7.0f} "
                f"{peak - idle:>+7.1f} MiB",
                flush=True,
            )


def measure(size: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="llm-proxy-big-"))
    backend_port, proxy_port = free_port(), free_port()
    backend = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(backend_port), "--size-mb", str(size // MIB)]
    )
    config = {
        "server": {"host": "127.0.0.1", "port": proxy_port},
        "backend": {"type": "ollama", "endpoint": f"http://127.0.0.1:{backend_port}"},
        "database": {"path": str(workdir / "big.db")},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    with (workdir / "proxy.log").open("wb") as log:
        proxy = subprocess.Popen(
            [sys.executable, "-m", "llm_proxy", "serve", "--config", str(workdir / "config.yaml")],
            stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    try:
        backend_url, proxy_url = f"http://127.0.0.1:{backend_port}", f"http://127.0.0.1:{proxy_port}"
        asyncio.run(drive(size, backend_url, proxy_url, proxy.pid))
        time.sleep(1.0)  # the writer's last batch
        with sqlite3.connect(workdir / "big.db") as db:
            rows = db.execute(
                "SELECT endpoint, status_code, length(response), length(response_body) FROM logs ORDER BY id"
            ).fetchall()
        print("audit rows (endpoint, status, stored response chars, stored body chars):")
        for row in rows[1:]:
            print("  ", row)
    finally:
        proxy.terminate()
        backend.terminate()
        proxy.wait(30)
        backend.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="MiB of answer text per request")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the fake backend
    args = parser.parse_args()
    size = args.size_mb * MIB
    if args.serve:
        web.run_app(fake_backend(size), host="127.0.0.1", port=args.serve, print=None, access_log=None)
        return
    measure(size)


if __name__ == "__main__":
    main()
