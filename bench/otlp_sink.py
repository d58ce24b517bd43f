"""An OTLP/HTTP receiver for bench/telemetry.py: decodes each export and counts its spans.

Run: python bench/otlp_sink.py PORT. ``GET /count`` answers the spans and metric
exports received so far, as JSON.
"""

from __future__ import annotations

import sys

from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

COUNTS = {"spans": 0, "metric_exports": 0}
PROTOBUF = "application/x-protobuf"


async def traces(request: web.Request) -> web.Response:
    message = ExportTraceServiceRequest.FromString(await request.read())
    COUNTS["spans"] += sum(len(s.spans) for r in message.resource_spans for s in r.scope_spans)
    return web.Response(
        body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
    )


async def metrics(request: web.Request) -> web.Response:
    ExportMetricsServiceRequest.FromString(await request.read())
    COUNTS["metric_exports"] += 1
    return web.Response(
        body=ExportMetricsServiceResponse().SerializeToString(), content_type="application/x-protobuf"
    )


async def count(request: web.Request) -> web.Response:
    return web.json_response(COUNTS)


def main() -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    app.router.add_post("/v1/metrics", metrics)
    app.router.add_get("/count", count)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)


if __name__ == "__main__":
    main()
