"""Translation between the Ollama API and an OpenAI-style backend (llama-server).

Everything here is pure: functions take the client's parsed JSON (or the
backend's) and return new values; nothing does I/O or touches its input.

* Requests: :func:`chat_request`, :func:`generate_request`,
  :func:`embed_request`, :func:`embeddings_legacy_request` build the body for
  the backend. The proxy always streams from the backend (and aggregates for
  ``stream: false`` clients), so chat and generate bodies always ask for a
  stream with usage.
* Streams: :class:`StreamTranslator` turns decoded OpenAI SSE chunks into
  Ollama NDJSON chunks, one stream per object (``translate.ndjson.ChunkAssembler``
  folds them into the single non-stream response).
* Errors: :func:`error_from_backend` turns a backend error body into a
  :class:`~llm_proxy.errors.BackendError`.
* Models: :func:`tags_from_models`, :func:`show_from_props`,
  :func:`ps_from_models` build ``/api/tags``, ``/api/show`` and ``/api/ps``
  from llama-server's ``/v1/models`` and ``/props``.

Facts behind the mapping: ``docs/`` of ollama/ollama (api.md) and
ollama-python's ``_types.py`` for the client side; llama.cpp's
``tools/server`` for the backend side.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any, Literal, TypeGuard

import orjson

from llm_proxy.config import aliases
from llm_proxy.errors import BackendError, BadRequest
from llm_proxy.translate import Budget

__all__ = [
    "StreamTranslator",
    "chat_request",
    "client_names",
    "dropped_options",
    "embed_request",
    "embed_response",
    "embeddings_legacy_request",
    "embeddings_legacy_response",
    "error_from_backend",
    "generate_request",
    "normalize_model_name",
    "ps_from_models",
    "rfc3339_now",
    "show_from_props",
    "tags_from_models",
]

JSONDict = dict[str, Any]
Kind = Literal["chat", "generate"]

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"

# Options llama-server reads under the same name.
_SAME_NAME_OPTIONS = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "typical_p",
        "repeat_penalty",
        "repeat_last_n",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
    }
)
# Integer-typed ones: an integer-valued float such as 40.0 is sent as 40.
_INT_OPTIONS = frozenset({"top_k", "repeat_last_n", "seed", "mirostat", "num_keep", "num_predict"})

_THINK_LEVELS = frozenset({"low", "medium", "high"})

# The proxy depends on these; per-model params from the config cannot change them.
_PROTECTED_KEYS = frozenset({"model", "messages", "prompt", "stream", "stream_options"})

_STREAM_USAGE: JSONDict = {"include_usage": True}

# /api/ps reports "loaded until": llama-server keeps its model loaded for as
# long as it runs, which Ollama itself reports as a date centuries away.
_FAR_FUTURE = "2318-01-01T00:00:00Z"


# ---------------------------------------------------------------------------
# Time


_second_cache: tuple[int, str] = (-1, "")


def rfc3339_now() -> str:
    """Return the current UTC time as RFC 3339 with nanoseconds, as Ollama does."""
    global _second_cache
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    cached = _second_cache
    # Every streamed chunk carries a timestamp; formatting the date part once
    # per second keeps this off the per-chunk cost.
    if cached[0] == seconds:
        prefix = cached[1]
    else:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_cache = (seconds, prefix)
    return f"{prefix}.{nanos:09d}Z"


def _rfc3339_from_unix(seconds: Any) -> str:
    """Format unix seconds as RFC 3339 UTC; anything unusable means now."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        return rfc3339_now()
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
    except (OverflowError, OSError, ValueError):
        return rfc3339_now()


# ---------------------------------------------------------------------------
# Small validators


def _is_number(value: object) -> TypeGuard[int | float]:
    """Tell a JSON number from everything else, booleans included."""
    return isinstance(value, int | float) and not isinstance(value, bool)


# llama-server reads its integer sampling fields as C ints (nlohmann's
# get<int32_t>), silently wrapping anything larger: 2**32 for top_k would be 0.
# The seed is the exception: a uint32 there, wrapped as Ollama wraps it too.
_INT32 = (-(2**31), 2**31 - 1)


def _int32(value: int | float, key: str) -> int | float:
    """An integer option as llama-server can read it; 400 naming it when it cannot."""
    low, high = _INT32
    if key != "seed" and not low <= value <= high:
        raise BadRequest(f"'options.{key}' must be a number from {low} to {high} for llama-server")
    return _as_int(value)


def _as_int(value: Any) -> Any:
    """Turn an integer-valued float into an int; leave anything else alone."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _object(value: Any, field: str) -> JSONDict:
    if not isinstance(value, dict):
        raise BadRequest(f"{field} must be an object")
    return value


def _optional_str(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string")
    return value


# ---------------------------------------------------------------------------
# Requests


def normalize_model_name(name: str) -> str:
    """Give a model name Ollama's implicit tag: ``x`` and ``x:latest`` are one model."""
    if not name:
        return name
    # A colon before the last "/" is a registry port ("host:5000/x"), not a tag.
    if name.rfind(":") > name.rfind("/"):
        return name
    return f"{name}:latest"


def chat_request(body: Mapping[str, Any], backend_model: str, params: Mapping[str, Any]) -> JSONDict:
    """Build the ``/v1/chat/completions`` body for an Ollama ``/api/chat`` request."""
    body = _object(body, "request body")
    messages = body.get("messages")
    if messages is None:
        messages = []
    elif not isinstance(messages, list):
        raise BadRequest("messages must be a list")
    out: JSONDict = {
        "model": backend_model,
        "messages": _chat_messages(messages),
        "stream": True,
        "stream_options": dict(_STREAM_USAGE),
    }
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
    _apply_options(body.get("options"), out)
    _apply_format(body.get("format"), out, raw=False)
    _apply_think(body.get("think"), out)
    apply_params(params, out)
    return out


def generate_request(
    body: Mapping[str, Any], backend_model: str, params: Mapping[str, Any]
) -> tuple[str, JSONDict]:
    """Build the backend path and body for an Ollama ``/api/generate`` request.

    ``raw: true`` means the prompt is already templated, so it goes to
    ``/v1/completions`` as is; otherwise it becomes a one-turn chat.
    ``suffix``, ``template`` and ``context`` are not forwarded: llama-server's
    ``/v1/completions`` rejects ``suffix``, and the other two have no
    counterpart there.
    """
    body = _object(body, "request body")
    prompt = _optional_str(body.get("prompt"), "prompt")
    if body.get("raw") is True:
        if body.get("images"):
            raise BadRequest("images are not supported with raw: true")
        out: JSONDict = {
            "model": backend_model,
            "prompt": prompt,
            "stream": True,
            "stream_options": dict(_STREAM_USAGE),
        }
        _apply_options(body.get("options"), out)
        _apply_format(body.get("format"), out, raw=True)
        # No chat template runs for a raw prompt, so ``think`` has nothing to
        # switch; it is still validated so garbage is reported the same way.
        _apply_think(body.get("think"), {})
        apply_params(params, out)
        return COMPLETIONS_PATH, out

    messages: list[JSONDict] = []
    system = _optional_str(body.get("system"), "system")
    if system:
        messages.append({"role": "system", "content": system})
    images = body.get("images")
    user: JSONDict = {"role": "user", "content": prompt}
    if images:
        user["content"] = _content_with_images(prompt, images, "images")
    messages.append(user)
    out = {
        "model": backend_model,
        "messages": messages,
        "stream": True,
        "stream_options": dict(_STREAM_USAGE),
    }
    _apply_options(body.get("options"), out)
    _apply_format(body.get("format"), out, raw=False)
    _apply_think(body.get("think"), out)
    apply_params(params, out)
    return CHAT_PATH, out


def dropped_options(body: Mapping[str, Any]) -> list[str]:
    """Name the client's ``options`` the backend mapping does not forward (for the log)."""
    options = body.get("options") if isinstance(body, Mapping) else None
    if not isinstance(options, dict):
        return []
    return [
        k for k in options if k not in _SAME_NAME_OPTIONS and k not in ("num_predict", "num_keep", "stop")
    ]


def _chat_messages(messages: list[Any]) -> list[JSONDict]:
    """Map Ollama chat messages to OpenAI ones, pairing tool results with calls."""
    out: list[JSONDict] = []
    # Ids and names of the latest assistant tool calls not yet answered:
    # Ollama clients (Home Assistant) send tool results without an id, and
    # llama-server's templates expect each result to name its call.
    unanswered: list[tuple[str, str]] = []
    call_number = 0
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{field} must be an object")
        role = message.get("role")
        if not isinstance(role, str):
            raise BadRequest(f"{field}.role must be a string")
        content = _optional_str(message.get("content"), f"{field}.content")
        mapped: JSONDict = {"role": role, "content": content}
        images = message.get("images")
        if images:
            mapped["content"] = _content_with_images(content, images, f"{field}.images")

        if role == "assistant":
            thinking = message.get("thinking")
            if isinstance(thinking, str) and thinking:
                # Passed on rather than dropped: llama-server hands
                # reasoning_content to the chat template, which decides whether
                # past reasoning is rendered (chat_template_caps
                # .supports_preserve_reasoning), just as Ollama hands
                # ``thinking`` to its template. Templates without it ignore it.
                mapped["reasoning_content"] = thinking
            raw_calls = message.get("tool_calls")
            if raw_calls is not None:
                if not isinstance(raw_calls, list):
                    raise BadRequest(f"{field}.tool_calls must be a list")
                if raw_calls:
                    calls = []
                    for j, call in enumerate(raw_calls):
                        calls.append(_history_tool_call(call, f"{field}.tool_calls[{j}]", call_number))
                        call_number += 1
                    mapped["tool_calls"] = calls
                    unanswered = [(c["id"], c["function"]["name"]) for c in calls]
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if isinstance(call_id, str) and call_id:
                unanswered = [pair for pair in unanswered if pair[0] != call_id]
            else:
                call_id = _pair_tool_result(unanswered, message.get("tool_name"))
            if call_id:
                mapped["tool_call_id"] = call_id
        out.append(mapped)
    return out


def _pair_tool_result(unanswered: list[tuple[str, str]], tool_name: Any) -> str | None:
    """Take the id of the call a tool result without an id answers, if any.

    The result's ``tool_name`` picks among parallel calls when it names one;
    otherwise results answer calls in order.
    """
    if not unanswered:
        return None
    at = 0
    if isinstance(tool_name, str) and tool_name:
        for k, (_, name) in enumerate(unanswered):
            if name == tool_name:
                at = k
                break
    return unanswered.pop(at)[0]


def _history_tool_call(call: Any, field: str, number: int) -> JSONDict:
    """Map one Ollama history tool call to the OpenAI shape llama-server requires."""
    call = _object(call, field)
    function = _object(call.get("function"), f"{field}.function")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"{field}.function.name must be a non-empty string")
    arguments = function.get("arguments")
    if arguments is None:
        arguments_text = "{}"
    elif isinstance(arguments, str):
        arguments_text = arguments
    elif isinstance(arguments, dict):
        arguments_text = orjson.dumps(arguments).decode()
    else:
        raise BadRequest(f"{field}.function.arguments must be an object")
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        # Numbered by position in the conversation, so the same history gets
        # the same ids on every round and the backend's prompt cache holds.
        call_id = f"call_{number}"
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments_text},
    }


def _tools(tools: Any) -> list[Any]:
    """Pass the tool list through; ``[]`` means no tools and is dropped."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise BadRequest("tools must be a list")
    out: list[Any] = []
    for i, tool in enumerate(tools):
        tool = _object(tool, f"tools[{i}]")
        # Ollama defaults a missing type to "function"; OpenAI requires it.
        out.append(tool if "type" in tool else {"type": "function", **tool})
    return out


_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def _sniff_image(head: bytes) -> str:
    """Name an image's MIME type from its first bytes; JPEG when unknown."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    for magic, mime in _IMAGE_MAGIC:
        if head.startswith(magic):
            return mime
    return "image/jpeg"


_WHITESPACE = re.compile(rb"\s+")


def _image_url(image: Any, field: str) -> str:
    """Validate one Ollama image (base64, maybe a data: URL) and return a data: URL."""
    if not isinstance(image, str):
        raise BadRequest(f"{field} must be a base64 string")
    declared = ""
    payload = image
    if image.startswith("data:"):
        header, sep, payload = image.partition(",")
        if not sep or not header.endswith(";base64"):
            raise BadRequest(f"{field} is not valid base64 image data")
        declared = header[5 : -len(";base64")]
    raw = payload.encode("ascii", "replace")
    if _WHITESPACE.search(raw):
        # Go's base64 decoding, which Ollama uses, skips line breaks.
        raw = _WHITESPACE.sub(b"", raw)
    if len(raw) % 4:
        raw += b"=" * (-len(raw) % 4)
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{field} is not valid base64 image data") from None
    if not decoded:
        raise BadRequest(f"{field} is empty")
    mime = _sniff_image(decoded[:16])
    if mime == "image/jpeg" and declared.startswith("image/") and not decoded.startswith(b"\xff\xd8\xff"):
        # Unknown magic: a type the client declared beats the fallback.
        mime = declared
    return f"data:{mime};base64,{raw.decode('ascii')}"


def _content_with_images(text: str, images: Any, field: str) -> list[JSONDict]:
    """Build OpenAI content parts: the text, then each image as a data: URL."""
    if not isinstance(images, list):
        raise BadRequest(f"{field} must be a list")
    parts: list[JSONDict] = []
    if text:
        parts.append({"type": "text", "text": text})
    for j, image in enumerate(images):
        parts.append(
            {
                "type": "image_url",
                "image_url": {"url": _image_url(image, f"{field}[{j}]")},
            }
        )
    return parts


def _apply_options(options: Any, out: JSONDict) -> None:
    """Copy the sampling options llama-server understands; drop load-time ones."""
    if options is None:
        return
    options = _object(options, "options")
    for key, value in options.items():
        if value is None:
            continue
        if key in _SAME_NAME_OPTIONS:
            if not _is_number(value):
                raise BadRequest(f"options.{key} must be a number")
            out[key] = _int32(value, key) if key in _INT_OPTIONS else value
        elif key == "num_predict":
            if not _is_number(value):
                raise BadRequest("options.num_predict must be a number")
            # -1 (unlimited) and -2 (fill the context) are Ollama's; newer
            # llama-server rejects negatives, and omitting means unlimited.
            if value >= 0:
                out["max_tokens"] = int(_int32(value, key))
        elif key == "num_keep":
            if not _is_number(value):
                raise BadRequest("options.num_keep must be a number")
            out["n_keep"] = int(_int32(value, key))
        elif key == "stop":
            if isinstance(value, str):
                out["stop"] = [value]
            elif isinstance(value, list) and all(isinstance(s, str) for s in value):
                out["stop"] = list(value)
            else:
                raise BadRequest("options.stop must be a list of strings")
        # Everything else is load-time (num_ctx, num_gpu, num_thread, ...),
        # fixed when llama-server started, or unknown: dropped.


def _apply_format(fmt: Any, out: JSONDict, *, raw: bool) -> None:
    """Map Ollama's ``format`` to structured output."""
    if fmt is None or fmt == "":
        return
    if fmt == "json":
        schema: JSONDict = {}
    elif isinstance(fmt, dict):
        schema = fmt
    else:
        raise BadRequest('format must be "json" or a JSON schema object')
    if raw:
        # /v1/completions has no response_format; it takes the native
        # json_schema parameter ({} means any JSON value).
        out["json_schema"] = schema
    elif fmt == "json":
        out["response_format"] = {"type": "json_object"}
    else:
        # The wrapped form: llama-server silently ignores a bare "schema".
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": schema},
        }


def _apply_think(think: Any, out: JSONDict) -> None:
    """Map Ollama's ``think`` to the template switch or the reasoning effort."""
    if think is None:
        return
    if isinstance(think, bool):
        out["chat_template_kwargs"] = {"enable_thinking": think}
    elif isinstance(think, str) and think in _THINK_LEVELS:
        out["reasoning_effort"] = think
    else:
        raise BadRequest('think must be true, false, "low", "medium" or "high"')


def apply_params(params: Mapping[str, Any], out: JSONDict) -> None:
    """Lay the per-model backend params from the config over the request."""
    for key, value in params.items():
        if key in _PROTECTED_KEYS:
            continue
        if key == "chat_template_kwargs" and isinstance(value, Mapping):
            merged = dict(out.get("chat_template_kwargs") or {})
            merged.update(value)
            out[key] = merged
        elif isinstance(value, Mapping):
            out[key] = dict(value)
        elif isinstance(value, list):
            out[key] = list(value)
        else:
            out[key] = value


# ---------------------------------------------------------------------------
# Embeddings


def embed_request(body: Mapping[str, Any], backend_model: str) -> JSONDict:
    """Build the ``/v1/embeddings`` body for an Ollama ``/api/embed`` request.

    A missing input becomes ``[]``; Ollama answers that with no embeddings,
    which the handler can do without asking the backend.
    """
    body = _object(body, "request body")
    value = body.get("input")
    if value is None:
        value = []
    elif isinstance(value, list):
        if not all(isinstance(item, str) for item in value):
            raise BadRequest("input must be a string or a list of strings")
        value = list(value)
    elif not isinstance(value, str):
        raise BadRequest("input must be a string or a list of strings")
    out: JSONDict = {"model": backend_model, "input": value, "encoding_format": "float"}
    dimensions = body.get("dimensions")
    if isinstance(dimensions, int) and not isinstance(dimensions, bool) and dimensions > 0:
        out["dimensions"] = dimensions
    # ``truncate`` has no counterpart: llama-server never truncates, and
    # reports an over-long input as an error.
    return out


def embeddings_legacy_request(body: Mapping[str, Any], backend_model: str) -> JSONDict:
    """Build the ``/v1/embeddings`` body for a legacy ``/api/embeddings`` request."""
    body = _object(body, "request body")
    prompt = _optional_str(body.get("prompt"), "prompt")
    return {"model": backend_model, "input": prompt, "encoding_format": "float"}


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


def embed_response(openai_json: Mapping[str, Any], client_model: str, total_ns: int) -> JSONDict:
    """Build the Ollama ``/api/embed`` response from the backend's embeddings."""
    vectors = _embedding_vectors(openai_json)
    usage = openai_json.get("usage") if isinstance(openai_json, dict) else None
    prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return {
        "model": client_model,
        "embeddings": vectors,
        "total_duration": int(total_ns),
        "load_duration": 0,
        "prompt_eval_count": int(prompt_tokens) if _is_number(prompt_tokens) else 0,
    }


def embeddings_legacy_response(openai_json: Mapping[str, Any]) -> JSONDict:
    """Build the legacy ``/api/embeddings`` response: the first vector only."""
    vectors = _embedding_vectors(openai_json)
    return {"embedding": vectors[0] if vectors else []}


# ---------------------------------------------------------------------------
# Streams


class StreamTranslator:
    """Translate one backend stream of OpenAI chunks into Ollama chunks.

    Content and thinking go out as they arrive. Tool-call fragments are
    collected per ``index`` and go out once, complete, in one chunk: when a
    ``finish_reason`` arrives or at :meth:`finish`, whichever is first.
    Usage and timings are remembered from whichever chunk carries them.

    What it keeps for the audit trail (content, thinking, the tool calls sent)
    stops at ``keep`` characters, with ``truncated`` set; tool-call fragments
    waiting to go out are held whole, up to ``limit`` characters (a 502 beyond).
    """

    __slots__ = (
        "_calls",
        "_content",
        "_deltas",
        "_done_reason",
        "_finish_reason",
        "_held",
        "_limit",
        "_now",
        "_thinking",
        "_timings",
        "_tool_calls",
        "_usage",
        "budget",
        "kind",
        "model",
    )

    def __init__(
        self,
        kind: Kind,
        model: str,
        created_at: Callable[[], str] | None = None,
        *,
        keep: int | None = None,
        limit: int | None = None,
    ) -> None:
        if kind not in ("chat", "generate"):
            raise ValueError(f"unknown stream kind {kind!r}")
        self.kind: Kind = kind
        self.model = model
        self._now = created_at or rfc3339_now
        self._content: list[str] = []
        self._thinking: list[str] = []
        self.budget = Budget(keep)  # what the audit-trail copy may still keep
        self._limit = limit
        self._held = 0  # characters of tool-call fragments waiting to go out
        self._deltas = 0
        # index -> [id, name, argument fragments]
        self._calls: dict[int, list[Any]] = {}
        self._tool_calls: list[JSONDict] = []
        self._finish_reason: str | None = None
        self._usage: JSONDict | None = None
        self._timings: JSONDict | None = None
        self._done_reason: str | None = None

    # -- audit trail --------------------------------------------------------

    @property
    def truncated(self) -> bool:
        """True when the audit copy (content, thinking, tool calls) stopped at ``keep``."""
        return self.budget.truncated

    @property
    def content(self) -> str:
        """All content sent so far."""
        return "".join(self._content)

    @property
    def thinking(self) -> str:
        """All thinking sent so far."""
        return "".join(self._thinking)

    @property
    def tool_calls(self) -> list[JSONDict]:
        """The tool calls sent so far, in Ollama's shape."""
        return list(self._tool_calls)

    @property
    def finish_reason(self) -> str | None:
        """The backend's own finish reason, if it sent one."""
        return self._finish_reason

    @property
    def done_reason(self) -> str | None:
        """The ``done_reason`` of the final chunk; None before the backend finished."""
        if self._done_reason is not None:
            return self._done_reason
        if self._finish_reason is None:
            return None
        return _done_reason(self._finish_reason)

    @property
    def prompt_tokens(self) -> int | None:
        """Prompt tokens from usage, else from timings; None when neither came."""
        return self._count("prompt_tokens", "prompt_n")

    @property
    def completion_tokens(self) -> int | None:
        """Generated tokens from usage, else from timings; None when neither came."""
        return self._count("completion_tokens", "predicted_n")

    @property
    def timings(self) -> JSONDict | None:
        """llama-server's ``timings`` object, if it sent one."""
        return self._timings

    # -- the stream ---------------------------------------------------------

    def feed(self, chunk: Mapping[str, Any]) -> list[JSONDict]:
        """Translate one decoded backend chunk into the Ollama chunks to send now."""
        try:
            return self._feed(chunk)
        except (AttributeError, TypeError, IndexError, KeyError):
            # A chunk of the wrong shape is the backend's fault, not a proxy crash.
            text = orjson.dumps(chunk, default=str, option=orjson.OPT_NON_STR_KEYS).decode()[:200]
            raise BackendError(f"backend sent a malformed stream chunk: {text}", 502) from None

    def _feed(self, chunk: Mapping[str, Any]) -> list[JSONDict]:
        error = chunk.get("error")
        if error is not None:
            raise _stream_error(error)
        usage = chunk.get("usage")
        if usage and isinstance(usage, dict):
            self._usage = usage
        timings = chunk.get("timings")
        if timings and isinstance(timings, dict):
            self._timings = timings
        choices = chunk.get("choices")
        if not choices:
            return []
        # The proxy never asks for n > 1, so the first choice is the answer.
        choice = choices[0]
        out: list[JSONDict] = []
        delta = choice.get("delta")
        if delta is not None:
            text = delta.get("content")
            thought = delta.get("reasoning_content")
            if text or thought:
                out.append(self._text_chunk(text or "", thought or ""))
            calls = delta.get("tool_calls")
            if calls:
                self._deltas += 1
                self._collect(calls)
        else:
            # /v1/completions (raw generate) streams ``text``, not deltas.
            text = choice.get("text")
            if text:
                out.append(self._text_chunk(text, ""))
        reason = choice.get("finish_reason")
        if reason is not None:
            self._finish_reason = reason
            if self._calls:
                out.append(self._tool_call_chunk())
        return out

    def finish(self, total_duration_ns: int, load_duration_ns: int = 0) -> list[JSONDict]:
        """Return the last chunks after ``[DONE]``: pending tool calls, then the final one."""
        out: list[JSONDict] = []
        if self._calls:
            out.append(self._tool_call_chunk())
        reason = _done_reason(self._finish_reason)
        self._done_reason = reason
        timings = self._timings or {}
        prompt_tokens = self.prompt_tokens
        completion_tokens = self.completion_tokens
        final: JSONDict = {"model": self.model, "created_at": self._now()}
        if self.kind == "chat":
            final["message"] = {"role": "assistant", "content": ""}
        else:
            final["response"] = ""
        final["done"] = True
        final["done_reason"] = reason
        final["total_duration"] = int(total_duration_ns)
        final["load_duration"] = int(load_duration_ns)
        final["prompt_eval_count"] = prompt_tokens if prompt_tokens is not None else 0
        final["prompt_eval_duration"] = _ms_to_ns(timings.get("prompt_ms"))
        final["eval_count"] = completion_tokens if completion_tokens is not None else self._deltas
        final["eval_duration"] = _ms_to_ns(timings.get("predicted_ms"))
        if self.kind == "generate":
            # Deprecated in Ollama and meaningless here; clients still read it.
            final["context"] = []
        out.append(final)
        return out

    def eof_without_done(self) -> BackendError:
        """Return the error for a backend stream that ended without ``[DONE]``."""
        return BackendError("backend closed the stream before it finished", 502)

    # -- internals ------------------------------------------------------------

    def _text_chunk(self, text: str, thought: str) -> JSONDict:
        if type(text) is not str or type(thought) is not str:
            # feed() reports this as a malformed chunk.
            raise TypeError("content and reasoning_content must be strings")
        self._deltas += 1
        if text:
            self.budget.keep(self._content, text)
        if thought:
            self.budget.keep(self._thinking, thought)
        if self.kind == "chat":
            message: JSONDict = {"role": "assistant", "content": text}
            if thought:
                message["thinking"] = thought
            return {
                "model": self.model,
                "created_at": self._now(),
                "message": message,
                "done": False,
            }
        chunk: JSONDict = {
            "model": self.model,
            "created_at": self._now(),
            "response": text,
        }
        if thought:
            chunk["thinking"] = thought
        chunk["done"] = False
        return chunk

    def _collect(self, fragments: Iterable[Any]) -> None:
        calls = self._calls
        for fragment in fragments:
            if not isinstance(fragment, dict):
                continue
            index = fragment.get("index")
            if not isinstance(index, int):
                # Without an index, an id opens a new call; anything else
                # continues the latest one.
                index = len(calls) if fragment.get("id") or not calls else max(calls)
            entry = calls.get(index)
            if entry is None:
                entry = calls[index] = [None, None, []]
            call_id = fragment.get("id")
            if call_id and entry[0] is None:
                entry[0] = call_id
            function = fragment.get("function")
            if isinstance(function, dict):
                name = function.get("name")
                if name and entry[1] is None:
                    entry[1] = name
                arguments = function.get("arguments")
                if arguments:
                    entry[2].append(arguments)
                    self._held += len(arguments) if isinstance(arguments, str) else 0
                    if self._limit is not None and self._held > self._limit:
                        raise BackendError(
                            f"backend sent a tool call larger than {self._limit / 1048576:.4g} MiB "
                            "(backend.max_answer_mb)",
                            502,
                        )

    def _tool_call_chunk(self) -> JSONDict:
        calls = []
        for index in sorted(self._calls):
            call_id, name, fragments = self._calls[index]
            if not name:
                raise BackendError("backend returned a tool call without a function name", 502)
            function: JSONDict = {
                "index": index,
                "name": name,
                "arguments": _arguments("".join(fragments)),
            }
            call: JSONDict = {"function": function}
            if call_id:
                # Ollama's newer servers send the id too; clients may echo it
                # back as tool_call_id, which chat_request then keeps.
                call["id"] = call_id
            calls.append(call)
        self._calls = {}
        self._held = 0
        if self.budget.room is None or self.budget.fits(len(orjson.dumps(calls))):
            self._tool_calls.extend(calls)
        message = {"role": "assistant", "content": "", "tool_calls": calls}
        return {
            "model": self.model,
            "created_at": self._now(),
            "message": message,
            "done": False,
        }

    def _count(self, usage_key: str, timings_key: str) -> int | None:
        for source, key in ((self._usage, usage_key), (self._timings, timings_key)):
            if source:
                value = source.get(key)
                if _is_number(value):
                    return int(value)
        return None


def _done_reason(finish_reason: str | None) -> str:
    # Ollama ends a tool-calling turn with "stop"; it has no "tool_calls".
    if finish_reason is None or finish_reason == "tool_calls":
        return "stop"
    return finish_reason


def _ms_to_ns(ms: Any) -> int:
    return int(ms * 1e6) if _is_number(ms) else 0


def _arguments(text: str) -> JSONDict:
    """Parse streamed tool-call arguments; Ollama clients require an object."""
    if not text.strip():
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise BackendError(
            f"backend returned tool call arguments that are not a JSON object: {text[:200]}",
            502,
        )
    return value


def _stream_error(error: Any) -> BackendError:
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


# ---------------------------------------------------------------------------
# Errors


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


# ---------------------------------------------------------------------------
# Model endpoints


def _digest(model_id: str) -> str:
    return hashlib.sha256(model_id.encode()).hexdigest()


def _parameter_size(n_params: Any) -> str:
    """Format a parameter count the way Ollama lists it: ``135M``, ``1.7B``."""
    if not _is_number(n_params) or n_params <= 0:
        return ""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n_params >= scale:
            number = n_params / scale
            text = f"{number:.1f}" if suffix in ("B", "T") and number < 100 else f"{number:.0f}"
            return text.removesuffix(".0") + suffix
    return str(int(n_params))


_QUANT = re.compile(r"^(?:I?Q\d+(?:_[A-Z0-9]+)*|BF16|F16|F32|F64)$", re.IGNORECASE)


def _quantization(ftype: Any, model_path: Any) -> str:
    """Name the quantisation from llama-server's ftype, else from the file name."""
    if isinstance(ftype, str) and ftype:
        return ftype.upper().removeprefix("MOSTLY_")
    if not isinstance(model_path, str) or not model_path:
        return ""
    stem = model_path.replace("\\", "/").rsplit("/", 1)[-1]
    if stem.lower().endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    # "SmolLM2-135M-Instruct.Q4_1", "Llama-3.2-3B-Instruct-Q4_K_M": the
    # quantisation is the last dot- or dash-separated piece that looks like one.
    for piece in reversed(re.split(r"[.\-]", stem)):
        if _QUANT.match(piece):
            return piece.upper()
    return ""


def _meta(entry: Mapping[str, Any] | None) -> Mapping[str, Any]:
    meta = entry.get("meta") if isinstance(entry, Mapping) else None
    return meta if isinstance(meta, Mapping) else {}


def _props(props_json: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return props_json if isinstance(props_json, Mapping) else {}


def _family(props: Mapping[str, Any]) -> str:
    # Neither /v1/models nor /props names the GGUF architecture in the builds
    # we know; report it only if a build does, never guess it from a file name.
    for key in ("model_arch", "architecture", "general.architecture"):
        value = props.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _details(entry: Mapping[str, Any] | None, props_json: Mapping[str, Any] | None) -> JSONDict:
    meta = _meta(entry)
    props = _props(props_json)
    family = _family(props)
    ftype = meta.get("ftype") or props.get("model_ftype")
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family] if family else None,
        "parameter_size": _parameter_size(meta.get("n_params")),
        "quantization_level": _quantization(ftype, props.get("model_path")),
    }


def _context_length(entry: Mapping[str, Any] | None, props_json: Mapping[str, Any] | None) -> int:
    """The context a request gets: the slot's, else the loaded, else the trained one."""
    settings = _props(props_json).get("default_generation_settings")
    candidates = [settings.get("n_ctx") if isinstance(settings, Mapping) else None]
    meta = _meta(entry)
    candidates += [meta.get("n_ctx"), meta.get("n_ctx_train")]
    for value in candidates:
        if _is_number(value) and value > 0:
            return int(value)
    return 0


def client_names(model_id: str, mappings: Mapping[str, str]) -> list[str]:
    """The names clients know a backend model by, tagged: its mapped aliases, else its id."""
    names = [normalize_model_name(client) for client in aliases(model_id, mappings)]
    return list(dict.fromkeys(names)) or [normalize_model_name(model_id)]


def _entries(models_json: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    # Only OpenAI's ``data``: the Ollama-looking ``models`` array newer
    # llama-server builds add has "" for size and modified_at, which the
    # ollama client rejects.
    data = models_json.get("data") if isinstance(models_json, Mapping) else None
    if not isinstance(data, list):
        return []
    return [e for e in data if isinstance(e, Mapping) and isinstance(e.get("id"), str) and e.get("id")]


def _listed(
    models_json: Mapping[str, Any], props_json: Mapping[str, Any] | None, mappings: Mapping[str, str]
) -> list[tuple[Mapping[str, Any], JSONDict]]:
    """Each served model under each client-side name, with the fields both lists share."""
    out = []
    for entry in _entries(models_json):
        model_id = entry["id"]
        size = _meta(entry).get("size")
        shared: JSONDict = {
            "size": int(size) if _is_number(size) and size > 0 else 0,
            "digest": _digest(model_id),
            "details": _details(entry, props_json),
        }
        for name in client_names(model_id, mappings):
            out.append((entry, {"name": name, "model": name, **shared, "details": dict(shared["details"])}))
    return out


def tags_from_models(
    models_json: Mapping[str, Any],
    props_json: Mapping[str, Any] | None,
    mappings: Mapping[str, str],
) -> JSONDict:
    """Build the Ollama ``/api/tags`` body from llama-server's ``/v1/models``."""
    return {
        "models": [
            {**fields, "modified_at": _rfc3339_from_unix(entry.get("created"))}
            for entry, fields in _listed(models_json, props_json, mappings)
        ]
    }


def ps_from_models(
    models_json: Mapping[str, Any],
    props_json: Mapping[str, Any] | None,
    mappings: Mapping[str, str],
) -> JSONDict:
    """Build the Ollama ``/api/ps`` body: every served model is loaded, in RAM or VRAM."""
    return {
        "models": [
            # The proxy cannot tell where llama-server put the weights: size_vram 0.
            {
                **fields,
                "size_vram": 0,
                "expires_at": _FAR_FUTURE,
                "context_length": _context_length(entry, props_json),
            }
            for entry, fields in _listed(models_json, props_json, mappings)
        ]
    }


def _capabilities(props: Mapping[str, Any]) -> list[str]:
    capabilities = ["completion"]
    caps = props.get("chat_template_caps")
    caps = caps if isinstance(caps, Mapping) else {}
    if caps.get("supports_tools") is True or caps.get("supports_tool_calls") is True:
        capabilities.append("tools")
    modalities = props.get("modalities")
    if isinstance(modalities, Mapping) and modalities.get("vision") is True:
        capabilities.append("vision")
    thinking_keys = (
        "supports_reasoning",
        "supports_thinking",
        "supports_reasoning_effort",
    )
    if any(caps.get(key) is True for key in thinking_keys):
        capabilities.append("thinking")
    return capabilities


def show_from_props(
    name: str,
    models_entry: Mapping[str, Any] | None,
    props_json: Mapping[str, Any] | None,
) -> JSONDict:
    """Build the Ollama ``/api/show`` body from a ``/v1/models`` entry and ``/props``."""
    props = _props(props_json)
    meta = _meta(models_entry)
    details = _details(models_entry, props_json)
    arch = details["family"] or "unknown"
    model_info: JSONDict = {"general.architecture": arch}
    n_params = meta.get("n_params")
    if _is_number(n_params):
        model_info["general.parameter_count"] = int(n_params)
    context_length = _context_length(models_entry, props_json)
    if context_length:
        model_info[f"{arch}.context_length"] = context_length
    n_embd = meta.get("n_embd")
    if _is_number(n_embd):
        model_info[f"{arch}.embedding_length"] = int(n_embd)
    template = props.get("chat_template")
    model_path = props.get("model_path")
    modelfile = f"# {name} is served by llama.cpp's llama-server through llm-proxy; it has no Modelfile.\n"
    if isinstance(model_path, str) and model_path:
        modelfile += f"# model file: {model_path}\n"
    created = models_entry.get("created") if isinstance(models_entry, Mapping) else None
    return {
        "modelfile": modelfile,
        "parameters": "",
        "template": template if isinstance(template, str) else "",
        "details": details,
        "model_info": model_info,
        "capabilities": _capabilities(props),
        "modified_at": _rfc3339_from_unix(created),
    }
