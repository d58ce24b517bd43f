"""Log lines on stderr, as text for people or as JSON objects for log collectors.

``server.log_format`` picks the formatter; SIGHUP may switch it while running.
Fields passed with ``extra=`` (the access line's request id, status, latency…)
become keys of the JSON object; the text format carries them in the message.
"""

from __future__ import annotations

import atexit
import copy
import logging
import logging.handlers
import sys
from datetime import UTC, datetime
from queue import SimpleQueue
from typing import IO, Any

import orjson

ACCESS = logging.getLogger("llm_proxy.access")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Keys that every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted already, on its way through the hand-off queue
            data["exception"] = record.exc_text
        return orjson.dumps(data, default=str).decode()


def formatter(log_format: str) -> logging.Formatter:
    """The formatter ``server.log_format`` names."""
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


class _HandOff(logging.handlers.QueueHandler):
    """Queues records for the writer thread, their message fixed but not yet formatted."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Arguments are merged now (they may change once this returns) and a
        # traceback is rendered now (its frames go away); the rest waits.
        record = copy.copy(record)
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


_handler: logging.Handler | None = None
_listener: logging.handlers.QueueListener | None = None
_hand_off: logging.Handler | None = None


def setup(log_format: str, stream: IO[str] | None = None) -> None:
    """Send INFO and above to stderr in ``log_format`` (the ``serve`` command calls this once).

    Lines are formatted and written by a thread of their own: one access line
    per request would otherwise cost the event loop a write() each (a tenth of
    its time under load, measured with py-spy).
    """
    global _handler, _listener, _hand_off
    root = logging.getLogger()
    stop()
    _handler = logging.StreamHandler(stream or sys.stderr)
    _handler.setFormatter(formatter(log_format))
    queue: SimpleQueue[logging.LogRecord] = SimpleQueue()
    _listener = logging.handlers.QueueListener(queue, _handler)
    _listener.start()
    _hand_off = _HandOff(queue)
    root.addHandler(_hand_off)
    root.setLevel(logging.INFO)
    atexit.register(stop)


def stop() -> None:
    """Write what is queued and stop the writer thread (at exit, or before a new setup)."""
    global _listener, _hand_off
    if _hand_off is not None:
        logging.getLogger().removeHandler(_hand_off)
        _hand_off = None
    if _listener is not None:
        _listener.stop()
        _listener = None


def set_format(log_format: str) -> None:
    """Switch the format of the handler :func:`setup` installed (a reload)."""
    if _handler is not None:
        _handler.setFormatter(formatter(log_format))


def access(
    *,
    request_id: str | None,
    method: str,
    path: str,
    status: int,
    latency_ms: int,
    model: str | None,
    backend: str,
) -> None:
    """The one access line a request leaves."""
    fields = {
        "request_id": request_id,
        "method": method,
        "path": path,
        "status": status,
        "latency_ms": latency_ms,
        "model": model,
        "backend": backend,
    }
    ACCESS.info(
        "%s %s %d %dms model=%s backend=%s id=%s",
        method, path, status, latency_ms, model or "-", backend, request_id,
        extra=fields,
    )  # fmt: skip
