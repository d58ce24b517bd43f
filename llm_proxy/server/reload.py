"""SIGHUP: re-read the config file and apply what can change without a restart.

Reloadable: the whole ``models`` and ``cache`` sections and the ``server.log_*`` flags
(a reload that changes ``models``, or what ``cache`` keeps, empties the answer
cache: its answers were made under the old names and params). Everything
else (where to listen, which backend, the database) needs a restart; a reload that
changes it says so in the log and keeps the running value. A file that does not
load keeps the old config in force, and the log says why.

``app[state.CONFIG]`` stays the config the app started with (the app's state is
frozen once it runs, and its non-reloadable parts never change); the config in
force is ``app[state.LIVE].config``, which readers of reloadable parts consult.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import threading
from collections.abc import AsyncIterator

from aiohttp import web

from .. import config as config_mod
from ..config import Config
from ..errors import ConfigError
from . import logging_setup, state
from .state import LiveConfig

log = logging.getLogger("llm_proxy")

RELOADABLE_SERVER = ("log_messages", "log_raw_requests", "log_raw_responses", "log_format")


def merge(running: Config, loaded: Config) -> tuple[Config, list[str]]:
    """``running`` with ``loaded``'s reloadable parts, and the keys a reload cannot change."""
    ignored = []
    for section in ("server", "backend", "database"):
        old, new = getattr(running, section), getattr(loaded, section)
        for f in dataclasses.fields(old):
            if section == "server" and f.name in RELOADABLE_SERVER:
                continue
            if getattr(old, f.name) != getattr(new, f.name):
                ignored.append(f"{section}.{f.name}")
    for section in ("backends", "routing"):
        if getattr(running, section) != getattr(loaded, section):
            ignored.append(section)
    server = dataclasses.replace(running.server, **{k: getattr(loaded.server, k) for k in RELOADABLE_SERVER})
    return dataclasses.replace(running, server=server, models=loaded.models, cache=loaded.cache), ignored


def reload(app: web.Application) -> bool:
    """Re-read the file the app's config came from; True when the new one is in force."""
    live = app[state.LIVE]
    path = live.config.source
    if path is None:
        log.warning("SIGHUP: no config file to reload (started with the built-in defaults)")
        return False
    try:
        loaded = config_mod.load(path)
    except ConfigError as exc:
        log.error("config reload failed, keeping the running config: %s", exc)
        return False
    new, ignored = merge(live.config, loaded)
    apply(app, new)
    log.info(
        "config reloaded from %s: %d model mappings, log_format=%s",
        path, len(new.models.mappings), new.server.log_format,
    )  # fmt: skip
    if ignored:
        # --host/--port overrides show up here too: the file differs from what runs.
        log.warning(
            "config reload: %s in the file differ from the running values; restart to apply",
            ", ".join(ignored),
        )
    return True


def apply(app: web.Application, config: Config) -> None:
    """Put ``config`` in force from the next request on; nothing is closed or restarted."""
    old = app[state.LIVE].config
    app[state.LIVE].config = config
    cache = app[state.CACHE]
    cache.configure(config.cache)
    stale = old.models != config.models or old.cache.models != config.cache.models
    if (stale or not config.cache.enabled) and (emptied := cache.clear()):
        log.info("answer cache emptied: answers of the previous config (dropped: %d)", emptied)
    # The backends look up model mappings and params through their config.
    app[state.BACKEND].config = config
    app[state.CONSOLE].configure(config.server)
    logging_setup.set_format(config.server.log_format)


async def on_sighup(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: reload on SIGHUP while the app runs."""
    if threading.current_thread() is not threading.main_thread():
        # Signals reach only the main thread; an app embedded in another
        # thread's loop (tests, tools) simply has no reload.
        yield
        return
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reload, app)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


def setup(app: web.Application) -> None:
    """Give ``app`` its live config and the SIGHUP handler."""
    app[state.LIVE] = LiveConfig(app[state.CONFIG])
    app.cleanup_ctx.append(on_sighup)
