"""Every typed key of the application's and requests' state."""

from __future__ import annotations

from aiohttp import web

from .audit.recorder import Recorder
from .backends.base import Backend
from .config import Config
from .console import Console
from .lifecycle import Lifecycle

CONFIG = web.AppKey("config", Config)
RECORDER = web.AppKey("recorder", Recorder)
BACKEND = web.AppKey("backend", Backend)
CONSOLE = web.AppKey("console", Console)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)

# Per-request state.
REQUEST_ID = web.RequestKey("request_id", str)
