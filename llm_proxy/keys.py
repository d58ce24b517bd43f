"""Every typed key of the application's and requests' state."""

from __future__ import annotations

from aiohttp import web

from .audit.exchange import Exchange
from .audit.recorder import Recorder
from .backends.base import Backend
from .backends.gate import Gate
from .config import Config
from .console import Console
from .lifecycle import Lifecycle

CONFIG = web.AppKey("config", Config)
RECORDER = web.AppKey("recorder", Recorder)
BACKEND = web.AppKey("backend", Backend)
CONSOLE = web.AppKey("console", Console)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
GATE = web.AppKey("gate", Gate)

# Per-request state.
REQUEST_ID = web.RequestKey("request_id", str)
# The request's audit record, created by the audit middleware.
EXCHANGE = web.RequestKey("exchange", Exchange)
# The name of the API key the request came with (set only when it had a valid one).
KEY_NAME = web.RequestKey("key_name", str)
