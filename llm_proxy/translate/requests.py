"""Ollama chat and generate requests as the body an OpenAI-style backend (llama-server) takes.

:func:`chat_request` and :func:`generate_request` map messages, tool calls and
their results, images, ``options``, ``format`` and ``think``; per-model
``params`` from the config are laid over the result (:func:`apply_params`).
The proxy always streams from the backend (and folds the stream for
``stream: false`` clients), so every body asks for a stream with usage.

The bodies here have passed :func:`llm_proxy.api.validate.request`: the types
a field must have are checked there, once, with one wording. What is left here
is what only this backend needs: integer options that fit a C int, a tool
call's name that is not empty, images that really decode (the edge checks their
characters and length, which "==" passes), no images with ``raw``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

import orjson

from llm_proxy.errors import BadRequest

from . import JSONDict, Kind

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

# The proxy depends on these; per-model params from the config cannot change them.
_PROTECTED_KEYS = frozenset({"model", "messages", "prompt", "stream", "stream_options"})

_STREAM_USAGE: JSONDict = {"include_usage": True}


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


def chat_request(body: Mapping[str, Any], backend_model: str, params: Mapping[str, Any]) -> JSONDict:
    """Build the ``/v1/chat/completions`` body for an Ollama ``/api/chat`` request."""
    out: JSONDict = {
        "model": backend_model,
        "messages": _chat_messages(body.get("messages") or []),
        "stream": True,
        "stream_options": dict(_STREAM_USAGE),
    }
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
    _apply_options(body.get("options"), out)
    _apply_format(body.get("format"), out, raw=False)
    _apply_think(body.get("think"), out)
    _apply_logprobs(body, out, raw=False)
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
    counterpart there. Nor are ``truncate`` and ``shift``, here or in chat:
    llama-server's context handling is set when it starts (docs/translation.md).
    """
    prompt = body.get("prompt") or ""
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
        # No chat template runs for a raw prompt: ``think`` has nothing to switch.
        _apply_logprobs(body, out, raw=True)
        apply_params(params, out)
        return COMPLETIONS_PATH, out

    messages: list[JSONDict] = []
    system = body.get("system") or ""
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
    _apply_logprobs(body, out, raw=False)
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
        role = message["role"]
        content = message.get("content") or ""
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


def _history_tool_call(call: JSONDict, field: str, number: int) -> JSONDict:
    """Map one Ollama history tool call to the OpenAI shape llama-server requires."""
    function = call["function"]
    name = function["name"]
    if not name:  # Ollama takes an empty name; llama-server's templates cannot
        raise BadRequest(f"{field}.function.name must be a non-empty string")
    arguments = function.get("arguments")
    if arguments is None:
        arguments_text = "{}"
    elif isinstance(arguments, str):
        arguments_text = arguments
    else:
        arguments_text = orjson.dumps(arguments).decode()
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        # Numbered by position in the conversation, so the same history gets
        # the same ids on every round and the backend's prompt cache holds.
        call_id = f"call_{number}"
    mapped: JSONDict = {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments_text},
    }
    index = function.get("index")
    if isinstance(index, int) and not isinstance(index, bool):
        # Ollama's function.index is where OpenAI keeps it: on the call itself.
        mapped["index"] = index
    return mapped


def _tools(tools: list[JSONDict] | None) -> list[JSONDict]:
    """Pass the tool list through; ``[]`` means no tools and is dropped."""
    # Ollama defaults a missing type to "function"; OpenAI requires it.
    return [tool if "type" in tool else {"type": "function", **tool} for tool in tools or []]


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


def _image_url(image: str, field: str) -> str:
    """One Ollama image (base64, maybe a data: URL) as a data: URL naming its type."""
    declared = ""
    payload = image
    if image.startswith("data:"):
        header, _, payload = image.partition(",")
        declared = header[5:].removesuffix(";base64")
    raw = payload.encode("ascii", "replace")
    if _WHITESPACE.search(raw):
        # Go's base64 decoding, which Ollama uses, skips line breaks.
        raw = _WHITESPACE.sub(b"", raw)
    if len(raw) % 4:
        raw += b"=" * (-len(raw) % 4)
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        # The edge checked the characters; only decoding finds "ABCDE=" or "==".
        raise BadRequest(f"'{field}' must be base64 image data") from None
    mime = _sniff_image(decoded[:16])
    if mime == "image/jpeg" and declared.startswith("image/") and not decoded.startswith(b"\xff\xd8\xff"):
        # Unknown magic: a type the client declared beats the fallback.
        mime = declared
    return f"data:{mime};base64,{raw.decode('ascii')}"


def _content_with_images(text: str, images: list[str], field: str) -> list[JSONDict]:
    """Build OpenAI content parts: the text, then each image as a data: URL."""
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
    for key, value in (options or {}).items():
        if value is None:
            continue
        if key in _SAME_NAME_OPTIONS:
            out[key] = _int32(value, key) if key in _INT_OPTIONS else value
        elif key == "num_predict":
            # -1 (unlimited) and -2 (fill the context) are Ollama's; newer
            # llama-server rejects negatives, and omitting means unlimited.
            if value >= 0:
                out["max_tokens"] = int(_int32(value, key))
        elif key == "num_keep":
            out["n_keep"] = int(_int32(value, key))
        elif key == "stop":
            out["stop"] = [value] if isinstance(value, str) else list(value)
        # Everything else is load-time (num_ctx, num_gpu, num_thread, ...),
        # fixed when llama-server started, or unknown: dropped.


def _apply_format(fmt: Any, out: JSONDict, *, raw: bool) -> None:
    """Map Ollama's ``format`` to structured output."""
    if fmt is None or fmt == "":
        return
    schema: JSONDict = {} if fmt == "json" else fmt
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
    """Map Ollama's ``think`` to the template switch, and a level to the reasoning effort too.

    A level ("low", "medium", "high", "max": api.validate) asks for thinking
    at that effort: llama-server hands ``reasoning_effort`` to templates that
    read it (gpt-oss), and ``enable_thinking`` switches on the ones that read
    that instead (Qwen3), which would otherwise follow their own default.
    """
    if think is None:
        return
    if isinstance(think, bool):
        out["chat_template_kwargs"] = {"enable_thinking": think}
    else:
        out["chat_template_kwargs"] = {"enable_thinking": True}
        out["reasoning_effort"] = think


def wanted_logprobs(body: Mapping[str, Any]) -> int | None:
    """How many alternatives per token the client wants with ``logprobs``; None: no logprobs."""
    if body.get("logprobs") is not True:
        return None
    top = body.get("top_logprobs")
    return top if isinstance(top, int) and not isinstance(top, bool) else 0


def _apply_logprobs(body: Mapping[str, Any], out: JSONDict, *, raw: bool) -> None:
    """Ask llama-server for log probabilities: chat's ``logprobs``/``top_logprobs``, raw's count.

    llama-server leaves them out entirely when asked for no alternatives, so at
    least one is asked for; the stream translator drops what the client did not
    want (``translate.stream``).
    """
    top = wanted_logprobs(body)
    if top is None:
        return
    if raw:  # /v1/completions: the legacy integer form
        out["logprobs"] = max(top, 1)
    else:
        out["logprobs"] = True
        out["top_logprobs"] = max(top, 1)


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


def is_load_request(body: Mapping[str, Any], kind: Kind) -> bool:
    """Ollama treats a request with nothing to answer as "load the model"."""
    if kind == "chat":
        return body.get("messages") in (None, [])
    return body.get("prompt") in (None, "") and not body.get("images")
