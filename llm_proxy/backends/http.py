"""HTTP plumbing shared by the backends: one client, and transport errors as ProxyErrors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from .. import __version__
from ..config import BackendConfig
from ..errors import BackendError, BackendTimeout, BackendUnavailable
from .wire import Client, Response, WireError, WireTimeout

HEALTH_TIMEOUT = 3.0  # seconds a health probe may wait


def new_client(config: BackendConfig) -> Client:
    """The one client a backend reuses for every request."""
    # `timeout` bounds each wait for the backend (connecting, or the next bytes
    # of an answer) rather than the whole answer: a long generation that keeps
    # streaming must not be cut off at 300 s.
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else None
    return Client(limit=config.timeout, headers=headers, agent=f"llm-proxy/{__version__}")


async def send(
    client: Client,
    method: str,
    url: str,
    *,
    backend: str,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    limits: float | None = None,
) -> Response:
    """Send one request; connection failures become 502, time-outs 504."""
    try:
        return await client.request(method, url, data=data, headers=headers, limit=limits)
    except WireTimeout:
        raise BackendTimeout(f"backend {backend} did not answer in time") from None
    except WireError as exc:
        if exc.connecting:
            raise BackendUnavailable(f"backend {backend} is unreachable: {exc}") from None
        raise BackendUnavailable(f"backend {backend} failed: {exc}") from None


async def read_body(resp: Response, backend: str) -> bytes:
    """The whole response body; failures mid-way become ProxyErrors."""
    try:
        return await resp.read()
    except WireTimeout:
        raise BackendTimeout(f"backend {backend} stopped answering") from None
    except WireError as exc:
        raise BackendError(f"backend {backend} broke off its answer: {exc}") from None


async def iter_chunks(resp: Response, backend: str) -> AsyncIterator[bytes]:
    """The response body as it arrives; failures mid-stream become ProxyErrors."""
    try:
        async for data in resp.iter_any():
            yield data
    except WireTimeout:
        raise BackendTimeout(f"backend {backend} stopped answering mid-stream") from None
    except WireError as exc:
        raise BackendError(f"backend {backend} broke off the stream: {exc}") from None


def describe(config: BackendConfig) -> dict[str, Any]:
    """The backend as shown by /health (never the API key)."""
    if config.type == "llamacpp":  # no one endpoint: a llama-server per model, started on demand
        return {"type": config.type, "models": list(config.models)}
    return {"type": config.type, "endpoint": config.endpoint}
