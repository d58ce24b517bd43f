"""The OTLP exporters ``telemetry.protocol`` picks: HTTP with protobuf bodies, or gRPC.

OTLP/HTTP comes with the ``otel`` extra. gRPC needs grpcio, a large compiled
dependency, so it has an extra of its own (``otel-grpc``). A protocol left at
its default gives way to ``OTEL_EXPORTER_OTLP_PROTOCOL`` (or its ``TRACES``
form), as the other settings give way to their variables.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.trace.export import SpanExporter

from ..config import TelemetryConfig
from ..errors import ConfigError

DEFAULT_PROTOCOL = TelemetryConfig.protocol


def protocol(config: TelemetryConfig) -> str:
    """The protocol in force: the config's, or the environment's when the config says the default."""
    if config.protocol != DEFAULT_PROTOCOL:
        return config.protocol
    env = os.environ
    named = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    return "grpc" if named == "grpc" else DEFAULT_PROTOCOL


def create(config: TelemetryConfig) -> tuple[SpanExporter, Callable[[], MetricExporter], str]:
    """The span exporter, a maker of the metric exporter, and where they send (for the log)."""
    headers: dict[str, str] | None = dict(config.headers) or None
    base = config.endpoint.rstrip("/")
    common: dict[str, Any] = {"headers": headers, "timeout": config.timeout}
    if protocol(config) == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter as GrpcMetrics,
            )
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans
        except ImportError:
            raise ConfigError(
                "telemetry.protocol grpc needs the gRPC exporter: pip install 'llm-proxy[otel-grpc]'"
            ) from None
        endpoint = base or None  # None: OTEL_EXPORTER_OTLP_ENDPOINT, else localhost:4317
        where = base or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "localhost:4317"
        spans = GrpcSpans(endpoint=endpoint, **common)
        return spans, lambda: GrpcMetrics(endpoint=endpoint, **common), f"{where} (OTLP/gRPC)"
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    traces = f"{base}/v1/traces" if base else None  # None: the SDK reads OTEL_EXPORTER_OTLP_*
    metrics = f"{base}/v1/metrics" if base else None
    http_spans = OTLPSpanExporter(endpoint=traces, **common)
    where = traces or str(getattr(http_spans, "_endpoint", None) or "the collector")
    return http_spans, lambda: OTLPMetricExporter(endpoint=metrics, **common), f"{where} (OTLP/HTTP)"
