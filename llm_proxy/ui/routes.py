"""The UI's routes: the page, its static files, and the JSON API under /ui/api/.

Every /ui/ request is answered by :func:`middleware`, placed first in the
app's chain: it calls the route's handler directly, so UI requests skip the
access log, the metrics, CORS, API keys and the audit trail (the page's own
requests leave no rows, like /health), and get the UI's security headers
instead: a strict Content-Security-Policy (this origin's scripts and styles
only, no inline code, images only from data: URLs), no framing, no referrer.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from ..backends.base import Call, Whole
from ..config import Config
from ..errors import AuditError
from ..server import state
from . import conversation, dashboard, listing
from .live import POLL, Feed
from .pg_reader import PgDatabase
from .policy import PREFIX
from .reader import Database, Store
from .signin import COOKIE, Refused, Sessions

log = logging.getLogger("llm_proxy.ui")

STATIC = Path(__file__).parent / "static"
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}
PING = 15.0  # seconds between keep-alive comments on the live stream

SESSIONS = web.AppKey("ui_sessions", Sessions)
DATABASE = web.AppKey("ui_database", Store)
FEED = web.AppKey("ui_feed", Feed)
FILES = web.AppKey("ui_files", dict)
DASHBOARDS = web.AppKey("ui_dashboards", dashboard.Dashboards)


def is_ui(path: str) -> bool:
    """Whether ``path`` is the UI's."""
    return path == PREFIX or path.startswith(PREFIX + "/")


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer UI paths here, past every other middleware; the rest go on down the chain."""
    if not is_ui(request.path):
        return await handler(request)
    try:
        response = await request.match_info.handler(request)
    except Refused as exc:
        response = _error(exc.message, exc.status)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects
            raise
        response = _error(exc.reason.lower(), exc.status)
    except sqlite3.Error as exc:  # locked past busy_timeout, a file being replaced, a damaged page
        log.warning("web UI: %s %s: the database could not be read: %s", request.method, request.path, exc)
        response = _error(f"the audit database could not be read: {exc}", 503)
    except AuditError as exc:  # PostgreSQL's reader: the server went away mid-answer, a statement refused
        log.warning("web UI: %s %s: %s", request.method, request.path, exc)
        response = _error(str(exc), 503)
    except Exception as exc:
        log.exception("web UI: %s %s failed", request.method, request.path)
        response = _error(f"internal error: {type(exc).__name__}: {exc}", 500)
    if not response.prepared:
        _secure(response)
    return response


def _error(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status, dumps=_dumps)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _secure(response: web.StreamResponse) -> None:
    response.headers.update(HEADERS)
    response.headers.setdefault("Cache-Control", "no-store")


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(value), status=status, content_type="application/json")


# -- the page ------------------------------------------------------------------


async def index(request: web.Request) -> web.StreamResponse:
    if request.path == PREFIX:
        raise web.HTTPFound(PREFIX + "/")
    return _file(request, "index.html")


async def static(request: web.Request) -> web.StreamResponse:
    return _file(request, request.match_info["name"])


def _file(request: web.Request, name: str) -> web.Response:
    files: dict[str, bytes] = request.app[FILES]
    if name not in files:
        raise Refused(404, "not found")
    response = web.Response(body=files[name], content_type=TYPES[Path(name).suffix])
    response.headers["Cache-Control"] = "no-cache"
    return response


def load_files() -> dict[str, bytes]:
    """The static files, read once (a few tens of KiB): only these names are ever served."""
    return {p.name: p.read_bytes() for p in sorted(STATIC.iterdir()) if p.suffix in TYPES}


# -- signing in ----------------------------------------------------------------


async def session(request: web.Request) -> web.Response:
    sessions = request.app[SESSIONS]
    if not sessions.required:
        return _json({"sign_in": False, "signed_in": True, "name": None, **_about(request)})
    name = sessions.holder(request.cookies.get(COOKIE))
    if name is None:  # not even the names of the keys before a sign-in
        return _json({"sign_in": True, "signed_in": False, "name": None})
    return _json({"sign_in": True, "signed_in": True, "name": name, **_about(request)})


def _about(request: web.Request) -> dict[str, Any]:
    config = request.app[state.CONFIG]
    names = {*config.models.mappings, *config.models.mappings.values()}
    for settings in config.named_backends():
        names |= {*settings.models, *(s for s in settings.serves if "*" not in s and "?" not in s)}
    keys = [k.name for k in config.auth.keys]
    return {"keys": keys, "models": sorted(names), "backend": request.app[state.ROUTER].type}


async def sign_in(request: web.Request) -> web.Response:
    sessions = request.app[SESSIONS]
    if not sessions.required:
        return _json({"sign_in": False, "signed_in": True, "name": None, **_about(request)})
    if request.content_type != "application/json":
        raise Refused(415, 'send the key as JSON: {"key": "..."}')
    try:
        body = orjson.loads(await request.content.read(8192))
    except orjson.JSONDecodeError:
        raise Refused(400, "the body is not JSON") from None
    name = sessions.sign_in(request, body.get("key") if isinstance(body, dict) else None)
    log.info("web UI: key '%s' signed in from %s", name, request.remote)
    response = _json({"sign_in": True, "signed_in": True, "name": name, **_about(request)})
    sessions.cookie(response, request, name)
    return response


async def sign_out(request: web.Request) -> web.Response:
    response = _json({"signed_in": False})
    response.del_cookie(COOKIE, path="/ui/")
    return response


# -- the JSON API --------------------------------------------------------------


async def exchanges(request: web.Request) -> web.Response:
    request.app[SESSIONS].reader(request)
    query = listing.parse(request.query, request.app[state.CONFIG].ui.page_size)
    return _json(await request.app[DATABASE].run(lambda r: listing.exchanges(r, query)))


async def one_exchange(request: web.Request) -> web.Response:
    request.app[SESSIONS].reader(request)
    row_id = _id(request)
    found = await request.app[DATABASE].run(lambda r: conversation.exchange(r, row_id))
    # The trace viewer's link (telemetry.trace_url), replace() rather than format(): such URLs carry braces.
    trace_id, template = found["exchange"].get("trace_id"), request.app[state.CONFIG].telemetry.trace_url
    found["trace_url"] = template.replace("{trace_id}", trace_id) if trace_id and template else None
    return _json(found)


async def one_turn(request: web.Request) -> web.Response:
    request.app[SESSIONS].reader(request)
    turn_id = _id(request)
    return _json(await request.app[DATABASE].run(lambda r: conversation.turn(r, turn_id)))


def _id(request: web.Request) -> int:
    text = request.match_info["id"]
    if not text.isdigit() or len(text) > 18:
        raise Refused(404, f"no such id: {text[:40]!r}")
    return int(text)


async def charts(request: web.Request) -> web.Response:
    request.app[SESSIONS].reader(request)
    chosen = dashboard.parse_range(request.query)
    dashboards = request.app[DASHBOARDS]
    return _json(await request.app[DATABASE].run(lambda r: dashboards.build(r, chosen)))


async def backend(request: web.Request) -> web.Response:
    """Every backend's health and, where they have them, the models loaded and when each stops."""
    request.app[SESSIONS].reader(request)
    app = request.app
    router = app[state.ROUTER]
    backends = await router.states()
    reachable = any(b["reachable"] for b in backends)
    info: dict[str, Any] = {"reachable": reachable, "backends": backends}
    if reachable and any(b["type"] in ("llamacpp", "ollama") for b in backends):
        info["running"] = await _running(router)
    return _json(info)


async def _running(backend: Any) -> list[dict[str, Any]] | None:
    """/api/ps as the backend answers it, reduced to names, expiry and context."""
    call = Call("/api/ps", "GET", "/api/ps", None, b"", "", None, None, time.perf_counter(), stream=False)
    try:
        reply = await backend.call(call)
    except Exception as exc:
        log.debug("web UI: /api/ps failed: %s", exc)
        return None
    try:
        if not isinstance(reply, Whole) or reply.status != 200:
            return None
        models = orjson.loads(reply.body).get("models") or []
    except (orjson.JSONDecodeError, AttributeError):
        return None
    finally:
        await reply.close()
    keep = ("name", "expires_at", "context_length", "size_vram")
    return [{k: m.get(k) for k in keep} for m in models if isinstance(m, dict)]


async def events(request: web.Request) -> web.StreamResponse:
    """``GET /ui/api/events``: new exchanges as Server-Sent Events, until the page closes."""
    sessions = request.app[SESSIONS]
    sessions.reader(request)
    cookie = request.cookies.get(COOKIE)
    feed = request.app[FEED]
    viewer = await feed.join()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
    _secure(response)
    try:
        await response.prepare(request)
        # Rows up to `last` are the page's to fetch (its list may have been read before
        # they were written); every row after it comes here.
        hello = {"type": "hello", "last": feed.last}
        await response.write(b"retry: 2000\n: live\n\ndata: " + orjson.dumps(hello) + b"\n\n")
        while True:
            taken = await viewer.next(PING)
            if taken is None:
                break
            if sessions.required and cookie is not None and sessions.holder(cookie) is None:
                await response.write(b'data: {"type":"signed-out"}\n\n')
                break
            if not taken:
                await response.write(b": ping\n\n")
                continue
            await response.write(b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in taken))
    except ConnectionError:
        pass  # the page went away
    finally:
        feed.leave(viewer)
    return response


def add_routes(app: web.Application) -> None:
    """The UI's routes."""
    api = PREFIX + "/api"
    app.router.add_get(PREFIX, index)
    app.router.add_get(PREFIX + "/", index)
    app.router.add_get(PREFIX + "/static/{name}", static)
    app.router.add_get(api + "/session", session)
    app.router.add_post(api + "/session", sign_in)
    app.router.add_delete(api + "/session", sign_out)
    app.router.add_get(api + "/exchanges", exchanges)
    app.router.add_get(api + "/exchanges/{id}", one_exchange)
    app.router.add_get(api + "/turns/{id}", one_turn)
    app.router.add_get(api + "/dashboard", charts)
    app.router.add_get(api + "/backend", backend)
    app.router.add_get(api + "/events", events)


def setup(app: web.Application, config: Config, sign_in_needed: bool) -> Feed:
    """Routes, sessions, the read-only database and the live feed; returns the feed to hook up."""
    app[SESSIONS] = Sessions(config.auth, config.ui, sign_in_needed)
    db: Store = PgDatabase(config.database.url) if config.database.url else Database(config.database.path)
    app[DATABASE] = db
    poll = POLL if config.database.url else None  # several proxies may write a PostgreSQL trail
    feed = Feed(db, config.ui.max_viewers, config.ui.viewer_queue, poll)
    app[FEED] = feed
    app[FILES] = load_files()
    app[DASHBOARDS] = dashboard.Dashboards()
    add_routes(app)

    async def stop(app: web.Application) -> None:
        await feed.close()

    async def cleanup(app: web.Application) -> None:
        await db.shut()

    app.on_shutdown.append(stop)
    app.on_cleanup.append(cleanup)
    return feed
