"""HTTP/1.1 as bytes on a socket: what a client that no library checks can send."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Answer:
    """What came back: the status line's code, the headers (names lower-cased) and the body."""

    status: int
    headers: dict[str, str]
    body: bytes


def address(url: str) -> tuple[str, int]:
    """Host and port of ``http://host:port``."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


async def send(url: str, data: bytes, within: float = 10.0) -> Answer:
    """Send ``data`` as it is on a new connection and read until the server closes it."""
    host, port = address(url)
    async with asyncio.timeout(within):  # bounded: the server closes, or the test fails
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(data)
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
    return parse(raw)


def parse(raw: bytes) -> Answer:
    """One HTTP response (no chunked bodies: the proxy's refusals and small answers)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), headers, body)


def request(method: str, target: bytes, headers: dict[bytes, bytes], body: bytes = b"") -> bytes:
    """A request with ``Connection: close``; header names and values go out byte for byte."""
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers.items()]
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
