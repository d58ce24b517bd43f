"""A backend on a raw socket whose answers are written byte for byte by the test.

For what no real backend does on demand: broken chunking, a gzip body, a
kept-alive connection dropped after a request was read, an answer that never
ends, usage numbers no model reports. The request side is parsed just enough
(head, Content-Length body) to record what reached the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class RawRequest:
    """One request as the backend read it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection: int  # which accepted connection it came on, from 1


# The script answers one request; True keeps the connection for the next one.
Script = Callable[[RawRequest, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class RawBackend:
    """A loopback server that hands each request to ``script``."""

    script: Script
    requests: list[RawRequest] = field(default_factory=list)
    connections: int = 0
    url: str = ""
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def seen(self, method: str, path: str) -> int:
        """How many times ``method path`` reached the backend."""
        return sum(1 for r in self.requests if r.method == method and r.path == path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        number = self.connections
        try:
            while True:
                request = await _read_request(reader, number)
                if request is None:
                    break
                self.requests.append(request)
                if not await self.script(request, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _read_request(reader: asyncio.StreamReader, connection: int) -> RawRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return RawRequest(method, path, headers, body, connection)


def head(status: int = 200, content_type: str = "application/json", **extra: str | int) -> bytes:
    """A status line and headers; ``extra`` names use ``_`` for ``-``."""
    lines = [f"HTTP/1.1 {status} X", f"Content-Type: {content_type}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def whole(body: bytes, status: int = 200, content_type: str = "application/json", **extra: str) -> bytes:
    """A complete answer with Content-Length."""
    return head(status, content_type, Content_Length=len(body), **extra) + body


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


@contextlib.asynccontextmanager
async def raw_backend(script: Script) -> AsyncIterator[RawBackend]:
    """A started :class:`RawBackend`, closed at the end."""
    backend = RawBackend(script)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()
