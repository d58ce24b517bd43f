"""OpenTelemetry: every exchange as a GenAI span, and the GenAI metrics, through OTLP.

Off unless ``telemetry.enabled`` is true. Then :func:`load` imports the SDK
(``pip install 'llm-proxy[otel]'``) from :mod:`.otel`; otherwise nothing of
OpenTelemetry is imported and each hook below costs one ``ContextVar.get``.

The hooks, and who calls them::

    server/recording.py  begin(request headers, exchange) → Trace, made current
                         for the request's task; Trace.end(exchange) once the
                         writer has stored the row (Exchange.on_stored), so the
                         span carries the row's id and turn
    api/pipeline.py      note_request(api, endpoint, body) once the body is parsed
    backends/router.py   begin_try(name, type, model, endpoint) per backend tried,
                         sending(try) around its request, end_try(try, status,
                         error) when it is over (a stream's when it closes)
    backends/transport   outgoing() → the headers (traceparent) of the try in
                         progress, added to every backend request

The hooks find the request's trace in a ContextVar, so no layer passes a trace
around, and each is a no-op without telemetry.

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
from ..errors import ConfigError


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

    def attempt(self, name: str, kind: str, model: str | None, endpoint: str | None = None) -> Attempt:
        """Start one try of backend ``name`` (of type ``kind``) for ``model``, at ``endpoint`` if known."""

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


def load(config: TelemetryConfig, model_label: Any = None, content: Any = None) -> Telemetry | None:
    """The app's telemetry when ``telemetry.enabled``, else None (nothing imported).

    ``model_label(exchange)`` gives the bounded model name for metric attributes
    (the Prometheus metrics' rule): a made-up model name must not grow the series.
    ``content(exchange, json_text)`` is what ``capture_content`` may export of a
    message attribute (redacted as the stored copy is; None: nothing), by default all of it.
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
    return otel.OtelTelemetry(config, model_label, content)


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


def begin_try(name: str, kind: str, model: str | None, endpoint: str | None = None) -> Attempt | None:
    """Start one backend try's span under the current request's; None without telemetry.

    ``name`` is the named backend, ``kind`` its type, ``endpoint`` its URL when
    it has one. The router calls this once per backend it tries, and
    :func:`end_try` when the try is over (a stream's, when it closes).
    """
    trace = _CURRENT.get()
    if trace is None:
        return None
    try:
        return trace.attempt(name, kind, model, endpoint)
    except Exception:  # telemetry never fails a request: the try goes on untraced
        log.exception("telemetry: the backend try's span could not be started")
        return None


@contextmanager
def sending(one: Attempt | None) -> Iterator[None]:
    """Backend requests sent inside carry ``one``'s ``traceparent`` (:func:`outgoing`)."""
    if one is None:
        yield
        return
    token = _ATTEMPT.set(one)
    try:
        yield
    finally:
        _ATTEMPT.reset(token)


def end_try(one: Attempt | None, status: int | None, error: str | None) -> None:
    """Close a backend try's span with the status it ended with (and its error)."""
    if one is None:
        return
    try:
        one.end(status, error)
    except Exception:
        log.exception("telemetry: the backend try's span could not be ended")


def outgoing() -> Mapping[str, str] | None:
    """The headers that continue the trace in a backend request, None outside a traced try."""
    one = _ATTEMPT.get()
    return None if one is None else one.headers
