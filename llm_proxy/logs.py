"""Log lines on stderr, as text for people or as JSON objects for log collectors.

``server.log_format`` picks the formatter; SIGHUP may switch it while running.
Fields passed with ``extra=`` (the access line's request id, status, latency…)
become keys of the JSON object; the text format carries them in the message.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
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
        return orjson.dumps(data, default=str).decode()


def formatter(log_format: str) -> logging.Formatter:
    """The formatter ``server.log_format`` names."""
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


_handler: logging.Handler | None = None


def setup(log_format: str, stream: IO[str] | None = None) -> None:
    """Send INFO and above to stderr in ``log_format`` (the ``serve`` command calls this once)."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(stream or sys.stderr)
    _handler.setFormatter(formatter(log_format))
    root.addHandler(_handler)
    root.setLevel(logging.INFO)


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
