"""``create_app(config)``: wires config, audit trail, backend and routes together."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Middleware

from .. import backends, ui
from ..api import events, health, ollama
from ..api import openai as openai_api
from ..audit import redact, stores
from ..audit.exchange import Exchange
from ..audit.pg_errors import describe
from ..audit.recorder import Recorder
from ..audit.retention import Retention
from ..cache.answers import AnswerCache
from ..config import Config
from ..telemetry import load as load_telemetry
from . import access, auth, connections, metrics, middlewares, notify, quota, ratelimit, reload, state
from .console import Console
from .recording import audit_trail

log = logging.getLogger("llm_proxy")


def create_app(config: Config, notifier: notify.Notifier | None = None) -> web.Application:
    """A ready-to-run application for ``config``; ``notifier`` tells systemd how it goes."""
    # The web UI's requests are answered first, past everything below (ui/routes.py).
    chain: list[Middleware] = [*ui.middlewares(config), access.observe, middlewares.error_boundary]
    if config.server.enable_cors:
        chain.append(middlewares.cors_preflight)
    # The audit trail wraps auth and rate limiting: rejected requests leave rows too.
    chain.append(audit_trail)
    if config.auth.keys:
        chain.append(auth.middleware(config.auth))
    if config.auth.rate_limit:
        chain.append(ratelimit.middleware(config.auth))
    max_body = int(config.server.max_body_mb * 1024 * 1024)
    app = web.Application(middlewares=chain, client_max_size=max_body)
    app[state.CONFIG] = config
    app[state.CONSOLE] = Console(config.server)
    app[state.LIFECYCLE] = state.Lifecycle()
    app.on_shutdown.append(_stopping)
    router = backends.create(config)
    app[state.BACKEND] = app[state.ROUTER] = router
    reload.setup(app)
    metrics.setup(app)
    app[state.GATE] = router.members[0].gate
    app[state.CACHE] = AnswerCache(config.cache)
    # Requests count against a quota on the routes that make the backend work.
    counted = ollama.GATED_ROUTES | openai_api.GATED_ROUTES | events.RESPONSES.gated | events.MESSAGES.gated
    app[quota.QUOTAS] = quota.Quotas(config.auth, counted)
    app[connections.CONNECTIONS] = connections.ConnectionLimit(config.server.max_connections)
    app.on_response_prepare.append(middlewares.add_request_id)
    if config.server.enable_cors:
        app.on_response_prepare.append(middlewares.add_cors_headers)
    # Opened in this order, closed in reverse: the backend closes first, then the
    # recorder writes what is left, then the database closes, then the last spans go.
    if config.telemetry.enabled:
        app.cleanup_ctx.append(_telemetry)
    app.cleanup_ctx.append(_audit)
    app.cleanup_ctx.append(_backend)
    notify.setup(app, notifier or notify.Notifier(None))
    health.setup_routes(app)
    health.setup_probe_routes(app)
    ollama.setup_routes(app)
    openai_api.setup_routes(app)
    events.setup_routes(app)
    app[state.ON_RECORD] = []
    ui.install(app, config)
    return app


async def _stopping(app: web.Application) -> None:
    app[state.LIFECYCLE].stopping = True
    timeout = app[state.CONFIG].server.shutdown_timeout
    log.info("shutting down: waiting up to %gs for requests in flight", timeout)


async def _telemetry(app: web.Application) -> AsyncIterator[None]:
    live, labels = app[state.LIVE], app[metrics.METRICS].models

    def model_label(exchange: Exchange) -> str:
        # The Prometheus metrics' rule: a model the backend does not serve counts as "other".
        status = exchange.status_code or 500
        return labels.label(live.config, exchange.model or "", status, exchange.error)

    config = app[state.CONFIG]
    policy, per_key = redact.policies(config.database, config.auth.keys)

    def content(exchange: Exchange, text: str) -> str | None:
        """A message attribute as the row keeps it: redacted, or nothing in metadata mode."""
        kept = per_key.get(exchange.key_name or "", policy)
        if kept.store_bodies == "metadata":
            return None
        return (kept.redactor.json_text(text) or text) if kept.redactor is not None else text

    telemetry = load_telemetry(config.telemetry, model_label, content)
    if telemetry is None:
        yield
        return
    app[state.TELEMETRY] = telemetry
    try:
        yield
    finally:
        await telemetry.close()


async def _audit(app: web.Application) -> AsyncIterator[None]:
    config = app[state.CONFIG]
    policy, per_key = redact.policies(config.database, config.auth.keys)
    app[state.CONSOLE].protect(policy, per_key)  # console lines are redacted like the rows
    store = stores.create(config)
    applied = await store.open()
    for name in applied:
        log.info("applied migration %s to %s", name, store.path)
    # Quotas go on counting where the last run stopped: today's use, from the trail.
    try:
        await app[quota.QUOTAS].rebuild(store.select)
    except Exception as exc:  # the proxy serves on (PostgreSQL down, say); the counts start from zero
        log.error("could not read today's quota use from %s, counting from 0: %s", store.path, describe(exc))
    recorder = Recorder(store, config.database.queue_size)
    recorder.start()
    app[state.RECORDER] = recorder
    retention = Retention(store, config.database)
    retention.start()
    try:
        yield
    finally:
        await retention.close()
        await recorder.close()
        await store.close()
        log.info(
            "audit trail closed: %d rows written (%d reduced), %d lost, queue peak %d",
            recorder.written, recorder.reduced, recorder.lost, recorder.peak,
        )  # fmt: skip


async def _backend(app: web.Application) -> AsyncIterator[None]:
    backend = app[state.BACKEND]
    await backend.start()
    try:
        yield
    finally:
        await backend.close()
