"""What an exchange says in the OpenTelemetry GenAI semantic conventions: pure, no SDK.

Names follow the conventions' registry (https://opentelemetry.io/docs/specs/semconv/gen-ai/,
status Development): the span of an inference is ``{gen_ai.operation.name}
{gen_ai.request.model}``; ``gen_ai.usage.input_tokens``,
``gen_ai.response.finish_reasons``… are its attributes; prompts and answers
(opt-in) are ``gen_ai.input.messages`` and ``gen_ai.output.messages``, JSON
text of the conventions' message shape (role, parts, finish_reason).

Everything here reads values the proxy already holds (the parsed request,
the finished :class:`~llm_proxy.audit.exchange.Exchange`); each value is
type-checked, since the body came from a client.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import orjson

from ..audit.exchange import Exchange

# gen_ai.operation.name of each route that makes a model compute.
OPERATIONS: Mapping[str, str] = {
    "/api/chat": "chat",
    "/v1/chat/completions": "chat",
    "/v1/responses": "chat",  # OpenAI's Responses API
    "/v1/messages": "chat",  # Anthropic's Messages API
    "/api/generate": "text_completion",
    "/v1/completions": "text_completion",
    "/api/embed": "embeddings",
    "/api/embeddings": "embeddings",
    "/v1/embeddings": "embeddings",
}
# gen_ai.provider.name by backend type: "openai" is the conventions' value for the
# OpenAI API's flavour, which llama-server speaks; the others are not in its list.
PROVIDERS: Mapping[str, str] = {"openai": "openai", "ollama": "ollama", "llamacpp": "llama.cpp"}

Attributes = dict[str, Any]


def operation(endpoint: str) -> str | None:
    """The GenAI operation of a route, None for routes that are not one (tags, show…)."""
    return OPERATIONS.get(endpoint)


def provider(backend_type: str) -> str:
    """``gen_ai.provider.name`` for a backend type."""
    return PROVIDERS.get(backend_type, backend_type)


def span_name(exchange: Exchange) -> str:
    """``chat smollm2`` for an inference; ``GET /api/tags`` for any other route."""
    op = operation(exchange.endpoint)
    if op is None:
        return f"{exchange.method} {exchange.endpoint}"
    return f"{op} {exchange.model}" if exchange.model else op


# Request settings: (Ollama options key, OpenAI body key, attribute, kind).
_SETTINGS = (
    ("temperature", "temperature", "gen_ai.request.temperature", float),
    ("num_predict", "max_tokens", "gen_ai.request.max_tokens", int),
    ("top_p", "top_p", "gen_ai.request.top_p", float),
    ("top_k", "top_k", "gen_ai.request.top_k", float),
    ("seed", "seed", "gen_ai.request.seed", int),
    ("frequency_penalty", "frequency_penalty", "gen_ai.request.frequency_penalty", float),
    ("presence_penalty", "presence_penalty", "gen_ai.request.presence_penalty", float),
)


def request_attributes(api: str, body: Mapping[str, Any] | None) -> Attributes:
    """The ``gen_ai.request.*`` settings a request body names (numbers only, as the conventions type them)."""
    if not isinstance(body, Mapping):
        return {}
    source: Any = body.get("options") if api == "ollama" else body
    out: Attributes = {}
    if isinstance(source, Mapping):
        for ollama_key, openai_key, name, kind in _SETTINGS:
            value: Any = source.get(ollama_key if api == "ollama" else openai_key)
            if api == "openai" and value is None and openai_key == "max_tokens":
                value = source.get("max_completion_tokens", source.get("max_output_tokens"))
            if _number(value) and (kind is float or isinstance(value, int)):
                out[name] = kind(value)
        stop = source.get("stop")
        if isinstance(stop, str):
            stop = [stop]
        if isinstance(stop, list) and stop and all(isinstance(s, str) for s in stop):
            out["gen_ai.request.stop_sequences"] = stop
    n = body.get("n") if api == "openai" else None
    if isinstance(n, int) and not isinstance(n, bool) and n != 1:
        out["gen_ai.request.choice.count"] = n
    if body.get("format") is not None or _json_format(body.get("response_format")):
        out["gen_ai.output.type"] = "json"
    return out


def response_attributes(exchange: Exchange) -> Attributes:
    """What the answer said: tokens, finish reason, response model and id."""
    out: Attributes = {}
    if _count(exchange.prompt_tokens):
        out["gen_ai.usage.input_tokens"] = exchange.prompt_tokens
    if _count(exchange.completion_tokens):
        out["gen_ai.usage.output_tokens"] = exchange.completion_tokens
    if isinstance(exchange.done_reason, str) and exchange.done_reason:
        out["gen_ai.response.finish_reasons"] = [exchange.done_reason]
    body = exchange.response_body
    if isinstance(body, Mapping):
        model, answer_id = body.get("model"), body.get("id")
        if isinstance(model, str) and model:
            out["gen_ai.response.model"] = model
        if isinstance(answer_id, str) and answer_id:
            out["gen_ai.response.id"] = answer_id
    if "gen_ai.response.model" not in out and exchange.backend_model and exchange.status_code == 200:
        out["gen_ai.response.model"] = exchange.backend_model
    return out


def input_messages(api: str, endpoint: str, body: Mapping[str, Any] | None) -> Attributes:
    """``gen_ai.input.messages`` (and ``gen_ai.system_instructions``) of a request, as JSON text."""
    if not isinstance(body, Mapping) or operation(endpoint) not in ("chat", "text_completion"):
        return {}  # embeddings have no messages, other routes no prompt
    out: Attributes = {}
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("messages"), list):
        for m in body["messages"]:
            if isinstance(m, Mapping):
                messages.append(_message(m))
    elif isinstance(body.get("input"), str):  # the Responses API's plain input
        messages.append({"role": "user", "parts": [{"type": "text", "content": body["input"]}]})
    elif isinstance(body.get("input"), list):  # its input items: the messages among them
        for m in body["input"]:
            if isinstance(m, Mapping) and isinstance(m.get("role"), str):
                messages.append(_message(m))
    elif operation(endpoint) == "text_completion":
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            messages.append({"role": "user", "parts": [{"type": "text", "content": prompt}]})
    system = body.get("system", body.get("instructions"))  # Ollama's and Anthropic's, the Responses API's
    if isinstance(system, str) and system:
        out["gen_ai.system_instructions"] = _json([{"type": "text", "content": system}])
    if messages:
        out["gen_ai.input.messages"] = _json(messages)
    return out


def output_messages(exchange: Exchange) -> Attributes:
    """``gen_ai.output.messages``: the answer as it was recorded, as JSON text."""
    parts: list[dict[str, Any]] = []
    if exchange.thinking:
        parts.append({"type": "reasoning", "content": exchange.thinking})
    if exchange.response:
        parts.append({"type": "text", "content": exchange.response})
    for call in exchange.tool_calls or ():
        parts.append(_tool_call(call))
    if not parts:
        return {}
    message: dict[str, Any] = {"role": "assistant", "parts": parts}
    if exchange.done_reason:
        message["finish_reason"] = exchange.done_reason
    return {"gen_ai.output.messages": _json([message])}


def _message(m: Mapping[str, Any]) -> dict[str, Any]:
    """One chat message (Ollama's or OpenAI's) in the conventions' shape."""
    role = m.get("role") if isinstance(m.get("role"), str) else "user"
    parts: list[dict[str, Any]] = []
    content = m.get("content")
    if isinstance(content, str) and content:
        kind = "tool_call_response" if role == "tool" else "text"
        key = "result" if role == "tool" else "content"
        part: dict[str, Any] = {"type": kind, key: content}
        if role == "tool" and isinstance(m.get("tool_call_id"), str):
            part["id"] = m["tool_call_id"]
        parts.append(part)
    elif isinstance(content, list):  # OpenAI's content parts
        for p in content:
            if isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str):
                parts.append({"type": "text", "content": p["text"]})
            elif isinstance(p, Mapping):
                parts.append({"type": str(p.get("type") or "unknown")})  # an image: its kind, not its bytes
    if isinstance(m.get("images"), list):
        parts.extend({"type": "image"} for _ in m["images"])
    for call in m.get("tool_calls") or ():
        if isinstance(call, Mapping):
            parts.append(_tool_call(call))
    return {"role": role, "parts": parts}


def _tool_call(call: Any) -> dict[str, Any]:
    """A tool call (Ollama's or OpenAI's shape) as a ``tool_call`` part."""
    part: dict[str, Any] = {"type": "tool_call"}
    if not isinstance(call, Mapping):
        return part
    function: Mapping[str, Any] = call["function"] if isinstance(call.get("function"), Mapping) else {}
    if isinstance(call.get("id"), str):
        part["id"] = call["id"]
    if isinstance(function.get("name"), str):
        part["name"] = function["name"]
    arguments = function.get("arguments")
    if isinstance(arguments, str):  # OpenAI sends JSON text; the conventions want the object
        with contextlib.suppress(orjson.JSONDecodeError):
            arguments = orjson.loads(arguments)
    if arguments is not None:
        part["arguments"] = arguments
    return part


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _json_format(value: Any) -> bool:
    return isinstance(value, Mapping) and value.get("type") in ("json_object", "json_schema")
