"""Per-key quotas: requests and tokens per UTC day, and the models a key may use.

``auth.keys[].quota`` sets them. A request with a key is checked at the gate
(``api/pipeline.py``), once its model is known: a model the key may not use is
403, a key over a daily limit 429 with the limit, its use and when it resets
(``Retry-After`` too). What counts is what the audit trail shows, so that the
count can be rebuilt from it at start-up (:meth:`Quotas.rebuild`) and a
restart loses nothing:

* a request on a route that makes the backend work (``codec.gated``) counts
  once answered (status below 400) or abandoned by its client (499); errors
  are not charged, and those in flight hold their place meanwhile;
* its tokens are the prompt and answer tokens the backend reported, whatever
  the status, except for answers from the cache, which cost the backend none.

Days are UTC days, as the audit trail's timestamps are. Only keys with a quota
are tracked, so metric labels are the key names in the config.
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from ..audit.exchange import Exchange
from ..config import AuthConfig, ModelsConfig, Quota
from ..errors import Forbidden, TooManyRequests

# A query on the audit store, ``?`` placeholders, a datetime compared as each store keeps times.
Select = Callable[[str, Sequence[Any]], Awaitable[list[tuple[Any, ...]]]]
ANSWERED = 400  # statuses below this count a request; so does 499 (the client left)
# The model lists: a key limited to some models sees only those.
LISTINGS = frozenset({"/api/tags", "/api/ps", "/v1/models"})
# What a refusal is counted under in the metrics.
LIMITS = ("requests_per_day", "tokens_per_day", "models")


@dataclass(slots=True)
class Usage:
    """One key's use today."""

    day: int  # days since the epoch (UTC)
    requests: int = 0
    tokens: int = 0
    in_flight: int = 0  # admitted, not answered yet: they hold their place under requests_per_day


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted request, settled once its answer is known."""

    key: str
    day: int


def counts(status: int | None) -> bool:
    """Whether a request that ended with ``status`` is charged to its key."""
    return status is not None and (status < ANSWERED or status == 499)


class Quotas:
    """The quota of every configured key that has one, and its use today."""

    def __init__(
        self, auth: AuthConfig, counted: Iterable[str], clock: Callable[[], float] = time.time
    ) -> None:
        self.limits: dict[str, Quota] = {k.name: k.quota for k in auth.keys if k.quota.limited}
        self.counted = frozenset(counted)  # the routes whose requests count
        self._clock = clock
        today = self._today()
        self.usage = {name: Usage(today) for name in self.limits}
        self.refused: dict[tuple[str, str], int] = {}  # (key, limit) → requests refused

    def _today(self) -> int:
        return int(self._clock() // 86400)

    def models_for(self, name: str | None) -> tuple[str, ...]:
        """The model patterns key ``name`` is limited to; empty: any model."""
        quota = self.limits.get(name) if name is not None else None
        return quota.models if quota is not None else ()

    def today(self, name: str) -> Usage:
        """Key ``name``'s use today."""
        return self._current(name)

    def _current(self, name: str) -> Usage:
        usage = self.usage[name]
        today = self._today()
        if usage.day != today:  # a new day: nothing used yet (those in flight still hold their place)
            usage.day, usage.requests, usage.tokens = today, 0, 0
        return usage

    def admit(
        self, name: str | None, endpoint: str, model: str | None, backend_model: str | None
    ) -> Ticket | None:
        """Let a request with key ``name`` through, or raise 403 / 429; a ticket when it is tracked."""
        quota = self.limits.get(name) if name is not None else None
        if quota is None or name is None:
            return None
        if model is not None and quota.models and not _allowed(quota.models, model, backend_model):
            self._refuse(name, "models")
            raise Forbidden(
                f"API key '{name}' may not use model '{model}': its quota allows {', '.join(quota.models)}"
            )
        if endpoint not in self.counted:
            return None
        usage = self._current(name)
        if quota.requests_per_day and usage.requests + usage.in_flight >= quota.requests_per_day:
            self._over(name, "requests_per_day", usage.requests + usage.in_flight, quota.requests_per_day)
        if quota.tokens_per_day and usage.tokens >= quota.tokens_per_day:
            self._over(name, "tokens_per_day", usage.tokens, quota.tokens_per_day)
        usage.in_flight += 1
        return Ticket(name, usage.day)

    def settle(self, ticket: Ticket, exchange: Exchange, failed: int | None, from_cache: bool) -> None:
        """Charge an answered request to its key: the request, and the tokens the backend reported.

        ``failed`` is the status a request that raised ends with (its row's status).
        """
        usage = self.usage[ticket.key]
        usage.in_flight = max(0, usage.in_flight - 1)
        if self._current(ticket.key).day != ticket.day:
            return  # it began yesterday: yesterday's count, which is gone
        if counts(failed if failed is not None else exchange.status_code):
            usage.requests += 1
        if not from_cache:
            usage.tokens += _tokens(exchange.prompt_tokens) + _tokens(exchange.completion_tokens)

    def _over(self, name: str, limit: str, used: int, allowed: int) -> None:
        self._refuse(name, limit)
        resets = datetime.fromtimestamp((self._today() + 1) * 86400, UTC)
        wait = max(1, math.ceil(resets.timestamp() - self._clock()))
        what = "requests" if limit == "requests_per_day" else "tokens"
        raise TooManyRequests(
            f"API key '{name}' is over its quota of {allowed} {what} per day ({limit}: {used} used); "
            f"it resets at {resets.strftime('%Y-%m-%dT%H:%M:%SZ')} (in {_duration(wait)})",
            retry_after=wait,
        )

    def _refuse(self, name: str, limit: str) -> None:
        self.refused[(name, limit)] = self.refused.get((name, limit), 0) + 1

    async def rebuild(self, select: Select) -> None:
        """Today's use of each key from the audit trail (``select`` runs a query on the store)."""
        if not self.limits:
            return
        since = datetime.fromtimestamp(self._today() * 86400, UTC)
        names, routes = sorted(self.limits), sorted(self.counted)
        sql = (
            "SELECT key_name, "
            f"SUM(CASE WHEN status_code < {ANSWERED} OR status_code = 499 THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN cache_hit = 1 THEN 0 "
            "ELSE COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0) END) "
            f"FROM logs WHERE timestamp >= ? AND key_name IN ({', '.join('?' * len(names))}) "
            f"AND endpoint IN ({', '.join('?' * len(routes))}) GROUP BY key_name"
        )
        for name, requests, tokens in await select(sql, [since, *names, *routes]):
            usage = self._current(name)
            usage.requests, usage.tokens = int(requests or 0), int(tokens or 0)


def listing(body: bytes, patterns: tuple[str, ...], models: ModelsConfig) -> bytes:
    """A model list (``/api/tags``, ``/api/ps``, ``/v1/models``) with only the models ``patterns`` allow.

    Each entry is judged as a request for it would be: by the name shown and
    the backend name it maps to. A body that is not such a list is left alone.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(doc, dict):
        return body
    field, name_key = ("data", "id") if isinstance(doc.get("data"), list) else ("models", "name")
    entries = doc.get(field)
    if not isinstance(entries, list):
        return body

    def shown(entry: Any) -> bool:
        name = entry.get(name_key) if isinstance(entry, dict) else None
        return isinstance(name, str) and _allowed(patterns, name, models.backend_name(name))

    return orjson.dumps({**doc, field: [entry for entry in entries if shown(entry)]})


def _allowed(patterns: Iterable[str], model: str, backend_model: str | None) -> bool:
    """True when the client-side or backend name matches a pattern (``x`` and ``x:latest`` alike)."""
    names = {model, model.removesuffix(":latest")}
    if backend_model:
        names |= {backend_model, backend_model.removesuffix(":latest")}
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns for name in names)


def _tokens(value: int | None) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63 else 0


def _duration(seconds: int) -> str:
    """``3h 12m``, ``12m``, ``40s``."""
    span = timedelta(seconds=seconds)
    hours, rest = divmod(int(span.total_seconds()), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m" if minutes else f"{secs}s"


QUOTAS = web.AppKey("quotas", Quotas)
