"""HTTP plumbing shared by the backends: one session, and transport errors as ProxyErrors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from ..config import BackendConfig
from ..errors import BackendError, BackendTimeout, BackendUnavailable

HEALTH_TIMEOUT = 3.0  # seconds a health probe may take


def new_session(config: BackendConfig) -> aiohttp.ClientSession:
    """The one client session a backend reuses for every request."""
    # `timeout` bounds each wait for the backend (connecting, or the next bytes
    # of an answer) rather than the whole answer: a long generation that keeps
    # streaming must not be cut off at 300 s.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.timeout, sock_read=config.timeout)
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else None
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
    return aiohttp.ClientSession(
        timeout=timeout,
        headers=headers,
        connector=connector,
    )


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    backend: str,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    limits: aiohttp.ClientTimeout | None = None,
) -> aiohttp.ClientResponse:
    """Send one request; connection failures become 502, time-outs 504."""
    extra: dict[str, Any] = {"timeout": limits} if limits is not None else {}
    try:
        return await session.request(method, url, data=data, headers=headers, **extra)
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise BackendTimeout(f"backend {backend} did not answer in time") from None
    except aiohttp.ClientConnectorError as exc:
        raise BackendUnavailable(f"backend {backend} is unreachable: {_reason(exc)}") from None
    except aiohttp.ClientError as exc:
        raise BackendUnavailable(f"backend {backend} failed: {_reason(exc)}") from None


async def read_body(resp: aiohttp.ClientResponse, backend: str) -> bytes:
    """The whole response body; failures mid-way become ProxyErrors."""
    try:
        return await resp.read()
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise BackendTimeout(f"backend {backend} stopped answering") from None
    except aiohttp.ClientError as exc:
        raise BackendError(f"backend {backend} broke off its answer: {_reason(exc)}") from None


async def iter_chunks(resp: aiohttp.ClientResponse, backend: str) -> AsyncIterator[bytes]:
    """The response body as it arrives; failures mid-stream become ProxyErrors."""
    try:
        async for data in resp.content.iter_any():
            yield data
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise BackendTimeout(f"backend {backend} stopped answering mid-stream") from None
    except aiohttp.ClientError as exc:
        raise BackendError(f"backend {backend} broke off the stream: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.strerror or str(exc.os_error) or type(exc).__name__
    return str(exc) or type(exc).__name__


def health_timeout() -> aiohttp.ClientTimeout:
    """A short timeout for health probes."""
    return aiohttp.ClientTimeout(total=HEALTH_TIMEOUT)


def describe(config: BackendConfig) -> dict[str, Any]:
    """The backend as shown by /health (never the API key)."""
    if config.type == "llamacpp":  # no one endpoint: a llama-server per model, started on demand
        return {"type": config.type, "models": list(config.models)}
    return {"type": config.type, "endpoint": config.endpoint}
