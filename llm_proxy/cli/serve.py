"""``llm-proxy serve``: the proxy as a process, from logging set-up to the last connection closed."""

from __future__ import annotations

import asyncio
import gc
import os
import sqlite3
import sys

from .. import __version__
from ..config import BackendConfig, Config
from ..server import connections, logging_setup
from ..server.app import create_app
from ..server.auth import exposure_warning
from ..server.notify import Notifier
from ..ui.policy import startup_line
from . import PROG


def event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when it is installed (markedly faster), else asyncio's.

    ``LLM_PROXY_EVENT_LOOP=asyncio`` forces asyncio's, e.g. to compare the two.
    """
    if os.environ.get("LLM_PROXY_EVENT_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def serve(config: Config, banner: str | None = None) -> int:
    """Run the proxy for ``config`` until SIGTERM or Ctrl-C; ``banner`` is printed once it listens.

    Returns the exit code: 0, or 1 when the port or the database cannot be opened.
    """
    logging_setup.setup(config.server.log_format)
    notifier = Notifier.from_environ()
    app = create_app(config, notifier)
    server = config.server
    warning = exposure_warning(config)
    if warning:
        print(f"{PROG}: {warning}", file=sys.stderr, flush=True)

    def announce() -> None:
        # Everything made so far (modules, the app, its connections) lives as
        # long as the process: out of the collector's sight, a full collection
        # no longer walks it. One took 13 ms here, a stall every request then
        # in flight would have waited out.
        gc.collect()
        gc.freeze()
        # Called once the port is bound (and migrations ran, at startup): the
        # moment systemd may send traffic.
        print(
            f"{PROG} {__version__} listening on http://{server.host}:{server.port} "
            f"→ {_backend_target(config)}; "
            f"audit trail in {config.database.path}",
            flush=True,
        )
        print(f"{PROG}: {startup_line(config)}", flush=True)
        notifier.ready(f"listening on {server.host}:{server.port}")
        if banner:
            print(banner, flush=True)

    try:
        # web.run_app, with a bound on client connections (see connections.py).
        connections.run(
            app,
            app[connections.CONNECTIONS],
            host=server.host,
            port=server.port,
            loop=event_loop(),
            on_listening=announce,
            shutdown_timeout=server.shutdown_timeout,
            keepalive_timeout=server.keepalive_timeout,
            access_log=None,
            handler_cancellation=False,  # what web.run_app does; handlers meet a departure as a failed write
        )
    except OSError as exc:
        print(f"{PROG}: cannot listen on {server.host}:{server.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except sqlite3.Error as exc:
        print(f"{PROG}: cannot open the database {config.database.path}: {exc}", file=sys.stderr)
        return 1
    return 0


def _backend_target(config: Config) -> str:
    if config.backends:
        return (
            f"{len(config.backends)} backends ("
            + ", ".join(_one(b, f"{b.name}: ") for b in config.backends)
            + ")"
        )
    return _one(config.backend)


def _one(backend: BackendConfig, prefix: str = "") -> str:
    if backend.type == "llamacpp":
        return f"{prefix}llama-server on demand for {', '.join(backend.models)}"
    return f"{prefix}{backend.type} backend at {backend.endpoint}"
