"""Which requests the answer cache may answer, and the key that tells two of them apart.

Only a request whose answer cannot vary qualifies: temperature 0, or a seed,
or a model marked ``cache.models.<name>.always_cacheable``; never a request
with nothing to answer (Ollama's load and unload requests have effects of
their own). The key is a SHA-256 of the route (which is the API shape: /api or
/v1, chat or generate), the model as the client named it (answers show that
name) and as the backend was asked, and the request body with what does not
change the answer left out (``keep_alive``, the model's placement on GPUs and
threads). Keys are 32 bytes whatever the request's size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from ..backends.base import Call
from ..config import Config

# Routes whose answers are generated, and so may be cached when deterministic.
GENERATING = frozenset({
    "/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages",
})  # fmt: skip
# Routes whose answers are computed without sampling: cached for models marked always_cacheable.
EMBEDDING = frozenset({"/api/embed", "/api/embeddings", "/v1/embeddings"})
# Body fields that do not change what is answered.
IGNORED = frozenset({"keep_alive", "model", "stream"})
# Ollama options that place or run the model without changing its answer.
IGNORED_OPTIONS = frozenset(
    {"num_thread", "num_gpu", "main_gpu", "use_mmap", "use_mlock", "numa", "low_vram"}
)


def key_for(config: Config, call: Call) -> bytes | None:
    """The cache key of ``call``, or None when the cache is off or the request does not qualify."""
    cache = config.cache
    body = call.body
    if not cache.enabled or body is None or call.model is None or call.method != "POST":
        return None
    rule = cache.model(call.model)
    if not rule.enabled:
        return None
    if call.endpoint in GENERATING:
        if _nothing_to_answer(call.endpoint, body):
            return None
        if not (rule.always_cacheable or deterministic(config, call)):
            return None
    elif not (call.endpoint in EMBEDDING and rule.always_cacheable):
        return None
    normal = {k: v for k, v in body.items() if k not in IGNORED}
    normal["stream"] = call.stream  # a stream by default (Ollama) or asked for: one answer
    options = normal.get("options")
    if isinstance(options, Mapping):
        normal["options"] = {k: v for k, v in options.items() if k not in IGNORED_OPTIONS}
    try:
        named = [call.endpoint, call.model, call.backend_model, normal]
        text = orjson.dumps(named, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # not JSON after all: such a request is simply not cached
        return None
    return hashlib.sha256(text).digest()


def deterministic(config: Config, call: Call) -> bool:
    """True when the request's sampling cannot vary: temperature 0, or a seed.

    What decides is what the backend is sent: with the openai and llamacpp
    backends ``models.params`` is laid over the request, so its temperature
    and seed win over the client's.
    """
    body = call.body or {}
    given: Any = body.get("options") if call.endpoint.startswith("/api/") else body
    sampling: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
    assert call.model is not None
    params = config.models.params_for(call.model) if config.backend.type != "ollama" else {}
    temperature = params.get("temperature", sampling.get("temperature"))
    seed = params.get("seed", sampling.get("seed"))
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature == 0:
        return True
    return isinstance(seed, int) and not isinstance(seed, bool)


def _nothing_to_answer(endpoint: str, body: Mapping[str, Any]) -> bool:
    """A request that only loads or unloads the model (Ollama's habit), or has no prompt at all."""
    if endpoint in ("/api/chat", "/v1/chat/completions", "/v1/messages"):
        return body.get("messages") in (None, [])
    if endpoint == "/v1/responses":
        return body.get("input") in (None, "", [])
    return body.get("prompt") in (None, "") and not body.get("images")
