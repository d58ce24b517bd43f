"""The one exception tree of llm-proxy.

Every error a client can see is a ``ProxyError``; the error middleware turns it
into Ollama's shape ``{"error": message}`` with ``status``::

    ProxyError                 (500)
    ├── BadRequest             (400) the client's request is malformed
    ├── Unauthorized           (401) no API key, or not one of auth.keys
    ├── Forbidden              (403) the key may not use this model (its quota's models)
    ├── ModelNotFound          (404) no such model on the backend
    ├── RequestTimeout         (408) the client went silent in the middle of its request
    ├── PayloadTooLarge        (413)
    ├── TooManyRequests        (429) over the rate limit or a key's daily quota; says when to retry
    ├── ClientGone             (499) the client left before its request was read
    ├── Busy                   (503) every backend slot taken and the wait queue full
    ├── BackendError           (backend's status) the backend answered with an error
    ├── BackendUnavailable     (502) the backend could not be reached
    └── BackendTimeout         (504) the backend did not answer in time

``ConfigError`` is separate: it stops the program at start-up (exit code 2).
``AuditError`` is the read side's (``llm-proxy logs``/``stats``/``prune``): a
missing database or a bad filter, printed as one line (exit code 1).
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any


class ProxyError(Exception):
    """An error with the HTTP status and message a client should see."""

    status = 500
    # Extra response headers the client needs with this error (Retry-After, ...).
    headers: Mapping[str, str] = types.MappingProxyType({})
    # What the backend had been sent when this happened, for the audit record
    # (backends.base.sending); None when nothing was, or it was the client's body.
    sent: Any = None
    # Which backends were tried before this error (backends.base.Route), for the record.
    route: Any = None

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message


class BadRequest(ProxyError):
    """The client's request cannot be understood."""

    status = 400


class Unauthorized(ProxyError):
    """The request carries no valid API key."""

    status = 401
    headers = types.MappingProxyType({"WWW-Authenticate": "Bearer"})

    def __init__(self) -> None:
        # Always the same words: the client learns nothing about which keys exist.
        super().__init__("unauthorized")


class Forbidden(ProxyError):
    """The request's API key may not do this (use this model)."""

    status = 403


class ModelNotFound(ProxyError):
    """The requested model is not served by the backend."""

    status = 404

    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found")
        self.model = name


class PayloadTooLarge(ProxyError):
    """The request body is larger than the configured limit."""

    status = 413


class TooManyRequests(ProxyError):
    """The caller is over its rate limit."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class RequestTimeout(ProxyError):
    """The client sent nothing for ``server.keepalive_timeout`` seconds in the middle of its request."""

    status = 408


class ClientGone(ProxyError):
    """The client left (or went silent) before the proxy had its whole request."""

    status = 499  # nginx's and Ollama's status for "the client closed the request"


class Busy(ProxyError):
    """Every backend slot is taken and the wait queue is full."""

    status = 503
    headers = types.MappingProxyType({"Retry-After": "1"})


class BackendError(ProxyError):
    """The backend answered, but with an error."""

    status = 502


class BackendUnavailable(ProxyError):
    """The backend could not be reached at all."""

    status = 502


class BackendTimeout(ProxyError):
    """The backend did not answer within ``backend.timeout``."""

    status = 504


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and the problem."""


class AuditError(Exception):
    """A command over the audit trail cannot run: missing database, bad filter, unknown id."""
