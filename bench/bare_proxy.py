"""The floor: a bare Ollama pass-through proxy, for bench/floor.py to compare against.

aiohttp server, llm-proxy's backend session (aiohttp's ClientSession, tuned the
same way by llm_proxy.backends.transport), and the request and answer bodies
written to SQLite in batches by one aiosqlite connection. No validation, no
model mapping, no metrics, no log lines, no audit columns beyond the two bodies.

Run: python bench/bare_proxy.py PORT BACKEND_URL DB_PATH
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiosqlite
import uvloop
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from aiohttp import ClientSession
from yarl import URL

from llm_proxy.backends import transport
from llm_proxy.config import BackendConfig

ROWS: web.AppKey[list[tuple[bytes, bytes]]] = web.AppKey("rows")
SESSION: web.AppKey[ClientSession] = web.AppKey("session")


async def chat(request: web.Request) -> web.Response:
    body = await request.read()
    target = URL(f"{sys.argv[2]}/api/chat", encoded=True)
    headers = {"Content-Type": "application/json"}
    async with request.app[SESSION].post(target, data=body, headers=headers) as answer:
        data = await answer.read()
    request.app[ROWS].append((body, data))
    return web.Response(body=data, status=answer.status, content_type="application/json")


async def writer(app: web.Application) -> None:
    async with aiosqlite.connect(sys.argv[3]) as db:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("CREATE TABLE IF NOT EXISTS logs (id INTEGER PRIMARY KEY, request, response)")
        while True:
            await asyncio.sleep(0.01)
            rows, app[ROWS] = app[ROWS], []
            if rows:
                await db.executemany("INSERT INTO logs (request, response) VALUES (?, ?)", rows)
                await db.commit()


async def lifetime(app: web.Application):  # type: ignore[no-untyped-def]
    app[ROWS] = []
    app[SESSION] = transport.new_session(BackendConfig(endpoint=sys.argv[2]))
    task = asyncio.create_task(writer(app))
    yield
    task.cancel()
    await app[SESSION].close()


def main() -> None:
    app = web.Application()
    app.router.add_post("/api/chat", chat)
    app.cleanup_ctx.append(lifetime)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
