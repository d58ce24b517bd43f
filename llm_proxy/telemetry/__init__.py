"""OpenTelemetry: every exchange as a GenAI span, and the GenAI metrics, through OTLP.

Off unless ``telemetry.enabled`` is true. Then :func:`load` imports the SDK
(``pip install 'llm-proxy[otel]'``) from :mod:`.otel`; otherwise nothing of
OpenTelemetry is imported and each hook below costs one ``ContextVar.get``.

The hooks, and who calls them::

    server/recording.py  begin(request headers, exchange) → Trace, made current
                         for the request's task; Trace.end(exchange) once the
                         writer has stored the row (Exchange.on_stored), so the
                         span carries the row's id and turn
    api/pipeline.py      note_request(api, endpoint, body) once the body is parsed;
                         attempt(backend, model, exchange) around the backend call
    backends/transport   outgoing() → the headers (traceparent) of the current
                         attempt, added to every backend request

:func:`attempt` is the one per backend tried: a router that tries several
backends opens one per try, and each try's requests carry that try's
``traceparent``. It is a plain context manager over ContextVars, so it works
from any layer without passing a trace around.

This package sits beside ``audit`` and ``config``: anything may use it, and it
uses nothing above them.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from ..audit.exchange import Exchange
from ..config import TelemetryConfig
from ..errors import ConfigError, ProxyError


class Attempt(Protocol):
    """One try of one backend: a child span of the exchange's."""

    @property
    def headers(self) -> Mapping[str, str]:
        """What the backend request carries to continue the trace (``traceparent``)."""

    def end(self, status: int | None, error: str | None) -> None:
        """Close the try with the status it ended with (and the error, if any)."""


class Trace(Protocol):
    """The span of one exchange, from the request's arrival to its recorded end."""

    @property
    def trace_id(self) -> str | None:
        """The trace id as 32 hex digits when this exchange is sampled, else None."""

    def request(self, api: str, endpoint: str, body: Mapping[str, Any] | None) -> None:
        """The parsed request: its settings (and, with capture_content, its messages)."""

    def attempt(self, backend: str, model: str | None, endpoint: str | None = None) -> Attempt:
        """Start one try of ``backend`` (its type or name) for ``model``, at ``endpoint`` when known."""

    def end(self, exchange: Exchange) -> None:
        """Close the span with everything the finished exchange says; records the metrics."""


class Telemetry(Protocol):
    """The app's exporters and providers."""

    @property
    def exported(self) -> int:
        """Spans the collector accepted."""

    @property
    def dropped(self) -> int:
        """Spans that never reached the collector: queue full, export failed or timed out."""

    def begin(self, headers: Mapping[str, str], exchange: Exchange) -> Trace:
        """Start the exchange's span, continuing the client's ``traceparent`` if it sent one."""

    async def close(self) -> None:
        """Export what is queued (within telemetry.timeout) and stop."""


log = logging.getLogger("llm_proxy.telemetry")

# The trace of the request this task serves, and the backend try it is in.
_CURRENT: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("llm_proxy_trace", default=None)
_ATTEMPT: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar("llm_proxy_attempt", default=None)


def load(config: TelemetryConfig, model_label: Any = None) -> Telemetry | None:
    """The app's telemetry when ``telemetry.enabled``, else None (nothing imported).

    ``model_label(exchange)`` gives the bounded model name for metric attributes
    (the Prometheus metrics' rule): a made-up model name must not grow the series.
    """
    if not config.enabled:
        return None
    try:
        from . import otel
    except ImportError as exc:
        raise ConfigError(
            f"telemetry.enabled needs the OpenTelemetry SDK ({exc.name} is missing): "
            "pip install 'llm-proxy[otel]'"
        ) from None
    return otel.OtelTelemetry(config, model_label)


@contextmanager
def current(trace: Trace | None) -> Iterator[None]:
    """Make ``trace`` the current request's trace for the duration (the recording middleware)."""
    token = _CURRENT.set(trace)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def note_request(api: str, endpoint: str, body: Mapping[str, Any] | None) -> None:
    """Give the current trace the parsed request; nothing when there is none."""
    trace = _CURRENT.get()
    if trace is not None:
        try:
            trace.request(api, endpoint, body)
        except Exception:  # telemetry never fails a request
            log.exception("telemetry: the request's attributes could not be read")


@contextmanager
def attempt(
    backend: str, model: str | None, exchange: Exchange | None = None, endpoint: str | None = None
) -> Iterator[None]:
    """One backend try: a child span, whose ``traceparent`` the backend requests inside it carry.

    Its status is the ProxyError it ended with, else ``exchange``'s status and
    error as they stand at the end (a stream's are known only once relayed).
    """
    trace = _CURRENT.get()
    if trace is None:
        yield
        return
    try:
        one = trace.attempt(backend, model, endpoint)
    except Exception:  # telemetry never fails a request: the try goes on untraced
        log.exception("telemetry: the backend try's span could not be started")
        yield
        return
    token = _ATTEMPT.set(one)
    status: int | None = None
    error: str | None = None
    try:
        yield
    except ProxyError as exc:
        status, error = exc.status, exc.message
        raise
    except BaseException as exc:
        status, error = 500, f"{type(exc).__name__}: {exc}"
        raise
    finally:
        _ATTEMPT.reset(token)
        if status is None and exchange is not None:
            status, error = exchange.status_code, exchange.error
        try:
            one.end(status, error)
        except Exception:
            log.exception("telemetry: the backend try's span could not be ended")


def outgoing() -> Mapping[str, str] | None:
    """The headers that continue the trace in a backend request, None outside a traced try."""
    one = _ATTEMPT.get()
    return None if one is None else one.headers
