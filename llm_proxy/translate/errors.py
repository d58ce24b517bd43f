"""A backend's error, in an answer or in the middle of a stream, as the error a client sees."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson

from llm_proxy.errors import BackendError


def stream_error(error: Any) -> BackendError:
    """Turn a mid-stream ``{"error": ...}`` frame into the error to report."""
    if isinstance(error, dict):
        message = error.get("message")
        code = error.get("code")
        status = code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599 else 502
        if not isinstance(message, str) or not message:
            message = "backend reported an error in the stream"
        return BackendError(message, status)
    if isinstance(error, str) and error:
        return BackendError(error, 502)
    return BackendError("backend reported an error in the stream", 502)


def error_from_backend(status: int, body: bytes) -> BackendError:
    """Turn a backend's error response into the error the client should see.

    The backend's status and message are kept: llama-server answers several
    client mistakes with 500 (tools without ``--jinja``, images without a
    vision projector), and the client should read the backend's words.
    """
    message = ""
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict):
            value = error.get("message")
            message = value if isinstance(value, str) else ""
        elif isinstance(error, str):
            message = error
        elif isinstance(parsed.get("message"), str):
            message = parsed["message"]
    elif body:
        message = body.decode("utf-8", "replace").strip()[:500]
    if not message:
        try:
            message = f"backend answered {status} {HTTPStatus(status).phrase}"
        except ValueError:
            message = f"backend answered {status}"
    if status == 503 and message == "Loading model":
        message = f"model is loading, try again shortly (backend: {message})"
    # A success status with an error body is still an error, of the backend.
    return BackendError(message, status if 400 <= status <= 599 else 502)


# How backends say a request is larger than the model's context: llama-server's
# error type and message (/work/shared/fixtures/llama-server/error-context-exceeded.*),
# and Ollama's words when it does not truncate.
_CONTEXT_WORDS = (
    "exceed_context_size_error",
    "exceeds the available context size",
    "exceeds the context length",
    "exceeds maximum context length",
)


def context_exceeded(status: int, text: str | bytes | None) -> bool:
    """True when an error answer (status and message or body) refuses a request for its context size."""
    if status != 400 or not text:
        return False
    if isinstance(text, bytes):
        text = text[:4096].decode("utf-8", "replace")
    return any(word in text for word in _CONTEXT_WORDS)
