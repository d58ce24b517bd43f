"""One exchange, and one Home Assistant turn, shaped for reading as a conversation.

The page renders what this module returns and nothing else: messages as
role, text, thinking, tool calls and image thumbnails, in the order the model
saw them, then the answer. Ollama's and OpenAI's message shapes both come out
the same. Every value stays plain data; the page writes it as text.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..audit.query import Reader
from ..errors import AuditError
from . import dialect
from .signin import Refused

MAX_ROUNDS = 64  # rounds of one turn shown (Home Assistant stops at ten)
# Leading bytes of base64 images, for the thumbnail's media type.
_IMAGE_TYPES = {"iVBOR": "image/png", "/9j/": "image/jpeg", "R0lG": "image/gif", "UklGR": "image/webp"}


def exchange(reader: Reader, row_id: int) -> dict[str, Any]:
    """The exchange's row, its conversation, its timing split and its turn's round count (404: none)."""
    row = _get(reader, row_id)
    rounds = 0
    if row.get("turn_id") is not None:
        rounds = dialect.value(reader, "SELECT count(*) FROM logs WHERE turn_id = ?", (row["turn_id"],))
    return {
        "exchange": row,
        "conversation": conversation(row),
        "tools": tools(row),
        "timing": timing(row),
        "turn_rounds": rounds,
    }


def tools(row: dict[str, Any]) -> list[str]:
    """The names of the tools the request offered the model."""
    body = _json(row.get("request_body"))
    offered = body.get("tools") if isinstance(body, dict) else None
    if not isinstance(offered, list):
        return []
    names = []
    for tool in offered:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.append(function["name"])
    return names


def turn(reader: Reader, turn_id: int) -> dict[str, Any]:
    """Every round of one spoken request: for each, the messages new to it and its answer."""
    if "turn_id" not in reader.columns:
        raise Refused(404, "this database has no turns yet: run 'llm-proxy migrate'")
    ids = [
        r[0]
        for r in dialect.rows(
            reader, "SELECT id FROM logs WHERE turn_id = ? ORDER BY id LIMIT ?", (turn_id, MAX_ROUNDS)
        )
    ]
    if not ids:
        raise Refused(404, f"no turn with id {turn_id}")
    rounds: list[dict[str, Any]] = []
    seen = 0
    for row_id in ids:
        row = _get(reader, row_id)
        messages = _request_messages(row)
        new = messages[seen:] if len(messages) >= seen else messages
        seen = len(messages)
        if rounds and rounds[-1]["answer"] is not None and new and new[0]["role"] == "assistant":
            new = new[1:]  # the last round's answer, sent back: shown once, as that answer
        summary = {k: row.get(k) for k in ("id", "timestamp", "model", "status_code", "latency_ms", "error")}
        rounds.append({**summary, "messages": new, "answer": answer(row)})
    return {"turn_id": turn_id, "rounds": rounds}


def _get(reader: Reader, row_id: int) -> dict[str, Any]:
    try:
        return reader.get(row_id)
    except AuditError as exc:
        if str(exc).startswith("cannot read"):  # the database, not the row: 503 (routes.middleware)
            raise
        raise Refused(404, str(exc)) from None


def conversation(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages the model was given, then its answer (marked ``answer: true``)."""
    found = _request_messages(row)
    reply = answer(row)
    if reply is not None:
        found.append(reply)
    return found


def _request_messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    body = _json(row.get("request_body"))
    if not isinstance(body, dict):
        return [message({"role": "user", "content": row["prompt"]})] if row.get("prompt") else []
    found: list[dict[str, Any]] = []
    if isinstance(body.get("system"), str) and body["system"]:
        found.append(message({"role": "system", "content": body["system"]}))
    messages = body.get("messages")
    if isinstance(messages, list):
        found += [message(m) for m in messages if isinstance(m, dict)]
    elif isinstance(body.get("prompt"), str):
        found.append(message({"role": "user", "content": body["prompt"], "images": body.get("images")}))
    return found


def answer(row: dict[str, Any]) -> dict[str, Any] | None:
    """The assistant's answer as a message, or None when there was none."""
    calls = _json(row.get("tool_calls"))
    if not (row.get("response") or row.get("thinking") or calls):
        return None
    reply = message(
        {"role": "assistant", "content": row.get("response") or "", "thinking": row.get("thinking"),
         "tool_calls": calls if isinstance(calls, list) else None}
    )  # fmt: skip
    reply["answer"] = True
    return reply


def message(raw: dict[str, Any]) -> dict[str, Any]:
    """One message in the page's shape: role, text, thinking, tool calls, images, tool names."""
    content = raw.get("content")
    images = [_image(i) for i in raw.get("images") or [] if isinstance(i, str)]
    if isinstance(content, list):  # OpenAI's content parts
        texts = []
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") == "image_url":
                link = part.get("image_url")
                url = link.get("url") if isinstance(link, dict) else None
                if isinstance(url, str):
                    images.append(url if url.startswith("data:image/") else None)
        content = "\n".join(texts)
    out: dict[str, Any] = {
        "role": str(raw.get("role") or "?"),
        "content": content if isinstance(content, str) else (None if content is None else _text(content)),
    }
    thinking = raw.get("thinking") or raw.get("reasoning_content")
    if isinstance(thinking, str) and thinking:
        out["thinking"] = thinking
    calls = raw.get("tool_calls")
    if isinstance(calls, list) and calls:
        out["tool_calls"] = [_call(c) for c in calls]
    for name in ("tool_name", "name", "tool_call_id"):
        if isinstance(raw.get(name), str):
            out[name] = raw[name]
    if images:
        out["images"] = images
    return out


def _call(raw: Any) -> dict[str, Any]:
    """A tool call as name and arguments (an object when it parses, else the text)."""
    function = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(function, dict):
        return {"name": None, "arguments": raw}
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        parsed = _json(arguments)
        arguments = parsed if parsed is not None else arguments
    return {"name": function.get("name"), "arguments": arguments, "id": raw.get("id")}


def _image(data: str) -> str | None:
    """A data: URL for a base64 image (None when it is not one the page may show)."""
    if data.startswith("data:image/"):
        return data
    for head, kind in _IMAGE_TYPES.items():
        if data.startswith(head):
            return f"data:{kind};base64,{data}"
    return None


def timing(row: dict[str, Any]) -> dict[str, Any]:
    """Where the time went: before the first byte, streaming, the model's own time, and the rest."""
    total, first = row.get("latency_ms"), row.get("ttfb_ms")
    out: dict[str, Any] = {"total_ms": total, "first_byte_ms": first, "first_token_ms": row.get("ttft_ms")}
    if total is not None and first is not None:
        out["streaming_ms"] = max(0, total - first)
    body = _json(row.get("response_body"))
    model_ms = None
    if isinstance(body, dict):
        timings = body.get("timings")
        if isinstance(timings, dict):  # llama-server's own
            parts = [timings.get("prompt_ms"), timings.get("predicted_ms")]
            if all(isinstance(p, (int, float)) for p in parts):
                model_ms = round(sum(parts))  # type: ignore[arg-type]
        else:  # Ollama's, in nanoseconds
            parts = [body.get("prompt_eval_duration"), body.get("eval_duration")]
            if all(isinstance(p, int) for p in parts):
                model_ms = round(sum(parts) / 1e6)  # type: ignore[arg-type]
    if model_ms is not None:
        out["backend_model_ms"] = model_ms
        if total is not None and model_ms <= total:
            out["proxy_and_network_ms"] = total - model_ms
    tokens, ms = row.get("completion_tokens"), out.get("streaming_ms") or total
    if tokens and ms:
        out["tokens_per_s"] = round(tokens * 1000 / ms, 1)
    return out


def _json(text: Any) -> Any:
    if not isinstance(text, str) or not text:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def _text(value: Any) -> str:
    return orjson.dumps(value).decode()
