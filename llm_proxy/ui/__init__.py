"""The read-only web UI at /ui/: exchanges, Home Assistant turns and charts, and its JSON API.

``server/app.py`` wires it in at one place, :func:`install`; ``cli/serve.py``
prints :func:`policy.startup_line`. docs/ui.md documents the JSON API.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Middleware

from ..config import Config
from ..server import state
from . import policy, routes

__all__ = ["install", "middlewares", "policy"]


def middlewares(config: Config) -> list[Middleware]:
    """The middleware to put first in the app's chain (none when the UI is off)."""
    return [routes.middleware] if policy.decide(config).on else []


def install(app: web.Application, config: Config) -> None:
    """Add the UI to ``app`` when it is on, its live feed hooked to the recording of exchanges."""
    decision = policy.decide(config)
    if decision.on:
        feed = routes.setup(app, config, decision.sign_in)
        app[state.ON_RECORD].append(feed.publish)
