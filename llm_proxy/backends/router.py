"""The router: a Backend in front of the named backends (``backends:``), itself a Backend.

For each request it picks the backends that serve its model (``routing.py``),
in the configured order or least busy first (``routing.strategy``), and tries
them one by one (:meth:`Router.attempt`, the one place a request meets one
backend) until one answers:

* **Failover** before the first byte only: an unreachable backend, a timeout,
  a 502/503/504 (llama-server's 503 "Loading model" included) or a full queue
  moves the request to the next backend; once a reply is handed to the pipeline,
  nothing is retried (a stream that breaks ends with the API's error item).
* **Circuit breaker** per backend (``breaker.py``): after failures in a row it
  is skipped while another serves the model, and probed in the background.
* **Context fallback**: a request refused for its context size is retried once
  on ``models.fallback``'s model.
* **One catalog**: ``/api/tags``, ``/api/ps`` and ``/v1/models`` are the union of
  every backend's lists, each cached so a poll never waits on the slowest.

Each backend keeps its own gate (``max_concurrency``, ``max_queue``), held until
its reply is closed. Every try is recorded in the reply's (or error's) ``route``;
the pipeline copies it into the audit record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..config import Config, NamedBackend
from ..errors import BackendError, Busy, ModelNotFound, ProxyError
from ..translate.catalog import LIST_KEYS, listed_names, merge_lists
from ..translate.errors import context_exceeded, error_from_backend
from . import replies, routing
from .base import Attempt, Backend, Call, Reply, Route, Stream, Whole
from .breaker import Breaker
from .gate import Gate

log = logging.getLogger("llm_proxy")

# Answers that move a request to the next backend, when they come before the first byte.
RETRY = frozenset({502, 503, 504})
LIST_TTL = {"/api/tags": 10.0, "/api/ps": 2.0, "/v1/models": 10.0}  # seconds a backend's list is fresh
LIST_TIMEOUT = 3.0  # seconds a first list fetch may take before the answer goes without it
LIST_RETRY = 2.0  # seconds before a list that could not be fetched is asked for again


@dataclass(slots=True)
class Listing:
    """One backend's last model list of one kind, and its refresh in flight."""

    doc: dict[str, Any] | None = None
    names: frozenset[str] = frozenset()
    fetched: float = -math.inf
    task: asyncio.Task[None] | None = None
    waited: bool = False  # one request has waited for the first fetch; later ones do not


@dataclass(slots=True)
class Member:
    """One named backend: the backend, its gate, its breaker, its cached lists."""

    name: str
    key: str  # its config key in messages: "backend" or "backends.NAME"
    settings: NamedBackend
    backend: Backend
    gate: Gate
    breaker: Breaker
    lists: dict[str, Listing] = field(default_factory=dict)


def _derived(config: Config, settings: NamedBackend) -> Config:
    """The config one backend sees: its own settings as ``backend``."""
    return config if settings is config.backend else dataclasses.replace(config, backend=settings)


class Router:
    """Routes each request to the named backends that serve its model."""

    def __init__(self, config: Config, create: Callable[[Config], Backend]) -> None:
        self._config = config
        self.members: list[Member] = []
        for settings in config.named_backends():
            key = f"backends.{settings.name}" if config.backends else "backend"
            self.members.append(
                Member(
                    name=settings.name, key=key, settings=settings,
                    backend=create(_derived(config, settings)),
                    gate=Gate(settings.max_concurrency, settings.max_queue),
                    breaker=Breaker(config.routing.breaker_failures),
                )
            )  # fmt: skip
        self.by_name = {m.name: m for m in self.members}
        self.table = [routing.Entry(m.name, m.settings.serves) for m in self.members]
        first = self.members[0].backend
        self.type = first.type if len(self.members) == 1 else "router"
        self.endpoint = first.endpoint
        self._probe: asyncio.Task[None] | None = None

    # -- the Backend protocol ---------------------------------------------------

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        # A reload (models, logging flags) reaches every backend, each with its own settings.
        self._config = config
        for member in self.members:
            member.backend.config = dataclasses.replace(config, backend=member.backend.config.backend)

    async def start(self) -> None:
        for member in self.members:
            await member.backend.start()
        self._probe = asyncio.ensure_future(self._probe_loop())
        if len(self.members) > 1:  # discovery starts now: the first request need not wait for it
            for member in self._unpatterned():
                self._refresh(member, "/api/tags")

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        fetches = [t for m in self.members for lst in m.lists.values() if (t := lst.task) is not None]
        for task in fetches:
            task.cancel()
        await asyncio.gather(*fetches, return_exceptions=True)
        for member in self.members:
            await member.backend.close()

    async def health(self) -> str | None:
        """``None`` while one backend answers, else why none does."""
        if len(self.members) == 1:
            return await self.members[0].backend.health()
        problems = await asyncio.gather(*(m.backend.health() for m in self.members))
        if any(p is None for p in problems):
            return None
        return "; ".join(f"{m.name}: {p}" for m, p in zip(self.members, problems, strict=True))

    async def states(self) -> list[dict[str, Any]]:
        """Every backend as /health lists it: name, type, where, breaker state, reachable."""
        problems = await asyncio.gather(*(m.backend.health() for m in self.members))
        found = []
        for member, problem in zip(self.members, problems, strict=True):
            entry: dict[str, Any] = {"name": member.name, **describe(member.settings)}
            entry |= {"state": member.breaker.state, "reachable": problem is None}
            if problem is not None:
                entry["error"] = problem
            found.append(entry)
        return found

    async def call(self, call: Call) -> Reply:
        return await self._send(call, v1=False)

    async def openai(self, call: Call) -> Reply:
        return await self._send(call, v1=True)

    # -- routing ----------------------------------------------------------------

    async def _send(self, call: Call, v1: bool) -> Reply:
        route = Route(attempts=[])
        try:
            if len(self.members) > 1 and call.endpoint in LIST_KEYS:
                reply: Reply = await self._merged(call, v1, route)
            else:
                reply = await self._over(call, v1, route, await self._candidates(call))
        except ProxyError as exc:
            if exc.route is None:
                exc.route = route
            raise
        reply.route = route
        return reply

    async def _over(self, call: Call, v1: bool, route: Route, members: list[Member]) -> Reply:
        """Try ``members`` in turn until one answers; the context fallback, once."""
        for i, member in enumerate(members):
            more = i + 1 < len(members)
            try:
                reply = await self.attempt(member, call, v1, route)
            except ProxyError as exc:
                retry = self._fallback(call, route, exc.status, exc.message)
                if retry is not None:
                    return await self._over(retry, v1, route, await self._candidates(retry))
                if more and (exc.status in RETRY or isinstance(exc, ModelNotFound)):
                    continue
                raise
            if isinstance(reply, Whole) and reply.status == 400:
                retry = self._fallback(call, route, reply.status, reply.body)
                if retry is not None:
                    return await self._over(retry, v1, route, await self._candidates(retry))
            # Nothing reached the client yet: the next backend may answer (or have the model).
            if more and (reply.status in RETRY or (reply.status == 404 and call.model is not None)):
                await reply.close()
                continue
            return reply
        raise ModelNotFound(call.model or "?")  # no member at all: _candidates never gives none

    async def attempt(self, member: Member, call: Call, v1: bool, route: Route) -> Reply:
        """One try of one backend: its gate, the request, the record of how it went.

        The one place a request meets one backend (a tracing span per try wraps
        this). The gate's slot is held until the reply is closed.
        """
        record = Attempt(member.name, model=call.model if route.fallback else None)
        route.attempts.append(record)
        # The last backend tried is the one named, whether it answered or its error is the client's.
        route.backend, route.type = member.name, member.backend.type
        started = time.perf_counter()
        reply: Reply | None = None
        held = False
        try:
            if call.gated:
                await member.gate.acquire(member.key)
                held = True
            reply = await (member.backend.openai(call) if v1 else member.backend.call(call))
        except ProxyError as exc:
            record.status, record.error = exc.status, exc.message
            if exc.status in RETRY and not isinstance(exc, Busy):
                self._failed(member, exc.message)
            raise
        finally:
            record.ms = int((time.perf_counter() - started) * 1000)
            if held:
                if isinstance(reply, Stream):
                    reply.on_close(lambda _failed: member.gate.release())
                else:
                    member.gate.release()
        record.status = reply.status
        if reply.status in RETRY:
            record.error = _error_text(reply)
            self._failed(member, record.error)
        else:
            if reply.status >= 400:
                record.error = _error_text(reply)
            if member.breaker.success():
                log.info("backend %r answers again: breaker closed", member.name)
        if isinstance(reply, Stream):
            reply.on_close(lambda failed: self._failed(member, "the stream broke off") if failed else None)
        return reply

    def _failed(self, member: Member, error: str | None) -> None:
        if member.breaker.failure(error):
            log.warning(
                "backend %r skipped after %d failures in a row (last: %s); probing every %gs",
                member.name, member.breaker.failures, error, self._config.routing.probe_interval,
            )  # fmt: skip

    def _fallback(self, call: Call, route: Route, status: int, text: str | bytes) -> Call | None:
        """The call retried on ``models.fallback``'s model, when it was refused for its context size."""
        if route.fallback is not None or call.model is None or call.body is None:
            return None  # once only
        if not context_exceeded(status, text):
            return None
        models = self._config.models
        target = models.fallback_for(call.model)
        if not target:
            return None
        backend_model = models.backend_name(target)
        body = {**call.body, "model": backend_model}
        route.fallback, route.backend_model = target, backend_model
        log.info("model %r is over its context: retrying on %r (models.fallback)", call.model, target)
        return dataclasses.replace(
            call, model=target, backend_model=backend_model, body=body, raw=orjson.dumps(body)
        )

    async def _candidates(self, call: Call) -> list[Member]:
        """The members to try for ``call``, in the order to try them."""
        if len(self.members) == 1:
            return self.members
        if call.model is None:
            names: list[str] = [m.name for m in self.members]
        else:
            wanted = routing.model_names(call.model, call.backend_model)
            for member in self._unpatterned():
                self._refresh(member, "/api/tags")  # a stale list is renewed in the background
            names = routing.serving(self.table, call.model, wanted, self._discovered())
            if not names:  # perhaps new since the lists were fetched: look again
                await asyncio.gather(*(self._list(m, "/api/tags") for m in self._unpatterned()))
                names = routing.serving(self.table, call.model, wanted, self._discovered())
            if not names:
                names = routing.unpatterned(self.table)
            if not names:
                raise ModelNotFound(call.model)
        load = (lambda m: m.gate.load) if self._config.routing.strategy == "least_busy" else None
        return routing.order([self.by_name[n] for n in names], lambda m: m.breaker.is_open, load)

    def _unpatterned(self) -> list[Member]:
        return [m for m in self.members if not m.settings.serves]

    def _discovered(self) -> dict[str, frozenset[str]]:
        found = {}
        for member in self._unpatterned():
            listing = member.lists.get("/api/tags")
            found[member.name] = listing.names if listing is not None else frozenset()
        return found

    # -- one catalog --------------------------------------------------------------

    async def _merged(self, call: Call, v1: bool, route: Route) -> Reply:
        """A list answer (/api/tags, /api/ps, /v1/models) from every backend's, each cached."""
        endpoint = call.endpoint
        listings = await asyncio.gather(*(self._list(m, endpoint) for m in self.members))
        docs = [listing.doc for listing in listings if listing.doc is not None]
        if not docs:
            errors = "; ".join(f"{m.name}: {m.breaker.last_error or 'no answer'}" for m in self.members)
            raise BackendError(f"no backend listed its models ({errors})", 502)
        route.backend = "+".join(
            m.name for m, listing in zip(self.members, listings, strict=True) if listing.doc
        )
        return replies.json_reply(merge_lists(endpoint, docs))

    async def _list(self, member: Member, endpoint: str) -> Listing:
        """``member``'s list: the last copy at once (renewed in the background when stale).

        Only the first fetch of a backend's list is waited for, by one request, at
        most LIST_TIMEOUT, and not while its breaker is open: a poll never waits
        on the slowest backend.
        """
        listing = self._refresh(member, endpoint)
        if (
            listing.doc is None
            and listing.task is not None
            and not listing.waited
            and not member.breaker.is_open
        ):
            listing.waited = True
            with contextlib.suppress(TimeoutError, ProxyError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(listing.task), LIST_TIMEOUT)
        return listing

    def _refresh(self, member: Member, endpoint: str) -> Listing:
        """Start fetching ``member``'s list when it is stale and no fetch is under way."""
        listing = member.lists.setdefault(endpoint, Listing())
        if time.monotonic() - listing.fetched >= LIST_TTL[endpoint] and (
            listing.task is None or listing.task.done()
        ):
            listing.task = asyncio.ensure_future(self._fetch_list(member, endpoint, listing))
        return listing

    async def _fetch_list(self, member: Member, endpoint: str, listing: Listing) -> None:
        call = Call(
            endpoint=endpoint, method="GET", path=endpoint, body=None, raw=b"", query="",
            model=None, backend_model=None, started=time.perf_counter(), stream=False,
        )  # fmt: skip
        try:
            v1 = endpoint.startswith("/v1/")
            reply = await (member.backend.openai(call) if v1 else member.backend.call(call))
            try:
                doc = orjson.loads(reply.body) if isinstance(reply, Whole) and reply.status == 200 else None
            except orjson.JSONDecodeError:
                doc = None
            finally:
                await reply.close()
        except ProxyError as exc:
            member.breaker.last_error = exc.message
            doc = None
        if isinstance(doc, dict):
            listing.doc, listing.names, listing.fetched = doc, listed_names(endpoint, doc), time.monotonic()
        else:  # kept: the last copy; asked again soon, not on every request
            listing.fetched = time.monotonic() - LIST_TTL[endpoint] + LIST_RETRY

    # -- the probe ----------------------------------------------------------------

    async def _probe_loop(self) -> None:
        """Probe every open breaker's backend each ``routing.probe_interval`` seconds."""
        while True:
            await asyncio.sleep(self._config.routing.probe_interval)
            opened = [m for m in self.members if m.breaker.is_open]
            if not opened:
                continue
            problems = await asyncio.gather(*(m.backend.health() for m in opened), return_exceptions=True)
            for member, problem in zip(opened, problems, strict=True):
                if problem is None and member.breaker.success():
                    log.info("backend %r answers its probe again: breaker closed", member.name)


def _error_text(reply: Reply) -> str:
    """What an error answer says, for its attempt."""
    if isinstance(reply, Whole):
        return error_from_backend(reply.status, reply.body).message
    return f"backend answered {reply.status}"


def describe(settings: NamedBackend) -> dict[str, Any]:
    """A backend as /health shows it (never its API key)."""
    if settings.type == "llamacpp":  # no one endpoint: a llama-server per model, started on demand
        return {"type": settings.type, "models": list(settings.models)}
    return {"type": settings.type, "endpoint": settings.endpoint}
