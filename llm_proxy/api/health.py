"""``GET /health``: is the proxy up, and can it reach its backend?"""

from __future__ import annotations

from aiohttp import web

from .. import keys
from ..backends.http import describe


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
