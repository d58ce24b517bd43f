"""Real OTLP receivers for the telemetry tests.

- :class:`Phoenix`: Arize Phoenix (``arize-phoenix`` from PyPI), a trace store
  people run to look at LLM traces. It takes OTLP/HTTP at ``/v1/traces`` and
  answers ``GET /v1/projects/default/spans`` with what it stored: names,
  attributes, status, parent, events. tests/install.sh puts it in a virtualenv
  of its own (``tests/.cache/phoenix``: its 140 packages stay out of the
  project's environment); ``PHOENIX=/path/to/phoenix`` points at another one.
  It starts in about 10 s, offline, with its analytics off.
- :class:`Collector`: Phoenix stores no metrics, so metrics (and resource
  attributes, which its API does not show) are read by a small aiohttp server
  that decodes OTLP's ``ExportMetricsServiceRequest`` and
  ``ExportTraceServiceRequest`` with the official ``opentelemetry-proto``
  messages: the wire format is the real one, decoded by the real definitions.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from .process import free_port

PHOENIX_VENV = Path(__file__).parent / ".cache" / "phoenix"


def phoenix_binary() -> str:
    """The ``phoenix`` command tests/install.sh installed (or $PHOENIX)."""
    found = os.environ.get("PHOENIX") or str(PHOENIX_VENV / "bin" / "phoenix")
    if not Path(found).is_file():
        raise AssertionError(f"{found} not found: run `bash tests/install.sh` (it installs arize-phoenix)")
    return found


class Phoenix:
    """One ``phoenix serve`` on 127.0.0.1 with a working folder of its own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "phoenix.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """What telemetry.endpoint names: the base URL (/v1/traces is added)."""
        return self.url

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PHOENIX_WORKING_DIR": str(self.folder),
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(self.port),
            "PHOENIX_GRPC_PORT": str(self.grpc_port),
            "PHOENIX_TELEMETRY_ENABLED": "false",
            "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [phoenix_binary(), "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 90  # bounded: its first start migrates its database
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"phoenix exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"phoenix did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    async def spans(self, trace_id: str, expected: int, within: float = 20.0) -> list[dict[str, Any]]:
        """The spans of one trace that Phoenix holds, once ``expected`` are there (oldest first)."""
        deadline = asyncio.get_running_loop().time() + within
        found: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as http:
            while True:
                url = f"{self.url}/v1/projects/default/spans"
                async with http.get(url, params={"trace_id": trace_id, "limit": "1000"}) as resp:
                    if resp.status == 200:
                        found = list(reversed((await resp.json())["data"]))
                if len(found) >= expected or asyncio.get_running_loop().time() > deadline:
                    return found
                await asyncio.sleep(0.2)

    async def count(self) -> int:
        """How many spans Phoenix holds in all (up to 1000)."""
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{self.url}/v1/projects/default/spans", params={"limit": "1000"}) as resp,
            ):
                if resp.status != 200:
                    return 0
                return len((await resp.json())["data"])
        except aiohttp.ClientConnectionError:
            return 0

    def tail(self) -> str:
        """The end of its log, for a failure's message."""
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


class Collector:
    """An OTLP/HTTP receiver that decodes what it is sent with the official protobuf messages."""

    def __init__(self) -> None:
        self.traces: list[dict[str, Any]] = []  # ExportTraceServiceRequest, as dicts
        self.metrics: list[dict[str, Any]] = []  # ExportMetricsServiceRequest, as dicts
        self.headers: list[dict[str, str]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_post("/v1/metrics", self._metrics)
        return app

    async def _traces(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest.FromString(await request.read())
        self.traces.append(MessageToDict(message, preserving_proto_field_name=True))
        self.headers.append(dict(request.headers))
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    async def _metrics(self, request: web.Request) -> web.Response:
        message = ExportMetricsServiceRequest.FromString(await request.read())
        self.metrics.append(MessageToDict(message, preserving_proto_field_name=True))
        self.headers.append(dict(request.headers))
        body = ExportMetricsServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    def spans(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Every span received, with its resource's attributes."""
        for request in self.traces:
            for resource_spans in request.get("resource_spans", []):
                resource = attributes(resource_spans.get("resource", {}).get("attributes", []))
                for scope in resource_spans.get("scope_spans", []):
                    for span in scope.get("spans", []):
                        yield resource, span

    def points(self, name: str) -> list[dict[str, Any]]:
        """The data points of metric ``name`` in every export received."""
        out = []
        for request in self.metrics:
            for resource_metrics in request.get("resource_metrics", []):
                for scope in resource_metrics.get("scope_metrics", []):
                    for metric in scope.get("metrics", []):
                        if metric["name"] == name:
                            kind = next(k for k in ("histogram", "sum", "gauge") if k in metric)
                            out.extend(metric[kind].get("data_points", []))
        return out


def attributes(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """OTLP's key/value list as a dict of plain values."""
    out: dict[str, Any] = {}
    for pair in pairs:
        value = pair.get("value", {})
        if "string_value" in value:
            out[pair["key"]] = value["string_value"]
        elif "int_value" in value:
            out[pair["key"]] = int(value["int_value"])
        elif "double_value" in value:
            out[pair["key"]] = value["double_value"]
        elif "bool_value" in value:
            out[pair["key"]] = value["bool_value"]
        elif "array_value" in value:
            out[pair["key"]] = [next(iter(v.values())) for v in value["array_value"].get("values", [])]
    return out
