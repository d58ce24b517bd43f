"""Recorded exchanges as training examples: OpenAI's chat fine-tuning format and ShareGPT.

Pure: a stored row (as :class:`~llm_proxy.audit.query.Reader` gives it) in, one
example out, or the reason there is none. One example is the client's messages
(``/api/chat``, ``/v1/chat/completions``) or prompt (``/api/generate``,
``/v1/completions``), the tools it offered, and the answer it got, with its
tool calls.

OpenAI's format (https://platform.openai.com/docs/guides/supervised-fine-tuning)
is ``{"messages": [...], "tools": [...]}`` with the messages in the Chat
Completions shape. Ollama's messages differ in three ways, converted here:
tool-call ``arguments`` are an object (OpenAI: a JSON string), calls carry no
``id`` and tool results no ``tool_call_id`` (ids ``call_N`` are given, and each
result is paired with the calls before it in order), and ``images`` are a list
of base64 strings (OpenAI: ``image_url`` content parts with data URLs).
``thinking`` has no place in the format and is left out.

ShareGPT is the layout LLaMA-Factory reads: ``{"conversations": [{"from":
"human"|"gpt"|"function_call"|"observation", "value": ...}], "system": ...,
"tools": "<JSON text>"}``.
"""

from __future__ import annotations

from typing import Any

import orjson

CHAT = frozenset({"/api/chat", "/v1/chat/completions"})
GENERATE = frozenset({"/api/generate", "/v1/completions"})
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


class Skip(ValueError):
    """Why a row makes no example (not a chat or generate request, no stored body, …)."""


def openai_chat(row: dict[str, Any]) -> dict[str, Any]:
    """One fine-tuning example in OpenAI's chat format; :class:`Skip` when the row makes none."""
    body = _body(row)
    messages = _conversation(row, body)
    ids = _Ids()
    out = [_message(m, ids) for m in messages]
    answer: dict[str, Any] = {"role": "assistant", "content": row.get("response") or ""}
    calls = [_call(c, ids) for c in _stored_calls(row)]
    if calls:
        answer["tool_calls"] = calls
        answer["content"] = answer["content"] or None
    out.append(answer)
    example: dict[str, Any] = {"messages": out}
    tools = [_tool(t) for t in body.get("tools") or [] if isinstance(t, dict)]
    if tools:
        example["tools"] = tools
    return example


def sharegpt(row: dict[str, Any]) -> dict[str, Any]:
    """The same example in the ShareGPT layout; :class:`Skip` when the row makes none."""
    chat = openai_chat(row)
    system = []
    turns: list[dict[str, str]] = []
    for m in chat["messages"]:
        role = m["role"]
        if role in ("system", "developer"):
            system.append(_text(m.get("content")))
        elif role == "user":
            turns.append({"from": "human", "value": _text(m.get("content"))})
        elif role == "tool":
            turns.append({"from": "observation", "value": _text(m.get("content"))})
        elif m.get("tool_calls"):
            calls = [
                {"name": c["function"]["name"], "arguments": _loads_or_text(c["function"]["arguments"])}
                for c in m["tool_calls"]
            ]
            value = calls[0] if len(calls) == 1 else calls
            turns.append({"from": "function_call", "value": orjson.dumps(value).decode()})
        else:
            turns.append({"from": "gpt", "value": _text(m.get("content"))})
    example: dict[str, Any] = {"conversations": turns}
    if system:
        example["system"] = "\n\n".join(system)
    if chat.get("tools"):
        example["tools"] = orjson.dumps([t["function"] for t in chat["tools"]]).decode()
    return example


FORMATS = {"openai-chat": openai_chat, "sharegpt": sharegpt}


# -- pieces ----------------------------------------------------------------------


def _body(row: dict[str, Any]) -> dict[str, Any]:
    if row.get("endpoint") not in CHAT | GENERATE:
        raise Skip(f"not a chat or generate request ({row.get('endpoint')})")
    text = row.get("request_body")
    if not text:
        raise Skip("no request body stored (database.store_bodies: metadata)")
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise Skip("the stored request body is not JSON (cut at database.max_body_kb?)") from None
    if not isinstance(body, dict):
        raise Skip("the stored request body is not a JSON object")
    return body


def _conversation(row: dict[str, Any], body: dict[str, Any]) -> list[dict[str, Any]]:
    if row["endpoint"] in GENERATE:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise Skip("a generate request without a prompt")
        messages: list[dict[str, Any]] = []
        if isinstance(body.get("system"), str) and body["system"]:
            messages.append({"role": "system", "content": body["system"]})
        user: dict[str, Any] = {"role": "user", "content": prompt}
        if body.get("images"):
            user["images"] = body["images"]
        return [*messages, user]
    found = body.get("messages")
    if not isinstance(found, list) or not found:
        raise Skip("a chat request without messages")
    for m in found:
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise Skip("a message that is not an object with a known role")
    return found


class _Ids:
    """Tool-call ids: the recorded ones kept, missing ones numbered; results paired in order."""

    def __init__(self) -> None:
        self.n = 0
        self.pending: list[str] = []

    def new(self, given: Any) -> str:
        self.n += 1
        call_id = given if isinstance(given, str) and given else f"call_{self.n}"
        self.pending.append(call_id)
        return call_id

    def answer(self, given: Any) -> str:
        if isinstance(given, str) and given:
            if given in self.pending:
                self.pending.remove(given)
            return given
        if not self.pending:
            raise Skip("a tool result that answers no tool call")
        return self.pending.pop(0)


def _message(m: dict[str, Any], ids: _Ids) -> dict[str, Any]:
    role = m["role"]
    out: dict[str, Any] = {"role": role, "content": _content(m)}
    if role == "assistant":
        calls = [_call(c, ids) for c in m.get("tool_calls") or [] if isinstance(c, dict)]
        if calls:
            out["tool_calls"] = calls
            out["content"] = out["content"] or None
        elif out["content"] is None:
            out["content"] = ""
    elif role == "tool":
        out["tool_call_id"] = ids.answer(m.get("tool_call_id"))
        out["content"] = _text(out["content"])
    elif out["content"] is None:
        out["content"] = ""
    if isinstance(m.get("name"), str) and role in ("user", "system", "developer", "assistant"):
        out["name"] = m["name"]
    return out


def _content(m: dict[str, Any]) -> Any:
    content = m.get("content")
    images = [i for i in m.get("images") or [] if isinstance(i, str)]
    if not images:
        return content if isinstance(content, (str, list)) or content is None else str(content)
    parts: list[dict[str, Any]] = []
    if isinstance(content, str) and content:
        parts.append({"type": "text", "text": content})
    for image in images:
        parts.append({"type": "image_url", "image_url": {"url": f"data:{_mime(image)};base64,{image}"}})
    return parts


def _mime(b64: str) -> str:
    if b64.startswith("iVBOR"):
        return "image/png"
    if b64.startswith("R0lGOD"):
        return "image/gif"
    if b64.startswith("UklGR"):
        return "image/webp"
    return "image/jpeg"


def _call(c: dict[str, Any], ids: _Ids) -> dict[str, Any]:
    function = _mapping(c.get("function"))
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = orjson.dumps(arguments if arguments is not None else {}).decode()
    return {
        "id": ids.new(c.get("id")),
        "type": "function",
        "function": {"name": str(function.get("name") or ""), "arguments": arguments},
    }


def _stored_calls(row: dict[str, Any]) -> list[dict[str, Any]]:
    text = row.get("tool_calls")
    if not text:
        return []
    try:
        calls = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise Skip("the stored tool calls are not JSON") from None
    return [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []


def _tool(t: dict[str, Any]) -> dict[str, Any]:
    function = _mapping(t.get("function"))
    out: dict[str, Any] = {"name": str(function.get("name") or "")}
    if isinstance(function.get("description"), str):
        out["description"] = function["description"]
    if isinstance(function.get("parameters"), dict):
        out["parameters"] = function["parameters"]
    return {"type": "function", "function": out}


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _loads_or_text(arguments: str) -> Any:
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
