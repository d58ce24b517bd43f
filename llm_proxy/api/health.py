"""Health probes: ``GET /health`` (Ollama clients), ``/health/ready`` and ``/health/live`` (supervisors)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from ..server import state as keys


async def health(request: web.Request) -> web.Response:
    """200 when a backend answers, 503 with the reason when none does; every backend's state."""
    router = request.app[keys.ROUTER]
    states = await router.states()
    first = states[0]
    # "backend": the first (or only) one, as before there were many.
    info = {k: v for k, v in first.items() if k in ("type", "endpoint", "models", "reachable")}
    problem = _problem(states)
    if problem is None:
        return web.json_response({"status": "ok", "backend": info, "backends": states})
    body = {"status": "unavailable", "error": problem, "backend": info, "backends": states}
    return web.json_response(body, status=503)


def _problem(states: list[dict[str, Any]]) -> str | None:
    """None while one backend answers; else why none does (one backend: its own words)."""
    if any(s["reachable"] for s in states):
        return None
    if len(states) == 1:
        return str(states[0]["error"])
    return "; ".join(f"{s['name']}: {s['error']}" for s in states)


def setup_routes(app: web.Application) -> None:
    """Register the health route."""
    app.router.add_get("/health", health)


async def ready(request: web.Request) -> web.Response:
    """``GET /health/ready``: 200 when the backend answers and every row is kept (503 otherwise).

    While PostgreSQL is down and rows wait in the spool, 200 with ``"status": "degraded"``.
    """
    app = request.app
    states, database = await asyncio.gather(app[keys.ROUTER].states(), app[keys.RECORDER].store.writable())
    checks = {"backend": _problem(states), "database": database}
    if app[keys.LIFECYCLE].stopping:
        checks["proxy"] = "shutting down"
    backends = {s["name"]: s["state"] if s["reachable"] else s["error"] for s in states}
    problems = {name: why for name, why in checks.items() if why is not None}
    if not problems:
        # PostgreSQL down, rows kept in the spool: the proxy serves and loses
        # nothing, so it stays in a load balancer's rotation, and says so.
        note = app[keys.RECORDER].store.degraded()
        if note is not None:
            body = {
                "status": "degraded",
                "checks": {**{name: "ok" for name in checks}, "database": note},
                "backends": backends,
            }
            return web.json_response(body)
        body = {"status": "ready", "checks": {name: "ok" for name in checks}, "backends": backends}
        return web.json_response(body)
    body = {
        "status": "unavailable",
        "checks": {n: why or "ok" for n, why in checks.items()},
        "backends": backends,
    }
    return web.json_response(body, status=503)


async def live(request: web.Request) -> web.Response:
    """``GET /health/live``: 200 while the process serves at all (nothing else is checked)."""
    return web.json_response({"status": "alive"})


def setup_probe_routes(app: web.Application) -> None:
    """Register the supervisors' probes."""
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/health/live", live)
