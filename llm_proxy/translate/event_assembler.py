"""Fold the answers of OpenAI's Responses API and Anthropic's Messages API for the audit trail (pure).

Both APIs stream typed events (``{"type": "response.output_text.delta", ...}``,
``{"type": "content_block_delta", ...}``) rather than chat chunks, and answer
whole with an object of their own. :class:`ResponsesAssembler` and
:class:`MessagesAssembler` take either, one object at a time, and keep what
every row keeps: the text, the reasoning, the tool calls, why it ended, the
token counts and the error, within the same :class:`~.Budget` as the others.
"""

from __future__ import annotations

from typing import Any

import orjson

from . import Budget

__all__ = ["MessagesAssembler", "ResponsesAssembler"]


def _count(usage: Any, key: str) -> int | None:
    value = usage.get(key) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Folded:
    """What both assemblers keep: text, thinking and tool calls within one budget."""

    def __init__(self, limit: int | None) -> None:
        self._budget = Budget(limit)
        self._text: list[str] = []
        self._thinking: list[str] = []
        self._tool_calls: list[Any] = []
        self._reason: str | None = None
        self._prompt_tokens: int | None = None
        self._completion_tokens: int | None = None
        self._error: str | None = None
        self._fed = False

    def _take_text(self, text: Any) -> bool:
        if isinstance(text, str) and text:
            self._budget.keep(self._text, text)
            return True
        return False

    def _take_thinking(self, text: Any) -> bool:
        if isinstance(text, str) and text:
            self._budget.keep(self._thinking, text)
            return True
        return False

    def _take_call(self, call: dict[str, Any]) -> None:
        if self._budget.fits(len(orjson.dumps(call, default=str))):
            self._tool_calls.append(call)

    @property
    def text(self) -> str | None:
        return "".join(self._text) if self._fed else None

    @property
    def thinking(self) -> str | None:
        return "".join(self._thinking) or None

    @property
    def tool_calls(self) -> list[Any]:
        return self._tool_calls

    @property
    def done_reason(self) -> str | None:
        return self._reason

    @property
    def prompt_tokens(self) -> int | None:
        return self._prompt_tokens

    @property
    def completion_tokens(self) -> int | None:
        return self._completion_tokens

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def error_status(self) -> int | None:
        """None: neither API's error event names an HTTP status."""
        return None

    @property
    def truncated(self) -> bool:
        return self._budget.truncated


class ResponsesAssembler(_Folded):
    """``/v1/responses``: a whole ``response`` object, or its stream of ``response.*`` events."""

    def __init__(self, limit: int | None = None) -> None:
        super().__init__(limit)
        self._response: dict[str, Any] | None = None  # the last whole response seen
        self._streamed = False  # text came as deltas: the final response must not add it again

    def feed(self, obj: dict[str, Any]) -> bool:
        self._fed = True
        kind = obj.get("type")
        if obj.get("object") == "response":
            return self._whole(obj)
        if kind == "response.output_text.delta":
            self._streamed = True
            return self._take_text(obj.get("delta"))
        if kind in ("response.reasoning_text.delta", "response.reasoning_summary_text.delta"):
            self._streamed = True
            return self._take_thinking(obj.get("delta"))
        if kind == "response.output_item.done":
            item = obj.get("item")
            if isinstance(item, dict) and item.get("type") == "function_call":
                self._streamed = True
                self._take_call(_function_call(item))
                return True
            return False
        if kind in ("response.completed", "response.incomplete", "response.failed", "response.created"):
            response = obj.get("response")
            if isinstance(response, dict):
                self._whole(response)
            return False
        if kind == "error":
            message = obj.get("message")
            self._error = message if isinstance(message, str) else "the backend reported an error"
        return False

    def _whole(self, response: dict[str, Any]) -> bool:
        self._response = response
        usage = response.get("usage")
        self._prompt_tokens = _count(usage, "input_tokens") or self._prompt_tokens
        self._completion_tokens = _count(usage, "output_tokens") or self._completion_tokens
        status = response.get("status")
        details = response.get("incomplete_details")
        if isinstance(details, dict) and isinstance(details.get("reason"), str):
            self._reason = details["reason"]
        elif isinstance(status, str) and status not in ("in_progress", "queued"):
            self._reason = status
        error = response.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            self._error = error["message"]
        if self._streamed:
            return False
        token = False
        for item in response.get("output") or ():
            if not isinstance(item, dict):
                continue
            if item.get("type") == "message":
                for part in item.get("content") or ():
                    if isinstance(part, dict) and part.get("type") == "output_text":
                        token = self._take_text(part.get("text")) or token
            elif item.get("type") == "reasoning":
                for part in (item.get("content") or []) + (item.get("summary") or []):
                    if isinstance(part, dict):
                        token = self._take_thinking(part.get("text")) or token
            elif item.get("type") == "function_call":
                self._take_call(_function_call(item))
                token = True
        return token

    def result(self) -> dict[str, Any] | None:
        if self._response is not None:
            return self._response
        if not self._fed:
            return None
        content = [{"type": "output_text", "text": "".join(self._text)}]
        message = {"type": "message", "role": "assistant", "content": content}
        return {"object": "response", "output": [message]}


def _function_call(item: dict[str, Any]) -> dict[str, Any]:
    call = {"type": "function_call", "name": item.get("name"), "arguments": item.get("arguments")}
    if isinstance(item.get("call_id"), str):
        call["call_id"] = item["call_id"]
    return call


class MessagesAssembler(_Folded):
    """``/v1/messages``: a whole ``message``, or its stream of ``message_*``/``content_block_*`` events."""

    def __init__(self, limit: int | None = None) -> None:
        super().__init__(limit)
        self._head: dict[str, Any] = {}  # message_start's message, for the folded result
        self._blocks: dict[int, dict[str, Any]] = {}  # tool_use blocks being streamed, by index
        self._json: dict[int, list[str]] = {}  # their input_json_delta fragments

    def feed(self, obj: dict[str, Any]) -> bool:
        self._fed = True
        kind = obj.get("type")
        if kind == "message":
            return self._whole(obj)
        if kind == "message_start":
            message = obj.get("message")
            if isinstance(message, dict):
                self._head = {k: v for k, v in message.items() if k != "content"}
                self._prompt_tokens = _count(message.get("usage"), "input_tokens")
            return False
        if kind == "content_block_start":
            block, index = obj.get("content_block"), obj.get("index")
            if isinstance(block, dict) and block.get("type") == "tool_use" and isinstance(index, int):
                self._blocks[index] = {"type": "tool_use", "id": block.get("id"), "name": block.get("name")}
                self._json[index] = []
            return False
        if kind == "content_block_delta":
            return self._delta(obj.get("index"), obj.get("delta"))
        if kind == "content_block_stop":
            index = obj.get("index")
            if isinstance(index, int) and index in self._blocks:
                call = self._blocks.pop(index)
                text = "".join(self._json.pop(index, []))
                try:
                    call["input"] = orjson.loads(text) if text.strip() else {}
                except orjson.JSONDecodeError:
                    call["input"] = text
                self._take_call(call)
                return True
            return False
        if kind == "message_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                self._reason = delta["stop_reason"]
            self._completion_tokens = _count(obj.get("usage"), "output_tokens") or self._completion_tokens
            return False
        if kind == "error":
            error = obj.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            self._error = message if isinstance(message, str) else "the backend reported an error"
        return False

    def _delta(self, index: Any, delta: Any) -> bool:
        if not isinstance(delta, dict):
            return False
        kind = delta.get("type")
        if kind == "text_delta":
            return self._take_text(delta.get("text"))
        if kind == "thinking_delta":
            return self._take_thinking(delta.get("thinking"))
        if kind == "input_json_delta" and index in self._json:
            fragment = delta.get("partial_json")
            if isinstance(fragment, str) and self._budget.fits(len(fragment)):
                self._json[index].append(fragment)
            return True
        return False

    def _whole(self, message: dict[str, Any]) -> bool:
        self._head = {k: v for k, v in message.items() if k != "content"}
        usage = message.get("usage")
        self._prompt_tokens = _count(usage, "input_tokens")
        self._completion_tokens = _count(usage, "output_tokens")
        if isinstance(message.get("stop_reason"), str):
            self._reason = message["stop_reason"]
        token = False
        for block in message.get("content") or ():
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                token = self._take_text(block.get("text")) or token
            elif block.get("type") == "thinking":
                token = self._take_thinking(block.get("thinking")) or token
            elif block.get("type") == "tool_use":
                self._take_call({k: block.get(k) for k in ("type", "id", "name", "input")})
                token = True
        return token

    def result(self) -> dict[str, Any] | None:
        if not self._fed:
            return None
        content: list[dict[str, Any]] = []
        if self._thinking:
            content.append({"type": "thinking", "thinking": "".join(self._thinking)})
        if self._text:
            content.append({"type": "text", "text": "".join(self._text)})
        content.extend(self._tool_calls)
        out = {"type": "message", "role": "assistant", **self._head, "content": content}
        if self._reason is not None:
            out["stop_reason"] = self._reason
        usage = dict(out.get("usage") or {})
        if self._completion_tokens is not None:
            usage["output_tokens"] = self._completion_tokens
        if usage:
            out["usage"] = usage
        return out
