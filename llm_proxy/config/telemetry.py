"""The ``telemetry:`` section: OpenTelemetry traces and metrics, off unless enabled.

A value left empty here is read by the OpenTelemetry SDK from its standard
environment variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``,
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``…);
a value given here wins over them.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

# OTLP over HTTP with protobuf bodies (the otel extra), or over gRPC (the otel-grpc
# extra: its exporter needs grpcio, a large compiled dependency).
TelemetryProtocol = Literal["http/protobuf", "grpc"]


@dataclass(frozen=True)
class TelemetryConfig:
    """Where spans and metrics go, and what they may carry."""

    # Nothing is imported or spent unless this is true (and the `otel` extra installed).
    enabled: bool = False
    # The collector's base URL (http://collector:4318): /v1/traces and /v1/metrics are
    # added (gRPC: http://collector:4317 as it is). Empty: OTEL_EXPORTER_OTLP_ENDPOINT,
    # else http://localhost:4318 (gRPC: localhost:4317).
    endpoint: str = ""
    # At this default, OTEL_EXPORTER_OTLP_PROTOCOL=grpc picks gRPC.
    protocol: TelemetryProtocol = "http/protobuf"
    # Sent with every export (an API key of a hosted collector); empty: OTEL_EXPORTER_OTLP_HEADERS.
    headers: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}), repr=False)
    # Empty: OTEL_SERVICE_NAME, else "llm-proxy".
    service_name: str = ""
    # Share of exchanges traced (0 to 1), unless a client's traceparent already decided.
    # At 1.0 (the default) OTEL_TRACES_SAMPLER, when set, decides instead.
    sampling: float = 1.0
    # Prompts and answers as gen_ai.input.messages / gen_ai.output.messages (opt-in:
    # they go to whoever runs the collector).
    capture_content: bool = False
    # Each attribute value (a captured prompt, say) is cut at this many KiB.
    max_attribute_kb: int = 64
    # A link to a trace for `logs show`, e.g. https://tempo.example/trace/{trace_id}.
    trace_url: str = ""
    # Spans waiting for export; beyond this they are dropped (and counted), never waited for.
    max_queue: int = 2048
    # Seconds one export may take before it is given up (its spans counted as dropped).
    timeout: float = 10.0
    # GenAI metrics through OTLP as well (gen_ai.client.token.usage, …).
    metrics: bool = True
