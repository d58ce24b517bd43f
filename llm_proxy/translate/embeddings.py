"""Ollama's ``/api/embed`` and legacy ``/api/embeddings`` as ``/v1/embeddings``, both ways."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from llm_proxy.errors import BackendError

from . import JSONDict, is_number


def embed_request(body: Mapping[str, Any], backend_model: str) -> JSONDict:
    """Build the ``/v1/embeddings`` body for an Ollama ``/api/embed`` request.

    A missing input becomes ``[]``; Ollama answers that with no embeddings,
    which the backend answers itself, without asking llama-server.
    """
    value = body.get("input")  # a string or a list of strings (api.validate)
    if value is None:
        value = []
    elif isinstance(value, list):
        value = list(value)
    out: JSONDict = {"model": backend_model, "input": value, "encoding_format": "float"}
    dimensions = body.get("dimensions")  # an integer above 0 (api.validate)
    if isinstance(dimensions, int) and not isinstance(dimensions, bool) and dimensions > 0:
        out["dimensions"] = dimensions
    # ``truncate`` has no counterpart: llama-server never truncates, and
    # reports an over-long input as an error (docs/translation.md).
    return out


def embeddings_legacy_request(body: Mapping[str, Any], backend_model: str) -> JSONDict:
    """Build the ``/v1/embeddings`` body for a legacy ``/api/embeddings`` request."""
    return {"model": backend_model, "input": body.get("prompt") or "", "encoding_format": "float"}


def _embedding_vectors(openai_json: Any) -> list[Any]:
    data = openai_json.get("data") if isinstance(openai_json, dict) else None
    if not isinstance(data, list):
        raise BackendError("backend returned an embeddings response without data", 502)
    items = [item for item in data if isinstance(item, dict)]
    # The order of ``data`` is not promised; ``index`` is.
    items.sort(key=lambda item: item.get("index", 0) if isinstance(item.get("index"), int) else 0)
    vectors = []
    for item in items:
        vector = item.get("embedding")
        if not isinstance(vector, list):
            raise BackendError("backend returned an embedding that is not a list of numbers", 502)
        vectors.append(vector)
    return vectors


def embed_response(
    openai_json: Mapping[str, Any], client_model: str, total_ns: int, dimensions: int | None = None
) -> JSONDict:
    """Build the Ollama ``/api/embed`` response from the backend's embeddings.

    With ``dimensions``, a longer vector is cut to that many and scaled back to
    length 1, as Ollama does (the first dimensions of a Matryoshka embedding
    are an embedding of their own); llama-server ignores the field and answers
    the model's full width.
    """
    vectors = _embedding_vectors(openai_json)
    if dimensions:
        vectors = [_shortened(v, dimensions) if len(v) > dimensions else v for v in vectors]
    usage = openai_json.get("usage") if isinstance(openai_json, dict) else None
    prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return {
        "model": client_model,
        "embeddings": vectors,
        "total_duration": int(total_ns),
        "load_duration": 0,
        "prompt_eval_count": int(prompt_tokens) if is_number(prompt_tokens) else 0,
    }


def _shortened(vector: list[Any], dimensions: int) -> list[Any]:
    """The first ``dimensions`` numbers of ``vector``, normalised to unit length."""
    head = vector[:dimensions]
    if not all(is_number(x) for x in head):
        raise BackendError("backend returned an embedding that is not a list of numbers", 502)
    norm = math.sqrt(sum(float(x) * float(x) for x in head))
    return [float(x) / norm for x in head] if norm else [float(x) for x in head]


def embeddings_legacy_response(openai_json: Mapping[str, Any]) -> JSONDict:
    """Build the legacy ``/api/embeddings`` response: the first vector only."""
    vectors = _embedding_vectors(openai_json)
    return {"embedding": vectors[0] if vectors else []}
