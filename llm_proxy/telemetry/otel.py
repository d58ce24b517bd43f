"""The OpenTelemetry SDK behind :mod:`llm_proxy.telemetry`: providers, OTLP exporters, spans, metrics.

Imported only when ``telemetry.enabled`` (the ``otel`` extra). Each app gets
providers of its own, never the process-global ones, so two apps in one
process (the tests) do not share them.

Export never slows or breaks a request. Spans are handed to the SDK's
:class:`BatchSpanProcessor`: a bounded queue (``telemetry.max_queue``) that a
thread of its own sends in batches. A collector that is down or slow costs
that thread's time; a full queue drops the span. Both are counted
(:attr:`OtelTelemetry.dropped`, ``llm_proxy_telemetry_spans_dropped_total`` in
/metrics) and the log says once when export starts and stops failing, instead
of the SDK's line per batch or per span.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import propagate
from opentelemetry import trace as api
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode

from .. import __version__
from ..audit.exchange import Exchange
from ..config import TelemetryConfig
from . import exporters, genai

log = logging.getLogger("llm_proxy.telemetry")

# The conventions' advised histogram buckets (gen-ai-metrics.md).
TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]
DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
# The SDK logs each failed batch and each span a full queue drops; the counters
# and one line per change of state say the same without flooding the log.
_QUIET = ("opentelemetry.exporter", "opentelemetry.sdk._shared_internal", "opentelemetry.sdk.trace")
FIRST_TOKEN = "gen_ai.first_token"  # the span event at the answer's first token
NS = 1_000_000_000


class _Counted(SpanExporter):
    """The OTLP exporter, counting what it delivers and what it fails to."""

    def __init__(self, inner: SpanExporter, where: str) -> None:
        self.inner = inner
        self.where = where
        self.exported = 0
        self.failed = 0
        self._failing = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception as exc:  # an exporter must not kill the export thread
            log.debug("span export raised %s", exc)
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
            if self._failing:
                log.warning("telemetry: spans reach %s again", self.where)
                self._failing = False
        else:
            self.failed += len(spans)
            if not self._failing:
                log.warning(
                    "telemetry: span export to %s failed; spans are dropped until it answers "
                    "(counted in llm_proxy_telemetry_spans_dropped_total)",
                    self.where,
                )
                self._failing = True
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class _Batches(BatchSpanProcessor):
    """The SDK's batch processor, counting the spans its full queue drops."""

    def __init__(self, exporter: SpanExporter, max_queue: int, timeout: float) -> None:
        # The SDK refuses a batch larger than the queue: a small telemetry.max_queue caps it.
        try:
            batch = int(os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512"))
        except ValueError:
            batch = 512
        super().__init__(
            exporter,
            max_queue_size=max_queue,
            max_export_batch_size=max(1, min(batch, max_queue)),
            export_timeout_millis=timeout * 1000,
        )
        self.max_queue = max_queue
        self.timeout_ms = int(timeout * 1000)
        self.dropped = 0

    def shutdown(self) -> None:
        """Send what is queued within telemetry.timeout (the SDK would wait 30 s), then stop."""
        inner = getattr(self, "_batch_processor", None)
        try:
            inner.shutdown(timeout_millis=self.timeout_ms)  # type: ignore[union-attr]
        except (AttributeError, TypeError):  # another SDK version: its own shutdown
            super().shutdown()

    def on_end(self, span: ReadableSpan) -> None:
        # The queue is the SDK's own (a deque it drops the oldest from when full);
        # read defensively: another SDK version may hold it elsewhere.
        queue = getattr(getattr(self, "_batch_processor", None), "_queue", None)
        if queue is not None and len(queue) >= self.max_queue and span.context.trace_flags.sampled:
            self.dropped += 1
        super().on_end(span)


class OtelTelemetry:
    """Tracer and meter providers with OTLP exporters, as ``telemetry:`` configures them."""

    def __init__(
        self,
        config: TelemetryConfig,
        model_label: Callable[[Exchange], str] | None = None,
        content: Callable[[Exchange, str], str | None] | None = None,
    ) -> None:
        self.config = config
        self.model_label = model_label or (lambda exchange: exchange.model or "")
        # What capture_content exports of a message attribute: redacted as the stored copy is.
        self.content = content or (lambda _exchange, text: text)
        for name in _QUIET:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        resource = Resource.create(_resource(config))
        exporter, metric_exporter, where = exporters.create(config)
        self._exporter = _Counted(exporter, where)
        self._batches = _Batches(self._exporter, config.max_queue, config.timeout)
        self.tracer_provider = TracerProvider(
            resource=resource,
            sampler=_sampler(config),
            span_limits=SpanLimits(max_attribute_length=config.max_attribute_kb * 1024),
        )
        self.tracer_provider.add_span_processor(self._batches)
        self.tracer = self.tracer_provider.get_tracer("llm_proxy", __version__)
        self.meter_provider: MeterProvider | None = None
        if config.metrics:
            reader = PeriodicExportingMetricReader(
                metric_exporter(), export_timeout_millis=config.timeout * 1000
            )
            self.meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
            meter = self.meter_provider.get_meter("llm_proxy", __version__)
            self.duration = meter.create_histogram(
                "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration.",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            )  # fmt: skip
            self.tokens = meter.create_histogram(
                "gen_ai.client.token.usage", unit="{token}",
                description="Number of input and output tokens used.",
                explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
            )  # fmt: skip
            self.ttft = meter.create_histogram(
                "gen_ai.server.time_to_first_token", unit="s",
                description="Time to generate first token for successful responses.",
                explicit_bucket_boundaries_advisory=TTFT_BUCKETS,
            )  # fmt: skip
        log.info(
            "telemetry: exporting spans%s to %s, sampling %g%s",
            " and metrics" if config.metrics else "", where, config.sampling,
            ", with content" if config.capture_content else "",
        )  # fmt: skip

    @property
    def exported(self) -> int:
        return self._exporter.exported

    @property
    def dropped(self) -> int:
        return self._exporter.failed + self._batches.dropped

    def begin(self, headers: Mapping[str, str], exchange: Exchange) -> ExchangeTrace:
        parent = propagate.extract(headers)
        span = self.tracer.start_span(
            genai.span_name(exchange), context=parent, kind=SpanKind.SERVER,
            start_time=int(exchange.started * NS),
        )  # fmt: skip
        return ExchangeTrace(self, span, exchange)

    async def close(self) -> None:
        """Flush and stop the providers on a thread: a collector that is down costs at most the timeout."""

        def stop() -> None:
            self.tracer_provider.shutdown()
            if self.meter_provider is not None:
                self.meter_provider.shutdown(timeout_millis=self.config.timeout * 1000)

        try:
            await asyncio.wait_for(asyncio.to_thread(stop), self.config.timeout + 1)
        except TimeoutError:
            seconds = self.config.timeout
            log.warning("telemetry: the collector did not take the last spans within %gs", seconds)
        # What the last export had no time for is lost too.
        self._batches.dropped += len(getattr(getattr(self._batches, "_batch_processor", None), "_queue", ()))
        log.info("telemetry closed: %d spans exported, %d dropped", self.exported, self.dropped)


class ExchangeTrace:
    """The span of one exchange (SERVER kind), and its backend tries (CLIENT kind) below it."""

    def __init__(self, telemetry: OtelTelemetry, span: Any, exchange: Exchange) -> None:
        self.telemetry = telemetry
        self.span = span
        self.exchange = exchange
        self.context = api.set_span_in_context(span)
        self.attributes: dict[str, Any] = {}
        context = span.get_span_context()
        self.trace_id = f"{context.trace_id:032x}" if context.trace_flags.sampled else None
        exchange.trace_id = self.trace_id

    def request(self, api_name: str, endpoint: str, body: Mapping[str, Any] | None) -> None:
        if not self.span.is_recording():
            return
        self.attributes.update(genai.request_attributes(api_name, body))
        if self.telemetry.config.capture_content:
            self.attributes.update(self._content(genai.input_messages(api_name, endpoint, body)))

    def _content(self, attributes: Mapping[str, Any]) -> dict[str, Any]:
        """Message attributes as the audit trail's policy lets them out (redacted, or none)."""
        out = {}
        for name, value in attributes.items():
            kept = self.telemetry.content(self.exchange, value) if isinstance(value, str) else value
            if kept is not None:
                out[name] = kept
        return out

    def attempt(self, name: str, kind: str, model: str | None, endpoint: str | None = None) -> BackendAttempt:
        return BackendAttempt(self, name, kind, model, endpoint)

    def end(self, exchange: Exchange) -> None:
        """Close the span (at the exchange's own end time) once its row is stored; records the metrics."""
        try:
            self._end(exchange)
        except Exception:  # telemetry must never cost a request its row
            log.exception("telemetry: the span of request %s could not be ended", exchange.request_id)

    def _end(self, exchange: Exchange) -> None:
        span = self.span
        status = exchange.status_code
        op = genai.operation(exchange.endpoint)
        if span.is_recording():
            span.update_name(genai.span_name(exchange))
            attributes = _exchange_attributes(exchange, op)
            attributes.update(self.attributes)
            attributes.update(genai.response_attributes(exchange))
            if self.telemetry.config.capture_content:
                attributes.update(self._content(genai.output_messages(exchange)))
            span.set_attributes(attributes)
            if exchange.ttft_ms is not None:
                span.add_event(FIRST_TOKEN, timestamp=int((exchange.started + exchange.ttft_ms / 1000) * NS))
            if status is not None and status >= 500:
                span.set_status(Status(StatusCode.ERROR, exchange.error or str(status)))
            elif status is not None and status < 400:
                span.set_status(Status(StatusCode.OK))
        end = exchange.started + (exchange.latency_ms or 0) / 1000
        span.end(end_time=int(end * NS))
        if op is not None and self.telemetry.meter_provider is not None:
            self._record(exchange, op)

    def _record(self, exchange: Exchange, op: str) -> None:
        """The GenAI metrics of one finished operation, with a bounded model attribute."""
        t = self.telemetry
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": op,
            "gen_ai.provider.name": genai.provider(exchange.backend_type),
        }
        if exchange.model:
            attributes["gen_ai.request.model"] = t.model_label(exchange)
        failed = exchange.status_code is None or exchange.status_code >= 400
        if failed:
            attributes["error.type"] = str(exchange.status_code or "unknown")
        if exchange.latency_ms is not None:
            t.duration.record(exchange.latency_ms / 1000, attributes)
        for kind, count in (("input", exchange.prompt_tokens), ("output", exchange.completion_tokens)):
            if isinstance(count, int) and not isinstance(count, bool) and 0 <= count < 2**63:
                t.tokens.record(count, {**attributes, "gen_ai.token.type": kind})
        if exchange.ttft_ms is not None and not failed:
            t.ttft.record(exchange.ttft_ms / 1000, attributes)


class BackendAttempt:
    """One backend try: a CLIENT span under the exchange's, whose context the backend request carries."""

    def __init__(
        self, trace: ExchangeTrace, name: str, kind: str, model: str | None, endpoint: str | None
    ) -> None:
        telemetry = trace.telemetry
        attributes: dict[str, Any] = {"gen_ai.provider.name": genai.provider(kind), "llm_proxy.backend": name}
        if model:
            attributes["gen_ai.request.model"] = model
        if endpoint:
            attributes.update(server_address(endpoint))
        self.span = telemetry.tracer.start_span(
            f"{kind} {model}" if model else kind, context=trace.context, kind=SpanKind.CLIENT,
            attributes=attributes,
        )  # fmt: skip
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=api.set_span_in_context(self.span))
        self.headers: Mapping[str, str] = carrier
        self._ended = False

    def end(self, status: int | None, error: str | None) -> None:
        if self._ended:
            return
        self._ended = True
        span = self.span
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if status is None or status >= 400 or error:
            span.set_attribute("error.type", str(status or "unknown"))
            span.set_status(Status(StatusCode.ERROR, error or str(status)))
        span.end()


def _exchange_attributes(exchange: Exchange, op: str | None) -> dict[str, Any]:
    """What every exchange span carries: the route, the API, the client, the record's ids."""
    out: dict[str, Any] = {
        "http.request.method": exchange.method,
        "http.route": exchange.endpoint,
        "llm_proxy.api": exchange.api,
        "llm_proxy.backend_type": exchange.backend_type,
    }
    if op is not None:
        out["gen_ai.operation.name"] = op
        out["gen_ai.provider.name"] = genai.provider(exchange.backend_type)
    optional = {
        "llm_proxy.row_id": exchange.row_id,
        # The audit trail's turn: every round of one spoken request, named after its first row.
        "gen_ai.conversation.id": None if exchange.turn_id is None else str(exchange.turn_id),
        "http.response.status_code": exchange.status_code,
        "gen_ai.request.model": exchange.model,
        "llm_proxy.backend_model": exchange.backend_model,
        "llm_proxy.request_id": exchange.request_id,
        "llm_proxy.key_name": exchange.key_name,
        "llm_proxy.stream": exchange.stream,
        "client.address": exchange.client_addr,
        "user_agent.original": exchange.user_agent,
        "llm_proxy.ttft_ms": exchange.ttft_ms,
        "llm_proxy.cache_hit": exchange.cache_hit,  # answered from the answer cache: no backend try
    }
    out.update({k: v for k, v in optional.items() if v is not None})
    if exchange.status_code is not None and exchange.status_code >= 400:
        out["error.type"] = str(exchange.status_code)
    if exchange.error:
        out["llm_proxy.error"] = exchange.error
    return out


def _resource(config: TelemetryConfig) -> dict[str, Any]:
    """service.name from the config, else OTEL_SERVICE_NAME, else llm-proxy (Resource reads the env)."""
    out: dict[str, Any] = {"service.version": __version__}
    if config.service_name:
        out["service.name"] = config.service_name
    elif not os.environ.get("OTEL_SERVICE_NAME") and "service.name=" not in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        out["service.name"] = "llm-proxy"
    return out


def _sampler(config: TelemetryConfig) -> Sampler | None:
    """The share of traces kept; at 1.0 an OTEL_TRACES_SAMPLER in the environment decides."""
    if config.sampling == 1.0 and os.environ.get("OTEL_TRACES_SAMPLER"):
        return None  # the SDK builds it from OTEL_TRACES_SAMPLER(_ARG)
    return ParentBased(TraceIdRatioBased(config.sampling))


def server_address(endpoint: str) -> dict[str, Any]:
    """``server.address`` and ``server.port`` of a backend URL."""
    url = urlsplit(endpoint)
    out: dict[str, Any] = {}
    if url.hostname:
        out["server.address"] = url.hostname
        out["server.port"] = url.port or (443 if url.scheme == "https" else 80)
    return out
