"""Answers a backend makes itself, for servers that do not speak the Ollama API.

The ``openai`` and ``llamacpp`` backends both stand in for Ollama in front of
llama-server: what Ollama would answer without asking a model (its version,
"Ollama is running", an empty prompt's load answer, a pull of a model that is
already there, model management it cannot do) is built here, once.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import orjson

from ..errors import ProxyError
from ..translate import rfc3339_now
from .base import Batch, Call, Lines, Reply, Whole

# The Ollama version we answer /api/version with: the API level we speak.
OLLAMA_VERSION = "0.12.6"
JSON = "application/json"
NDJSON = "application/x-ndjson"

# What /api/status answers for a llama-server: no Ollama cloud behind it.
# Ollama answers {"cloud": {"disabled": bool, "source": where that was set}};
# here the proxy itself is what rules the cloud out.
LOCAL_STATUS = {"cloud": {"disabled": True, "source": "llm-proxy"}}

# Ollama routes that manage model files, which a llama-server cannot do.
MANAGEMENT = frozenset({"/api/push", "/api/create", "/api/copy", "/api/delete", "/api/blobs/{digest}"})


def json_reply(obj: Any, sent: Any = None) -> Whole:
    """A 200 JSON answer; ``sent`` is what the backend was sent for it."""
    return Whole(200, JSON, orjson.dumps(obj), sent=sent)


async def one_line(obj: dict[str, Any]) -> AsyncGenerator[Batch, None]:
    """A stream of one NDJSON line."""
    yield [(orjson.dumps(obj), obj)]


def single(call: Call, obj: dict[str, Any]) -> Reply:
    """``obj`` as the client asked for it: one NDJSON line, or one JSON object."""
    if call.stream:
        return Lines(200, NDJSON, one_line(obj))
    return json_reply(obj)


def empty_answer(call: Call, kind: str, done_reason: str) -> Whole:
    """Ollama's answer to a request with nothing to generate ("load", "unload").

    Always one ``application/json`` object, whatever ``stream`` says, as Ollama
    answers it: Open WebUI's unload refuses an NDJSON answer.
    """
    final: dict[str, Any] = {"model": call.model, "created_at": rfc3339_now()}
    if kind == "chat":
        final["message"] = {"role": "assistant", "content": ""}
    else:
        final["response"] = ""
    final.update(done=True, done_reason=done_reason)
    return json_reply(final)


def pulled(call: Call) -> Reply:
    """A pull of a model that is already served: nothing to download."""
    return single(call, {"status": "success"})


def answer_locally(call: Call, backend: str, serves: str) -> Reply:
    """What needs no server: version, status, liveness; a clear 501 for model management and the rest.

    ``serves`` finishes "the <backend> backend ..." in the 501's message.
    """
    if call.endpoint == "/api/version":
        return json_reply({"version": OLLAMA_VERSION})
    if call.endpoint == "/api/status":
        return json_reply(LOCAL_STATUS)
    if call.endpoint == "/":
        return Whole(200, "text/plain; charset=utf-8", b"Ollama is running")
    if call.endpoint in MANAGEMENT:
        raise ProxyError(
            f"{call.endpoint} is not available: the {backend} backend {serves} "
            "and does not manage model files",
            501,
        )
    raise ProxyError(f"{call.endpoint} is not supported by the {backend} backend", 501)
