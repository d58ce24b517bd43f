"""Prometheus metrics: what the proxy served, how fast, and how the audit trail keeps up.

Each app owns its own :class:`~prometheus_client.CollectorRegistry` rather than
the process-global one, so several apps in one process (the tests) never share
counters. The audit trail's numbers are read from the Recorder at scrape time,
so they are exact rather than sampled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..audit.exchange import Exchange
from ..audit.pg_store import PostgresStore
from ..config import Config
from ..errors import BackendError, BackendTimeout, BackendUnavailable, ProxyError
from . import connections, quota, state

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Latency of whole answers: LLM answers take seconds to minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, float("inf"))
# Time to the first token: prompt processing, usually well under a minute.
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, float("inf"))
# Model names the backend answered for that get a label of their own; later ones count as OTHER.
MAX_MODEL_LABELS = 1000
OTHER = "other"
# Token counts a backend reports are counted only in this range: a negative one
# would make Counter.inc raise (and lose the request's access line with it).
MAX_TOKENS = 2**63


def backend_error_kind(exc: BaseException | None) -> str | None:
    """The ``kind`` label for a failure caused by the backend, None for any other failure."""
    if isinstance(exc, BackendUnavailable):
        return "unreachable"
    if isinstance(exc, BackendTimeout):
        return "timeout"
    if isinstance(exc, BackendError):
        return "error"  # it answered with an error, broke off, or sent something unreadable
    return None


class ModelLabels:
    """The ``model`` label of a request: its model's name when the backend serves it, else OTHER.

    Any string a client sends would otherwise become a series of its own, and
    a 502 for each made-up name (backend down) grew /metrics without end. A name
    is served when the config names it (``models.mappings`` either side,
    ``models.default``, the llamacpp ``backend.models``) or the backend has
    answered a request for it without error; at most :data:`MAX_MODEL_LABELS`
    of the latter are remembered.
    """

    def __init__(self, limit: int = MAX_MODEL_LABELS) -> None:
        self.limit = limit
        self._answered: set[str] = set()
        self._config: Config | None = None
        self._configured: frozenset[str] = frozenset()

    def label(self, config: Config, model: str, status: int, error: str | None) -> str:
        """The label for a request for ``model`` that ended with ``status`` (under ``config``)."""
        name = model.removesuffix(":latest")
        if name in self._answered or name in self._names(config):
            return model
        if status < 400 and error is None and len(self._answered) < self.limit:
            self._answered.add(name)
            return model
        return OTHER

    def _names(self, config: Config) -> frozenset[str]:
        if config is not self._config:  # a reload brought other mappings
            models = config.models
            served = {
                name for b in config.named_backends() for name in (*b.models, *b.serves) if "*" not in name
            }
            names = {*models.mappings, *models.mappings.values(), models.default, *models.fallback, *served}
            self._configured = frozenset(n.removesuffix(":latest") for n in names if n)
            self._config = config
        return self._configured


def token_count(value: int | None) -> int | None:
    """A reported token count that can be counted, or None (missing, negative, absurd)."""
    if isinstance(value, int) and 0 < value < MAX_TOKENS:
        return value
    return None


class Metrics:
    """The proxy's metrics, registered in a registry of their own."""

    def __init__(self, config: Callable[[], Config] = Config) -> None:
        # The config in force (models.mappings change on reload), read per request.
        self.config = config
        self.models = ModelLabels()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "llm_proxy_requests", "Requests answered, by route, client-side model and status.",
            ["endpoint", "model", "status"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "llm_proxy_request_duration_seconds", "Time from request to the end of the answer.",
            ["endpoint", "model"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "llm_proxy_time_to_first_token_seconds", "Time from request to the first answer token.",
            ["endpoint", "model"], buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "llm_proxy_tokens", "Tokens the backend reported: direction=in (prompt) or out (answer).",
            ["model", "direction"], registry=r,
        )  # fmt: skip
        self.backend_errors = Counter(
            "llm_proxy_backend_errors", "Requests that failed because of the backend, by kind.",
            ["kind"], registry=r,
        )  # fmt: skip
        # Per named backend (names come from the config only, so the series are bounded):
        # every try, by the status it ended with ("error" when it never answered).
        self.attempts = Counter(
            "llm_proxy_backend_attempts", "Tries of each named backend, by the status they ended with.",
            ["backend", "status"], registry=r,
        )  # fmt: skip
        self.answered = Counter(
            "llm_proxy_backend_requests", "Requests each named backend answered last (after any failover), "
            "errors included.",
            ["backend"], registry=r,
        )  # fmt: skip
        self.in_flight = Gauge("llm_proxy_requests_in_flight", "Requests being answered now.", registry=r)
        for kind in ("unreachable", "timeout", "error"):
            self.backend_errors.labels(kind)  # present at zero, so rate() works from the start
        # Each request's series, by (endpoint, model, status), and every other
        # labelled child: ``labels()`` takes a lock and builds a key every call
        # (15 us of the 9 per request). Grows exactly as the series do.
        self._series: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(
        self,
        endpoint: str,
        status: int,
        seconds: float,
        exchange: Exchange | None,
        failure: ProxyError | None,
    ) -> None:
        """Count one finished request."""
        # A client's mistake (4xx: a misspelt or made-up model name, say) is not
        # labelled with its model at all; any other answer by ModelLabels.
        model = ""
        if exchange is not None and exchange.model and not 400 <= status < 500:
            model = self.models.label(self.config(), exchange.model, status, exchange.error)
        key = (endpoint, model, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = (
                self.requests.labels(endpoint, model, str(status)),
                self.latency.labels(endpoint, model),
                self.ttft.labels(endpoint, model),
            )
        requests, latency, ttft = series
        requests.inc()
        latency.observe(seconds)
        if exchange is not None:
            if exchange.ttft_ms is not None:
                ttft.observe(exchange.ttft_ms / 1000)
            if prompt_tokens := token_count(exchange.prompt_tokens):
                self._child(self.tokens, model, "in").inc(prompt_tokens)
            if completion_tokens := token_count(exchange.completion_tokens):
                self._child(self.tokens, model, "out").inc(completion_tokens)
            for attempt in exchange.attempts or ():
                self._child(self.attempts, attempt["backend"], str(attempt["status"] or "error")).inc()
            if exchange.backend_name is not None and "+" not in exchange.backend_name:
                self._child(self.answered, exchange.backend_name).inc()
        if failure is not None and (kind := backend_error_kind(failure)) is not None:
            self._child(self.backend_errors, kind).inc()

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)


class AuditCollector(Collector):
    """The audit writer's numbers, read from the app's Recorder at scrape time."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def describe(self) -> list[Metric]:
        return []  # the Recorder exists only once the app runs; nothing to describe before

    def collect(self) -> Iterator[Metric]:
        recorder = self.app.get(state.RECORDER)
        if recorder is None:
            return
        yield GaugeMetricFamily("llm_proxy_audit_queue_depth", "Audit rows waiting for the writer.",
                                value=recorder.depth)  # fmt: skip
        yield GaugeMetricFamily("llm_proxy_audit_queue_peak", "Most audit rows ever waiting at once.",
                                value=recorder.peak)  # fmt: skip
        yield CounterMetricFamily("llm_proxy_audit_rows_written", "Audit rows written (to the database "
                                  "or its spool).", value=recorder.written)  # fmt: skip
        yield CounterMetricFamily("llm_proxy_audit_write_failures", "Audit batch writes that failed "
                                  "(retried, or split to find the row refused).",
                                  value=recorder.failures)  # fmt: skip
        yield CounterMetricFamily("llm_proxy_audit_rows_reduced", "Audit rows SQLite refused, stored as "
                                  "metadata and the reason only.", value=recorder.reduced)  # fmt: skip
        yield CounterMetricFamily("llm_proxy_audit_rows_lost", "Audit rows not stored at all (each is "
                                  "logged at ERROR).", value=recorder.lost)  # fmt: skip
        store = recorder.store
        if isinstance(store, PostgresStore):
            yield GaugeMetricFamily("llm_proxy_audit_spooled_rows", "Audit rows waiting in the spool file "
                                    "for PostgreSQL.", value=store.spool.count)  # fmt: skip
            yield CounterMetricFamily("llm_proxy_audit_rows_sent_from_spool", "Spooled audit rows sent "
                                      "to PostgreSQL.", value=store.sent_from_spool)  # fmt: skip


class BackendCollector(Collector):
    """Each named backend's breaker and gate, read from the router at scrape time."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        router = self.app[state.ROUTER]
        up = GaugeMetricFamily("llm_proxy_backend_up", "1 while the backend's circuit breaker is closed, "
                               "0 while it is skipped and probed.", labels=["backend"])  # fmt: skip
        busy = GaugeMetricFamily("llm_proxy_backend_in_flight", "Requests each backend works on now.",
                                 labels=["backend"])  # fmt: skip
        waiting = GaugeMetricFamily("llm_proxy_backend_waiting", "Requests waiting for each backend's gate.",
                                    labels=["backend"])  # fmt: skip
        for member in router.members:
            up.add_metric([member.name], 0 if member.breaker.is_open else 1)
            busy.add_metric([member.name], member.gate.active)
            waiting.add_metric([member.name], member.gate.waiting)
        yield from (up, busy, waiting)


class ConnectionCollector(Collector):
    """Client connections (server.max_connections), read from the app's ConnectionLimit at scrape time."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        limit = self.app[connections.CONNECTIONS]
        yield GaugeMetricFamily("llm_proxy_client_connections", "Client connections open now.",
                                value=limit.open)  # fmt: skip
        yield CounterMetricFamily("llm_proxy_client_connections_closed_idle",
                                  "Idle client connections closed to make room for new ones.",
                                  value=limit.closed_idle)  # fmt: skip
        yield CounterMetricFamily("llm_proxy_client_connections_refused",
                                  "Client connections refused (503): every one had a request in hand.",
                                  value=limit.refused)  # fmt: skip


class CacheCollector(Collector):
    """The answer cache's numbers (cache:), read at scrape time."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        cache = self.app.get(state.CACHE)
        if cache is None:
            return
        yield CounterMetricFamily("llm_proxy_cache_hits", "Requests answered from the answer cache.",
                                  value=cache.hits)  # fmt: skip
        yield CounterMetricFamily("llm_proxy_cache_misses", "Requests that qualified for the cache and "
                                  "went to the backend.", value=cache.misses)  # fmt: skip
        yield CounterMetricFamily("llm_proxy_cache_stored", "Answers kept in the cache.",
                                  value=cache.stored)  # fmt: skip
        yield CounterMetricFamily("llm_proxy_cache_evictions", "Answers evicted to stay within "
                                  "cache.max_entries and cache.max_mb.", value=cache.evictions)  # fmt: skip
        yield GaugeMetricFamily("llm_proxy_cache_entries", "Answers in the cache now.", value=len(cache))
        yield GaugeMetricFamily("llm_proxy_cache_bytes", "Bytes the cache's answers take (cache.max_mb).",
                                value=cache.bytes)  # fmt: skip


class QuotaCollector(Collector):
    """Each key's use of its quota today (auth.keys[].quota): labels are the key names in the config."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        quotas = self.app.get(quota.QUOTAS)
        if quotas is None or not quotas.limits:
            return
        requests = GaugeMetricFamily("llm_proxy_quota_requests_used", "Requests charged to the key today "
                                     "(UTC).", labels=["key"])  # fmt: skip
        tokens = GaugeMetricFamily("llm_proxy_quota_tokens_used", "Tokens charged to the key today (UTC), "
                                   "as the backend reported them.", labels=["key"])  # fmt: skip
        requests_limit = GaugeMetricFamily("llm_proxy_quota_requests_limit", "The key's requests_per_day "
                                           "(0: no limit).", labels=["key"])  # fmt: skip
        tokens_limit = GaugeMetricFamily("llm_proxy_quota_tokens_limit", "The key's tokens_per_day "
                                         "(0: no limit).", labels=["key"])  # fmt: skip
        refused = CounterMetricFamily("llm_proxy_quota_refused", "Requests refused by the key's quota, "
                                      "by the limit they met.", labels=["key", "limit"])  # fmt: skip
        for name, limits in quotas.limits.items():
            usage = quotas.today(name)
            requests.add_metric([name], usage.requests)
            tokens.add_metric([name], usage.tokens)
            requests_limit.add_metric([name], limits.requests_per_day)
            tokens_limit.add_metric([name], limits.tokens_per_day)
            for limit in quota.LIMITS:
                refused.add_metric([name, limit], quotas.refused.get((name, limit), 0))
        yield from (requests, tokens, requests_limit, tokens_limit, refused)


class TelemetryCollector(Collector):
    """OpenTelemetry export (telemetry.enabled): spans delivered and dropped, read at scrape time."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        telemetry = self.app.get(state.TELEMETRY)
        if telemetry is None:
            return
        yield CounterMetricFamily("llm_proxy_telemetry_spans_exported", "Spans the OTLP collector accepted.",
                                  value=telemetry.exported)  # fmt: skip
        yield CounterMetricFamily("llm_proxy_telemetry_spans_dropped", "Spans that never reached the "
                                  "collector: its queue was full, or the export failed or timed out.",
                                  value=telemetry.dropped)  # fmt: skip


async def scrape(request: web.Request) -> web.Response:
    """``GET /metrics``."""
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE})


def setup(app: web.Application) -> None:
    """Give ``app`` its metrics and, unless ``server.metrics`` is off, the /metrics route.

    Needs ``app[state.LIVE]`` (:func:`llm_proxy.server.reload.setup`): labels follow the config in force;
    and ``app[connections.CONNECTIONS]`` by the first scrape.
    """
    live = app[state.LIVE]
    metrics = Metrics(lambda: live.config)
    metrics.registry.register(AuditCollector(app))
    metrics.registry.register(ConnectionCollector(app))
    metrics.registry.register(BackendCollector(app))
    metrics.registry.register(CacheCollector(app))
    metrics.registry.register(QuotaCollector(app))
    if app[state.CONFIG].telemetry.enabled:
        metrics.registry.register(TelemetryCollector(app))
    app[METRICS] = metrics
    if app[state.CONFIG].server.metrics:
        app.router.add_get("/metrics", scrape)
