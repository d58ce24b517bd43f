"""Edge validation: the types each Ollama endpoint relies on, checked before the backend sees them.

Each check raises :class:`~llm_proxy.errors.BadRequest` with a message that
names the field (``'messages[2].role' must be a string, got a number``). Only
fields the proxy, its translator or the backend depend on are checked; fields
nobody here knows are passed through untouched, because clients send new ones
before proxies learn about them. Values are described by kind, never echoed:
they can be megabytes long.

JSON's own rules (valid UTF-8, no NaN or Infinity, nesting depth) are enforced
by the parser; the checks here repeat "finite" for numbers only as a guard.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from ..errors import BadRequest

Body = dict[str, Any]

# The most alternatives per token ``top_logprobs`` may ask for, as Ollama has it.
TOP_LOGPROBS_MAX = 20
# ``think``'s levels as Ollama takes them ("max" since 2026-04), besides true and false.
THINK_LEVELS = ("low", "medium", "high", "max")
# Options Ollama reads as numbers, and as true/false; others pass as they are.
NUMBER_OPTIONS = frozenset({
    "num_keep", "seed", "num_predict", "top_k", "top_p", "min_p", "typical_p", "tfs_z",
    "repeat_last_n", "temperature", "repeat_penalty", "presence_penalty", "frequency_penalty",
    "mirostat", "mirostat_tau", "mirostat_eta", "num_ctx", "num_batch", "num_gpu", "main_gpu",
    "num_thread",
})  # fmt: skip
BOOL_OPTIONS = frozenset({"numa", "low_vram", "f16_kv", "vocab_only", "use_mmap", "use_mlock"})
# The number options Ollama reads into Go ints (64 bits). A float is truncated
# there, so 40.5 passes; 1e30 or 2**64 fits no int, and the openai backend's
# translation raised TypeError on it (a 500).
INTEGER_OPTIONS = frozenset({
    "num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "mirostat", "num_ctx",
    "num_batch", "num_gpu", "main_gpu", "num_thread",
})  # fmt: skip
INT64 = (-(2**63), 2**63 - 1)

_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_SPACE = re.compile(r"\s+")
_DIGEST = re.compile(r"sha256[:-][0-9a-fA-F]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def request(endpoint: str, body: Body) -> None:
    """Check the JSON body of a request to ``endpoint``; raise BadRequest naming the first bad field."""
    for name in ("model", "name"):
        _optional(body, name, _string)
    check = _ENDPOINTS.get(endpoint)
    if check is not None:
        check(body)


def digest(value: str) -> None:
    """A blob digest as Ollama names them: ``sha256:`` and 64 hex characters."""
    if not _DIGEST.fullmatch(value):
        raise BadRequest("'digest' must be 'sha256:' followed by 64 hex characters")


def path_model(value: str) -> None:
    """A model id taken from the URL path, which is forwarded in one: it cannot climb out.

    ``/v1/models/../../api/delete`` (or its ``%2e%2e%2f`` spelling) names the
    backend's ``/api/delete`` once the path is resolved, by the backend or any
    hop on the way; a control character has no place in a path either.
    """
    if any(segment in (".", "..") for segment in value.split("/")) or _CONTROL.search(value):
        raise BadRequest("'model' must not contain '.' or '..' path segments or control characters")


# -- kinds ------------------------------------------------------------------------


def _got(value: Any) -> str:
    if value is None:
        return "got null"
    if isinstance(value, bool):
        return f"got {str(value).lower()}"
    if isinstance(value, (int, float)):
        return "got a number"
    if isinstance(value, str):
        return "got a string"
    if isinstance(value, list):
        return "got a list"
    return "got an object"


def _string(value: Any, field: str) -> None:
    if not isinstance(value, str):
        raise BadRequest(f"'{field}' must be a string, {_got(value)}")


def _boolean(value: Any, field: str) -> None:
    if not isinstance(value, bool):
        raise BadRequest(f"'{field}' must be true or false, {_got(value)}")


def _number(value: Any, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"'{field}' must be a number, {_got(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(f"'{field}' must be a finite number")


def in_range(value: float, field: str, low: int, high: int, low_text: str, high_text: str) -> None:
    """400 unless ``low <= value <= high`` (the bounds as the message shows them)."""
    if not low <= value <= high:
        raise BadRequest(f"'{field}' must be a number from {low_text} to {high_text}")


def _integer(value: Any, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{field}' must be an integer, {_got(value)}")


def _positive_integer(value: Any, field: str) -> None:
    _integer(value, field)
    if value <= 0:
        raise BadRequest(f"'{field}' must be an integer above 0")


def _object(value: Any, field: str) -> None:
    if not isinstance(value, dict):
        raise BadRequest(f"'{field}' must be an object, {_got(value)}")


def _list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadRequest(f"'{field}' must be a list, {_got(value)}")
    return value


def _optional(body: Body, name: str, check: Callable[[Any, str], Any], prefix: str = "") -> None:
    """Check ``body[name]`` when present and not null (null means "not given" to Ollama)."""
    value = body.get(name)
    if value is not None:
        check(value, prefix + name)


def _string_or_strings(value: Any, field: str) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BadRequest(f"'{field}' must be a string or a list of strings, {_got(value)}")


def _string_map(value: Any, field: str) -> None:
    _object(value, field)
    for key, item in value.items():
        _string(item, f"{field}.{_short(key)}")


def _short(key: str) -> str:
    """A client's key as part of a field name, cut short: keys can be megabytes too."""
    return key if len(key) <= 64 else key[:63] + "…"


# -- shared fields ----------------------------------------------------------------


def _image(value: Any, field: str) -> None:
    """Base64 image data, bare (Ollama's way) or as a ``data:...;base64,`` URL."""
    if not isinstance(value, str):
        raise BadRequest(f"'{field}' must be a base64 string, {_got(value)}")
    payload = value
    if value.startswith("data:"):
        header, comma, payload = value.partition(",")
        if not comma or not header.endswith(";base64"):
            raise BadRequest(f"'{field}' must be base64 image data")
    if _SPACE.search(payload):
        payload = _SPACE.sub("", payload)  # Go's decoder, which Ollama uses, skips line breaks
    if not payload:
        raise BadRequest(f"'{field}' must not be empty")
    if not _BASE64.fullmatch(payload) or len(payload) % 4 == 1:
        raise BadRequest(f"'{field}' must be base64 image data")


def _images(value: Any, field: str) -> None:
    for i, item in enumerate(_list(value, field)):
        _image(item, f"{field}[{i}]")


def _options(value: Any, field: str) -> None:
    _object(value, field)
    for key, item in value.items():
        if item is None:
            continue
        name = f"{field}.{key}"
        if key in NUMBER_OPTIONS:
            _number(item, name)
            if key in INTEGER_OPTIONS:
                in_range(item, name, *INT64, "-2^63", "2^63-1")
        elif key in BOOL_OPTIONS:
            _boolean(item, name)
        elif key == "stop":
            _string_or_strings(item, name)
        elif isinstance(item, float) and not math.isfinite(item):
            raise BadRequest(f"'{field}.{_short(key)}' must be a finite number")


def _keep_alive(value: Any, field: str) -> None:
    # A number of seconds or a Go duration string ("5m", "-1s").
    if isinstance(value, str):
        return
    try:
        _number(value, field)
    except BadRequest:
        raise BadRequest(
            f"'{field}' must be a number of seconds or a duration string, {_got(value)}"
        ) from None


def _format(value: Any, field: str) -> None:
    if value in ("", "json") or isinstance(value, dict):
        return
    raise BadRequest(f"'{field}' must be \"json\" or a JSON schema object, {_got(value)}")


def _think(value: Any, field: str) -> None:
    if isinstance(value, bool) or value in THINK_LEVELS:
        return
    raise BadRequest(f'\'{field}\' must be true, false, "low", "medium", "high" or "max", {_got(value)}')


def _top_logprobs(value: Any, field: str) -> None:
    _integer(value, field)
    if not 0 <= value <= TOP_LOGPROBS_MAX:
        raise BadRequest(f"'{field}' must be between 0 and {TOP_LOGPROBS_MAX}, got {value}")


def _tool_call(value: Any, field: str) -> None:
    _object(value, field)
    _optional(value, "id", _string, f"{field}.")
    function = value.get("function")
    _object(function, f"{field}.function")
    _string(function.get("name"), f"{field}.function.name")
    _optional(function, "index", _integer, f"{field}.function.")
    arguments = function.get("arguments")
    if arguments is not None and not isinstance(arguments, (dict, str)):
        raise BadRequest(f"'{field}.function.arguments' must be an object, {_got(arguments)}")


def _message(value: Any, field: str) -> None:
    _object(value, field)
    _string(value.get("role"), f"{field}.role")
    for name in ("content", "thinking", "tool_name", "tool_call_id"):
        _optional(value, name, _string, f"{field}.")
    _optional(value, "images", _images, f"{field}.")
    calls = value.get("tool_calls")
    if calls is not None:
        for i, call in enumerate(_list(calls, f"{field}.tool_calls")):
            _tool_call(call, f"{field}.tool_calls[{i}]")


def _messages(value: Any, field: str) -> None:
    for i, message in enumerate(_list(value, field)):
        _message(message, f"{field}[{i}]")


def _tools(value: Any, field: str) -> None:
    for i, tool in enumerate(_list(value, field)):
        _object(tool, f"{field}[{i}]")


def _common(body: Body) -> None:
    """Fields every model request may carry."""
    _optional(body, "stream", _boolean)
    _optional(body, "keep_alive", _keep_alive)
    _optional(body, "options", _options)


def _generation(body: Body) -> None:
    """Fields chat and generate share."""
    _common(body)
    _optional(body, "format", _format)
    _optional(body, "think", _think)
    # Token log probabilities, and how many alternatives per token (Ollama's 0-20).
    _optional(body, "logprobs", _boolean)
    _optional(body, "top_logprobs", _top_logprobs)
    # Context handling: cut an over-long prompt (truncate), slide the window (shift).
    _optional(body, "truncate", _boolean)
    _optional(body, "shift", _boolean)


# -- endpoints --------------------------------------------------------------------


def _chat(body: Body) -> None:
    _generation(body)
    _optional(body, "messages", _messages)
    _optional(body, "tools", _tools)


def _generate(body: Body) -> None:
    _generation(body)
    for name in ("prompt", "suffix", "system", "template"):
        _optional(body, name, _string)
    _optional(body, "raw", _boolean)
    _optional(body, "images", _images)
    # Image generation (Ollama's image models): the picture's size and the diffusion steps.
    for name in ("width", "height", "steps"):
        _optional(body, name, _positive_integer)
    context = body.get("context")
    if context is not None:
        for i, token in enumerate(_list(context, "context")):
            _integer(token, f"context[{i}]")


def _embed(body: Body) -> None:
    _common(body)
    _optional(body, "input", _string_or_strings)
    _optional(body, "truncate", _boolean)
    _optional(body, "dimensions", _positive_integer)


def _embeddings(body: Body) -> None:
    _common(body)
    _optional(body, "prompt", _string)


def _show(body: Body) -> None:
    _optional(body, "verbose", _boolean)
    _optional(body, "options", _options)


def _transfer(body: Body) -> None:
    _optional(body, "stream", _boolean)
    _optional(body, "insecure", _boolean)


def _create(body: Body) -> None:
    _optional(body, "stream", _boolean)
    for name in ("from", "template", "system", "quantize"):
        _optional(body, name, _string)
    _optional(body, "files", _string_map)
    _optional(body, "adapters", _string_map)
    _optional(body, "license", _string_or_strings)
    _optional(body, "parameters", _object)
    _optional(body, "messages", _messages)


def _copy(body: Body) -> None:
    _optional(body, "source", _string)
    _optional(body, "destination", _string)


_ENDPOINTS: dict[str, Callable[[Body], None]] = {
    "/api/chat": _chat,
    "/api/generate": _generate,
    "/api/embed": _embed,
    "/api/embeddings": _embeddings,
    "/api/show": _show,
    "/api/pull": _transfer,
    "/api/push": _transfer,
    "/api/create": _create,
    "/api/copy": _copy,
}
