"""Fold an OpenAI-style answer into what the audit trail records (pure, no I/O).

An answer arrives as the chunks of a stream (``chat.completion.chunk`` or
``text_completion`` events) or as one whole object (``chat.completion``,
``text_completion``, an embeddings list). :class:`OpenAIAssembler` takes either,
one object at a time, and keeps the text, the reasoning, the tool calls (their
streamed argument fragments joined per ``index``), the finish reason, the usage
and llama-server's ``timings``. Usage is taken from whichever object carries it
last: llama-server and Ollama send it in a chunk of its own (``choices: []``),
Ollama's completions stream also puts zeros on every earlier chunk.

With a ``limit`` (``database.max_body_kb``) at most that many characters of
text, reasoning and tool calls are kept in all; the rest is dropped from the
copy and ``truncated`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeGuard

from . import Budget

__all__ = ["OpenAIAssembler", "is_usage_only"]

# Fields of the first chunk that the assembled object keeps.
_HEAD = ("id", "object", "created", "model", "system_fingerprint")
# The object type of a whole answer, for the type of its stream chunks.
_WHOLE = {"chat.completion.chunk": "chat.completion"}


def is_usage_only(event: dict[str, Any]) -> bool:
    """True for the extra chunk that ``stream_options.include_usage`` adds at the end."""
    return event.get("choices") == [] and isinstance(event.get("usage"), dict)


@dataclass(slots=True)
class _ToolCall:
    id: str | None = None
    type: str = "function"
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def result(self) -> dict[str, Any]:
        call: dict[str, Any] = {
            "type": self.type,
            "function": {"name": self.name, "arguments": "".join(self.arguments)},
        }
        if self.id is not None:
            call["id"] = self.id
        return call


@dataclass(slots=True)
class _Choice:
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, _ToolCall] = field(default_factory=dict)
    finish_reason: str | None = None
    role: str = "assistant"
    is_text: bool = False  # a completions choice ("text"), not a chat message

    def result(self, index: int) -> dict[str, Any]:
        content = "".join(self.content)
        out: dict[str, Any] = {"index": index}
        if self.is_text:
            out["text"] = content
        else:
            message: dict[str, Any] = {"role": self.role, "content": content or None}
            if self.reasoning:
                message["reasoning_content"] = "".join(self.reasoning)
            if self.tool_calls:
                message["tool_calls"] = [self.tool_calls[i].result() for i in sorted(self.tool_calls)]
            out["message"] = message
        out["finish_reason"] = self.finish_reason
        return out


# What a new choice or tool call costs against the limit, so that a stream of
# ever new indexes cannot grow the copy either.
_ENTRY_COST = 64


class OpenAIAssembler:
    """Collect an OpenAI-style answer, chunk by chunk or whole: an :class:`~.Assembler`."""

    __slots__ = ("_choices", "_fed", "budget", "error", "error_status", "head", "timings", "usage")

    def __init__(self, limit: int | None = None) -> None:
        self.budget = Budget(limit)
        self._choices: dict[int, _Choice] = {}
        self._fed = False
        self.head: dict[str, Any] = {}
        self.usage: dict[str, Any] | None = None
        self.timings: dict[str, Any] | None = None
        self.error: str | None = None
        self.error_status: int | None = None  # the error's "code", when it is an integer

    def feed(self, obj: dict[str, Any]) -> bool:
        """Take one chunk or whole answer; True when it carried answer tokens."""
        self._fed = True
        if not self.head:
            self.head = {key: obj[key] for key in _HEAD if key in obj}
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        if isinstance(obj.get("timings"), dict):
            self.timings = obj["timings"]
        if "error" in obj:
            self._error(obj["error"])
        tokens = False
        choices = obj.get("choices")
        for position, choice in enumerate(choices if isinstance(choices, list) else []):
            if isinstance(choice, dict):
                index = choice.get("index")
                tokens |= self._choice(index if _is_int(index) else position, choice)
        return tokens

    def _error(self, error: Any) -> None:
        if isinstance(error, dict):
            message = error.get("message")
            self.error = message if isinstance(message, str) and message else str(error)
            code = error.get("code")
            self.error_status = code if _is_int(code) else None
        else:
            self.error = str(error)

    @property
    def truncated(self) -> bool:
        """True when something was left out of the copy to stay within the limit."""
        return self.budget.truncated

    def _choice(self, index: int, choice: dict[str, Any]) -> bool:
        state = self._choices.get(index)
        if state is None:
            if not self.budget.fits(_ENTRY_COST):
                return _carries_tokens(choice)
            state = self._choices[index] = _Choice()
        if isinstance(choice.get("finish_reason"), str):
            state.finish_reason = choice["finish_reason"]
        if isinstance(choice.get("text"), str):
            state.is_text = True
            self.budget.keep(state.content, choice["text"])
            return bool(choice["text"])
        part = choice.get("delta")
        whole = part is None
        if whole:
            part = choice.get("message")
        if not isinstance(part, dict):
            return False
        if isinstance(part.get("role"), str):
            state.role = part["role"]
        tokens = False
        if isinstance(part.get("content"), str) and part["content"]:
            self.budget.keep(state.content, part["content"])
            tokens = True
        # llama-server says "reasoning_content", Ollama "reasoning".
        for key in ("reasoning_content", "reasoning"):
            if isinstance(part.get(key), str) and part[key]:
                self.budget.keep(state.reasoning, part[key])
                tokens = True
        calls = part.get("tool_calls")
        for position, call in enumerate(calls if isinstance(calls, list) else []):
            if isinstance(call, dict):
                # A whole message's calls are in order; a delta names its index.
                named = call.get("index")
                self._tool_call(state, named if _is_int(named) and not whole else position, call)
                tokens = True
        return tokens

    def _tool_call(self, state: _Choice, index: int, call: dict[str, Any]) -> None:
        entry = state.tool_calls.get(index)
        if entry is None:
            if not self.budget.fits(_ENTRY_COST):
                return
            entry = state.tool_calls[index] = _ToolCall()
        if isinstance(call.get("id"), str) and call["id"]:
            entry.id = call["id"]
        if isinstance(call.get("type"), str) and call["type"]:
            entry.type = call["type"]
        function = call.get("function")
        if isinstance(function, dict):
            if isinstance(function.get("name"), str) and function["name"] and not entry.name:
                entry.name = function["name"]
            if isinstance(function.get("arguments"), str):
                self.budget.keep(entry.arguments, function["arguments"])

    # -- what the log records (choice 0 is the answer) ------------------------

    @property
    def _first(self) -> _Choice | None:
        return self._choices.get(0) or next(iter(self._choices.values()), None)

    @property
    def text(self) -> str | None:
        """The answer's text (chat content or completion text), None when there is none."""
        first = self._first
        return "".join(first.content) if first is not None else None

    @property
    def thinking(self) -> str | None:
        """The reasoning (llama-server's reasoning_content, Ollama's reasoning), None without any."""
        first = self._first
        return "".join(first.reasoning) if first is not None and first.reasoning else None

    @property
    def tool_calls(self) -> list[Any]:
        first = self._first
        if first is None:
            return []
        return [first.tool_calls[i].result() for i in sorted(first.tool_calls)]

    @property
    def done_reason(self) -> str | None:
        """The finish_reason."""
        first = self._first
        return first.finish_reason if first is not None else None

    @property
    def prompt_tokens(self) -> int | None:
        value = (self.usage or {}).get("prompt_tokens")
        return value if _is_int(value) else None

    @property
    def completion_tokens(self) -> int | None:
        value = (self.usage or {}).get("completion_tokens")
        return value if _is_int(value) else None

    def result(self) -> dict[str, Any] | None:
        """The streamed answer as one object, in the shape of the non-streamed answer."""
        if not self._fed:
            return None
        out = dict(self.head)
        if isinstance(out.get("object"), str):
            out["object"] = _WHOLE.get(out["object"], out["object"])
        out["choices"] = [self._choices[i].result(i) for i in sorted(self._choices)]
        if self.usage is not None:
            out["usage"] = self.usage
        if self.timings is not None:
            out["timings"] = self.timings
        if self.error is not None:
            out["error"] = self.error
        return out


def _carries_tokens(choice: dict[str, Any]) -> bool:
    """Whether a choice left out of the copy still carried answer tokens (for the timings)."""
    if isinstance(choice.get("text"), str):
        return bool(choice["text"])
    part = choice.get("delta")
    if part is None:
        part = choice.get("message")
    if not isinstance(part, dict):
        return False
    keys = ("content", "reasoning_content", "reasoning")
    return any(isinstance(part.get(k), str) and part[k] for k in keys) or bool(part.get("tool_calls"))


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
