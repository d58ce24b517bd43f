"""Health probes: ``GET /health`` (Ollama clients), ``/health/ready`` and ``/health/live`` (supervisors)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from ..config import BackendConfig
from ..server import state as keys


async def health(request: web.Request) -> web.Response:
    """200 when the backend answers, 503 with the reason when it does not."""
    config, backend = request.app[keys.CONFIG], request.app[keys.BACKEND]
    problem = await backend.health()
    info = {**describe(config.backend), "reachable": problem is None}
    if problem is None:
        return web.json_response({"status": "ok", "backend": info})
    return web.json_response({"status": "unavailable", "error": problem, "backend": info}, status=503)


def setup_routes(app: web.Application) -> None:
    """Register the health route."""
    app.router.add_get("/health", health)


async def ready(request: web.Request) -> web.Response:
    """``GET /health/ready``: 200 when the backend answers and every row is kept (503 otherwise).

    While PostgreSQL is down and rows wait in the spool, 200 with ``"status": "degraded"``.
    """
    app = request.app
    backend, database = await asyncio.gather(app[keys.BACKEND].health(), app[keys.RECORDER].store.writable())
    checks = {"backend": backend, "database": database}
    if app[keys.LIFECYCLE].stopping:
        checks["proxy"] = "shutting down"
    problems = {name: why for name, why in checks.items() if why is not None}
    if not problems:
        # PostgreSQL down, rows kept in the spool: the proxy serves and loses
        # nothing, so it stays in a load balancer's rotation, and says so.
        note = app[keys.RECORDER].store.degraded()
        if note is not None:
            body = {"status": "degraded", "checks": {**{name: "ok" for name in checks}, "database": note}}
            return web.json_response(body)
        return web.json_response({"status": "ready", "checks": {name: "ok" for name in checks}})
    body = {"status": "unavailable", "checks": {name: why or "ok" for name, why in checks.items()}}
    return web.json_response(body, status=503)


async def live(request: web.Request) -> web.Response:
    """``GET /health/live``: 200 while the process serves at all (nothing else is checked)."""
    return web.json_response({"status": "alive"})


def setup_probe_routes(app: web.Application) -> None:
    """Register the supervisors' probes."""
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/health/live", live)


def describe(config: BackendConfig) -> dict[str, Any]:
    """The backend as shown by /health (never the API key)."""
    if config.type == "llamacpp":  # no one endpoint: a llama-server per model, started on demand
        return {"type": config.type, "models": list(config.models)}
    return {"type": config.type, "endpoint": config.endpoint}
