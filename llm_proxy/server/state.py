"""The application's and requests' typed state: its ``web.AppKey``s and the two mutable holders.

A key whose value's module reads the app's state itself is defined in that
module, beside its class, as aiohttp's docs advise: :data:`metrics.METRICS
<llm_proxy.server.metrics.METRICS>`, :data:`notify.NOTIFIER
<llm_proxy.server.notify.NOTIFIER>` and :data:`connections.CONNECTIONS
<llm_proxy.server.connections.CONNECTIONS>`. Typing them here would import
those modules, and they import this one: a circle. Everything this module
imports knows nothing of the app.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ..audit.exchange import Exchange
from ..audit.recorder import Recorder
from ..backends.base import Backend
from ..backends.gate import Gate
from ..backends.router import Router
from ..cache.answers import AnswerCache
from ..config import Config
from ..errors import ProxyError
from .console import Console


@dataclass(slots=True)
class Lifecycle:
    """Mutable process state that handlers may consult (the app itself is frozen once started)."""

    # Set when shutdown begins: requests cut off from then on were interrupted
    # by the proxy, not abandoned by their clients.
    stopping: bool = False


@dataclass(slots=True)
class LiveConfig:
    """The config in force: the startup config with the last reload's reloadable parts."""

    config: Config


CONFIG = web.AppKey("config", Config)
RECORDER = web.AppKey("recorder", Recorder)
BACKEND = web.AppKey("backend", Backend)
CONSOLE = web.AppKey("console", Console)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
GATE = web.AppKey("gate", Gate)  # the first backend's gate
# The router: BACKEND itself, with its named backends' states for /health.
ROUTER = web.AppKey("router", Router)
# The answer cache (cache:); present, and empty, when it is off.
CACHE = web.AppKey("cache", AnswerCache)
# The config in force: CONFIG with the reloadable parts of the last SIGHUP reload (reload.py).
LIVE = web.AppKey("live", LiveConfig)

# Per-request state.
REQUEST_ID = web.RequestKey("request_id", str)
# The request's audit record, created by the recording middleware.
EXCHANGE = web.RequestKey("exchange", Exchange)
# The ProxyError the request failed with, for metrics and the access log.
FAILURE = web.RequestKey("failure", ProxyError)
# The name of the API key the request came with (set only when it had a valid one).
KEY_NAME = web.RequestKey("key_name", str)
