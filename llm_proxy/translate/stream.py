"""One backend stream of OpenAI chunks as the Ollama NDJSON chunks a client reads (pure).

:class:`StreamTranslator` takes the decoded SSE events of one answer and gives
the Ollama chunks to send for each; ``translate.ndjson.ChunkAssembler`` folds
them into the single object a ``stream: false`` client gets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from llm_proxy.errors import BackendError

from . import JSONDict, Kind, is_number, rfc3339_now
from .errors import stream_error


class StreamTranslator:
    """Translate one backend stream of OpenAI chunks into Ollama chunks.

    Content and thinking go out as they arrive. Tool-call fragments are
    collected per ``index`` and go out once, complete, in one chunk: when a
    ``finish_reason`` arrives or at :meth:`finish`, whichever is first.
    Usage and timings are remembered from whichever chunk carries them.
    Tool-call fragments waiting to go out are held whole, up to ``limit``
    characters (a 502 beyond). What the answer said is the audit trail's to
    assemble, from the chunks sent (``translate.ndjson.ChunkAssembler``).
    """

    __slots__ = (
        "_calls",
        "_deltas",
        "_finish_reason",
        "_held",
        "_limit",
        "_logprobs",
        "_now",
        "_timings",
        "_usage",
        "kind",
        "model",
    )

    def __init__(
        self,
        kind: Kind,
        model: str,
        created_at: Callable[[], str] | None = None,
        *,
        limit: int | None = None,
        logprobs: int | None = None,
    ) -> None:
        if kind not in ("chat", "generate"):
            raise ValueError(f"unknown stream kind {kind!r}")
        self.kind: Kind = kind
        self.model = model
        self._now = created_at or rfc3339_now
        self._limit = limit
        # Alternatives per token the client asked for; None: it wants no logprobs.
        self._logprobs = logprobs
        self._held = 0  # characters of tool-call fragments waiting to go out
        self._deltas = 0
        # index -> [id, name, argument fragments]
        self._calls: dict[int, list[Any]] = {}
        self._finish_reason: str | None = None
        self._usage: JSONDict | None = None
        self._timings: JSONDict | None = None

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
            raise stream_error(error)
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
        probs = self._token_logprobs(choice.get("logprobs")) if self._logprobs is not None else None
        delta = choice.get("delta")
        if delta is not None:
            text = delta.get("content")
            thought = delta.get("reasoning_content")
            if text or thought or probs:
                out.append(self._text_chunk(text or "", thought or "", probs))
            calls = delta.get("tool_calls")
            if calls:
                self._deltas += 1
                self._collect(calls)
        else:
            # /v1/completions (raw generate) streams ``text``, not deltas.
            text = choice.get("text")
            if text or probs:
                out.append(self._text_chunk(text or "", "", probs))
        reason = choice.get("finish_reason")
        if reason is not None:
            self._finish_reason = reason
            if self._calls:
                out.append(self._tool_call_chunk())
        return out

    def feed_events(self, events: Iterable[str], chunks: list[JSONDict]) -> bool:
        """Append the Ollama chunks of SSE ``events`` (their data) to ``chunks``; True at ``[DONE]``.

        The chunks made before an error frame are in ``chunks`` when its
        BackendError is raised: they still reach the client.
        """
        for event in events:
            if event == "[DONE]":
                return True
            chunks.extend(self.feed(_event_json(event)))
        return False

    def finish(self, total_duration_ns: int, load_duration_ns: int = 0) -> list[JSONDict]:
        """Return the last chunks after ``[DONE]``: pending tool calls, then the final one."""
        out: list[JSONDict] = []
        if self._calls:
            out.append(self._tool_call_chunk())
        reason = _done_reason(self._finish_reason)
        timings = self._timings or {}
        # Counts from usage, else from llama-server's timings.
        prompt_tokens = self._count("prompt_tokens", "prompt_n")
        completion_tokens = self._count("completion_tokens", "predicted_n")
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

    def _text_chunk(self, text: str, thought: str, probs: list[JSONDict] | None = None) -> JSONDict:
        if type(text) is not str or type(thought) is not str:
            # feed() reports this as a malformed chunk.
            raise TypeError("content and reasoning_content must be strings")
        self._deltas += 1
        chunk: JSONDict
        if self.kind == "chat":
            message: JSONDict = {"role": "assistant", "content": text}
            if thought:
                message["thinking"] = thought
            chunk = {"model": self.model, "created_at": self._now(), "message": message}
        else:
            chunk = {"model": self.model, "created_at": self._now(), "response": text}
            if thought:
                chunk["thinking"] = thought
        chunk["done"] = False
        if probs:
            chunk["logprobs"] = probs
        return chunk

    def _token_logprobs(self, value: Any) -> list[JSONDict] | None:
        """OpenAI's ``logprobs.content`` as Ollama's ``logprobs``: token, logprob, bytes, alternatives."""
        if not isinstance(value, dict) or not isinstance(value.get("content"), list):
            return None
        top = self._logprobs or 0
        out: list[JSONDict] = []
        for entry in value["content"]:
            item = _token_logprob(entry)
            if item is None:
                continue
            alternatives = entry.get("top_logprobs")
            if top and isinstance(alternatives, list):
                item["top_logprobs"] = [
                    alt for alt in map(_token_logprob, alternatives[:top]) if alt is not None
                ]
            out.append(item)
        return out or None

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
                if is_number(value):
                    return int(value)
        return None


def _token_logprob(entry: Any) -> JSONDict | None:
    """One token's ``{token, logprob, bytes}``; None for an entry of another shape."""
    if not isinstance(entry, dict):
        return None
    token, logprob = entry.get("token"), entry.get("logprob")
    if not isinstance(token, str) or not is_number(logprob):
        return None
    item: JSONDict = {"token": token, "logprob": float(logprob)}
    raw = entry.get("bytes")
    if isinstance(raw, list) and all(isinstance(b, int) and not isinstance(b, bool) for b in raw):
        item["bytes"] = raw
    return item


def _done_reason(finish_reason: str | None) -> str:
    # Ollama ends a tool-calling turn with "stop"; it has no "tool_calls".
    if finish_reason is None or finish_reason == "tool_calls":
        return "stop"
    return finish_reason


def _ms_to_ns(ms: Any) -> int:
    return int(ms * 1e6) if is_number(ms) else 0


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


def _event_json(event: str) -> JSONDict:
    try:
        chunk = orjson.loads(event)
    except orjson.JSONDecodeError:
        raise BackendError(f"backend sent an event that is not JSON: {event[:200]!r}", 502) from None
    if not isinstance(chunk, dict):
        raise BackendError(f"backend sent an event that is not a JSON object: {event[:200]!r}", 502)
    return chunk
