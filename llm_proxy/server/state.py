"""Every typed key of the application's and requests' state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ..audit.exchange import Exchange
from ..audit.recorder import Recorder
from ..backends.base import Backend
from ..backends.gate import Gate
from ..config import Config
from ..errors import ProxyError
from .console import Console
from .lifecycle import Lifecycle

if TYPE_CHECKING:  # these modules import this one; their keys are typed by annotation
    from .connections import ConnectionLimit
    from .metrics import Metrics
    from .notify import Notifier
    from .reload import LiveConfig

CONFIG = web.AppKey("config", Config)
RECORDER = web.AppKey("recorder", Recorder)
BACKEND = web.AppKey("backend", Backend)
CONSOLE = web.AppKey("console", Console)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
GATE = web.AppKey("gate", Gate)
# The client connections open, counted by the server `llm-proxy serve` runs (connections.run).
CONNECTIONS: web.AppKey[ConnectionLimit] = web.AppKey("connections")
# The config in force: CONFIG with the reloadable parts of the last SIGHUP reload.
LIVE: web.AppKey[LiveConfig] = web.AppKey("live")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
NOTIFIER: web.AppKey[Notifier] = web.AppKey("notifier")

# Per-request state.
REQUEST_ID = web.RequestKey("request_id", str)
# The request's audit record, created by the audit middleware.
EXCHANGE = web.RequestKey("exchange", Exchange)
# The ProxyError the request failed with, for metrics and the access log.
FAILURE = web.RequestKey("failure", ProxyError)
# The name of the API key the request came with (set only when it had a valid one).
KEY_NAME = web.RequestKey("key_name", str)
