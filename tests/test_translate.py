"""Tests for the Ollama <-> OpenAI translation, on frames recorded from llama-server.

Every chunk a client would see is also validated with the real ``ollama``
client's pydantic types, which is what Home Assistant's client does.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from ollama._types import (
    ChatResponse,
    EmbeddingsResponse,
    EmbedResponse,
    GenerateResponse,
    ListResponse,
    ProcessResponse,
    ShowResponse,
)

from llm_proxy.api import validate
from llm_proxy.backends import replies
from llm_proxy.backends.base import Call, Whole
from llm_proxy.errors import BackendError, BadRequest
from llm_proxy.translate import rfc3339_now
from llm_proxy.translate.catalog import (
    normalize_model_name,
    ps_from_models,
    show_from_props,
    tags_from_models,
)
from llm_proxy.translate.embeddings import (
    embed_request,
    embed_response,
    embeddings_legacy_request,
    embeddings_legacy_response,
)
from llm_proxy.translate.errors import error_from_backend
from llm_proxy.translate.ndjson import ChunkAssembler
from llm_proxy.translate.requests import chat_request, dropped_options, generate_request
from llm_proxy.translate.sse import SSEDecoder
from llm_proxy.translate.stream import StreamTranslator

from .ha_turn import TURN_ON

FIXTURES = Path(__file__).parent / "fixtures" / "llama-server"
STAMP = "2026-11-22T04:05:06.123456789Z"
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
RFC3339_NANOS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> Any:
    return orjson.loads(fixture_bytes(name))


def frames(name: str) -> list[dict[str, Any]]:
    """The decoded backend chunks of a recorded stream, up to ``[DONE]``."""
    decoder = SSEDecoder()
    payloads = decoder.feed(fixture_bytes(f"{name}.body")) + decoder.flush()
    assert payloads[-1] == "[DONE]"
    return [orjson.loads(p) for p in payloads[:-1]]


def run(
    chunks: list[dict[str, Any]], kind: str = "chat", total: int = 123_456_789
) -> tuple[StreamTranslator, list[dict[str, Any]]]:
    """Feed backend chunks through a translator; return it and every Ollama chunk."""
    translator = StreamTranslator(kind, "smollm2:latest", lambda: STAMP)  # type: ignore[arg-type]
    out: list[dict[str, Any]] = []
    for chunk in chunks:
        out += translator.feed(chunk)
    out += translator.finish(total, 5)
    return translator, out


def deltas(chunks: list[dict[str, Any]], key: str = "content") -> list[str]:
    found = []
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            value = (choice.get("delta") or {}).get(key)
            if value:
                found.append(value)
    return found


def wire(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    """A chat chunk in llama-server's exact wire shape."""
    return {
        "choices": [{"finish_reason": finish_reason, "index": 0, "delta": delta}],
        "created": 1795319481,
        "id": "chatcmpl-XeROX7S2DxuOPHhmL5pEEVDAgcXKL3Vq",
        "model": "smollm2",
        "system_fingerprint": "b0-unknown",
        "object": "chat.completion.chunk",
    }


def tool_delta(index: int, **fields: Any) -> dict[str, Any]:
    return wire({"tool_calls": [{"index": index, **fields}]})


def assert_final_ints(final: dict[str, Any]) -> None:
    for key in (
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ):
        assert type(final[key]) is int, key


# ---------------------------------------------------------------------------
# Streams


def test_chat_stream_content_metrics_and_client_types() -> None:
    backend = frames("chat-stream")
    _, out = run(backend)
    *middle, final = out
    expected = deltas(backend)
    assert [c["message"]["content"] for c in middle] == expected
    assert "".join(c["message"]["content"] for c in out) == "".join(expected)
    for chunk in middle:
        assert chunk["done"] is False
        assert chunk["model"] == "smollm2:latest"
        assert chunk["created_at"] == STAMP
        ChatResponse.model_validate(chunk)
    usage = backend[-1]["usage"]
    timings = backend[-1]["timings"]
    assert final["done"] is True
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["done_reason"] == "length"
    assert final["total_duration"] == 123_456_789
    assert final["load_duration"] == 5
    assert final["prompt_eval_count"] == usage["prompt_tokens"] == 38
    assert final["eval_count"] == usage["completion_tokens"] == 12
    assert final["prompt_eval_duration"] == int(timings["prompt_ms"] * 1e6)
    assert final["eval_duration"] == int(timings["predicted_ms"] * 1e6)
    assert_final_ints(final)
    parsed = ChatResponse.model_validate(final)
    assert parsed.done and parsed.message.role == "assistant"


def test_role_delta_with_null_content_sends_nothing() -> None:
    translator = StreamTranslator("chat", "m")
    assert translator.feed(frames("chat-stream")[0]) == []


def test_chat_stream_without_usage_takes_counts_from_timings() -> None:
    backend = frames("chat-stream-no-usage")
    assert all("usage" not in c for c in backend)
    timings = backend[-1]["timings"]
    _, out = run(backend)
    final = out[-1]
    assert final["done_reason"] == "length"
    assert final["prompt_eval_count"] == timings["prompt_n"]
    assert final["eval_count"] == timings["predicted_n"]
    assert final["prompt_eval_duration"] == int(timings["prompt_ms"] * 1e6)
    assert final["eval_duration"] == int(timings["predicted_ms"] * 1e6)
    assert_final_ints(final)
    ChatResponse.model_validate(final)


def test_chat_length_is_done_reason_length() -> None:
    _, out = run(frames("chat-length"))
    assert out[-1]["done_reason"] == "length"
    assert out[-1]["eval_count"] == 5


def test_no_counts_at_all_falls_back_to_delta_count() -> None:
    backend = [wire({"content": "a"}), wire({"content": "b"}), wire({}, "stop")]
    _, out = run(backend)
    assert out[-1]["eval_count"] == 2
    assert out[-1]["prompt_eval_count"] == 0
    assert out[-1]["prompt_eval_duration"] == 0
    assert out[-1]["eval_duration"] == 0
    assert out[-1]["done_reason"] == "stop"


def test_real_tool_call_stream_yields_one_complete_tool_call_chunk() -> None:
    backend = frames("chat-tools-stream")
    fragments = [
        tc["function"].get("arguments", "")
        for c in backend
        for choice in c["choices"]
        for tc in (choice["delta"].get("tool_calls") or [])
    ]
    _, out = run(backend)
    with_calls = [i for i, c in enumerate(out) if c["message"].get("tool_calls")]
    assert len(with_calls) == 1
    position = with_calls[0]
    assert position == len(out) - 2  # right before the final chunk
    call_chunk = out[position]
    assert call_chunk["done"] is False
    assert call_chunk["message"]["content"] == ""
    (call,) = call_chunk["message"]["tool_calls"]
    assert call["function"]["name"] == "HassTurnOn"
    assert call["function"]["arguments"] == json.loads("".join(fragments))
    assert call["id"] == "QwiJu1ZkXgOKD9Jj8bxEdHG0GbqmaaGm"
    parsed = ChatResponse.model_validate(call_chunk)
    assert parsed.message.tool_calls is not None
    assert dict(parsed.message.tool_calls[0].function.arguments) == {"name": "HassTurnOn"}
    final = out[-1]
    assert final["done_reason"] == "stop"
    assert "tool_calls" not in final["message"]
    assert_final_ints(final)
    assert final["eval_count"] == 71
    ChatResponse.model_validate(final)
    assert "".join(c["message"]["content"] for c in out) == "".join(deltas(backend))


def test_tool_call_chunk_is_sent_when_finish_reason_arrives() -> None:
    translator = StreamTranslator("chat", "m", lambda: STAMP)
    start = tool_delta(0, id="a", type="function", function={"name": "f", "arguments": ""})
    assert translator.feed(start) == []
    assert translator.feed(tool_delta(0, function={"arguments": '{"x": 1}'})) == []
    out = translator.feed(wire({}, "tool_calls"))
    assert len(out) == 1
    assert out[0]["message"]["tool_calls"][0]["function"]["arguments"] == {"x": 1}
    # Nothing is sent twice at the end.
    assert len(translator.finish(1)) == 1


def test_pending_tool_calls_are_sent_by_finish_before_the_final_chunk() -> None:
    translator = StreamTranslator("chat", "m", lambda: STAMP)
    translator.feed(tool_delta(0, id="a", function={"name": "f", "arguments": "{}"}))
    out = translator.finish(1)
    assert len(out) == 2
    assert out[0]["message"]["tool_calls"][0]["function"] == {
        "index": 0,
        "name": "f",
        "arguments": {},
    }
    assert out[1]["done"] is True
    assert out[1]["done_reason"] == "stop"


def test_parallel_tool_calls_in_index_order_with_sparse_fragments() -> None:
    translator = StreamTranslator("chat", "m", lambda: STAMP)
    backend = [
        tool_delta(1, id="b", type="function", function={"name": "second"}),
        tool_delta(0, id="a", type="function", function={"name": "first"}),
        tool_delta(0),  # some builds send a fragment with no function at all
        tool_delta(1, function={}),  # or a function with no arguments
        tool_delta(1, function={"arguments": '{"n":'}),
        tool_delta(1, function={"arguments": " 2}"}),
        wire({}, "tool_calls"),
    ]
    out: list[dict[str, Any]] = []
    for chunk in backend:
        out += translator.feed(chunk)
    (only,) = out
    calls = only["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["first", "second"]
    assert calls[0]["function"]["arguments"] == {}
    assert calls[1]["function"]["arguments"] == {"n": 2}
    ChatResponse.model_validate(only)


@pytest.mark.parametrize("arguments", ['{"name": ', "[1, 2]", '"text"', "nope"])
def test_tool_call_arguments_that_are_not_an_object_are_a_backend_error(
    arguments: str,
) -> None:
    translator = StreamTranslator("chat", "m")
    translator.feed(tool_delta(0, id="a", function={"name": "f"}))
    translator.feed(tool_delta(0, function={"arguments": arguments}))
    with pytest.raises(BackendError) as caught:
        translator.feed(wire({}, "tool_calls"))
    assert caught.value.status == 502
    assert str(caught.value) == (
        "backend returned tool call arguments that are not a JSON object: " + arguments
    )


def test_long_invalid_arguments_are_cut_in_the_message() -> None:
    translator = StreamTranslator("chat", "m")
    translator.feed(tool_delta(0, id="a", function={"name": "f", "arguments": "x" * 999}))
    with pytest.raises(BackendError) as caught:
        translator.finish(1)
    assert str(caught.value).endswith(": " + "x" * 200)


def test_tool_call_without_a_name_is_a_backend_error() -> None:
    translator = StreamTranslator("chat", "m")
    translator.feed(tool_delta(0, id="a", function={"arguments": "{}"}))
    with pytest.raises(BackendError):
        translator.feed(wire({}, "tool_calls"))


def test_reasoning_content_becomes_thinking() -> None:
    backend = [
        wire({"role": "assistant", "content": None}),
        wire({"reasoning_content": "The user"}),
        wire({"reasoning_content": " greets."}),
        wire({"content": "Hi", "reasoning_content": "!"}),
        wire({"content": " there"}),
        wire({}, "stop"),
    ]
    _, out = run(backend)
    assert out[0]["message"] == {
        "role": "assistant",
        "content": "",
        "thinking": "The user",
    }
    assert out[2]["message"] == {"role": "assistant", "content": "Hi", "thinking": "!"}
    assert out[3]["message"] == {"role": "assistant", "content": " there"}
    for chunk in out:
        ChatResponse.model_validate(chunk)
    result = fold(out)
    assert result["message"]["thinking"] == "The user greets.!"
    assert result["message"]["content"] == "Hi there"


def test_generate_kind_over_a_chat_stream() -> None:
    backend = frames("chat-stream")
    backend.insert(2, wire({"reasoning_content": "hmm"}))
    _, out = run(backend, kind="generate")
    *middle, final = out
    assert "".join(c["response"] for c in middle) == "".join(deltas(backend))
    assert [c for c in middle if c.get("thinking")] == [
        {
            "model": "smollm2:latest",
            "created_at": STAMP,
            "response": "",
            "thinking": "hmm",
            "done": False,
        }
    ]
    for chunk in out:
        GenerateResponse.model_validate(chunk)
    assert final["response"] == ""
    assert final["context"] == []
    assert final["done"] is True
    assert "message" not in final
    assert_final_ints(final)


def test_raw_generate_over_a_completions_stream() -> None:
    backend = frames("completions-stream")
    texts = [c["choices"][0]["text"] for c in backend if c["choices"][0]["text"]]
    _, out = run(backend, kind="generate")
    *middle, final = out
    assert [c["response"] for c in middle] == texts
    # This build puts usage on the finish chunk, not on a chunk of its own.
    usage = backend[-1]["usage"]
    assert final["prompt_eval_count"] == usage["prompt_tokens"]
    assert final["eval_count"] == usage["completion_tokens"]
    assert final["done_reason"] == "length"
    for chunk in out:
        GenerateResponse.model_validate(chunk)
    assert fold(out)["response"] == "".join(texts)


def test_mid_stream_error_frame_is_a_backend_error() -> None:
    translator = StreamTranslator("chat", "m")
    translator.feed(wire({"content": "partial"}))
    frame = {
        "error": {
            "code": 500,
            "message": "slot unavailable",
            "type": "server_error",
        }
    }
    with pytest.raises(BackendError) as caught:
        translator.feed(frame)
    assert caught.value.status == 500
    assert str(caught.value) == "slot unavailable"


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        ({"message": "odd", "code": "x"}, 502, "odd"),
        ({"message": "overloaded", "code": 503}, 503, "overloaded"),
        ("plain text", 502, "plain text"),
        ({}, 502, "backend reported an error in the stream"),
    ],
)
def test_error_frame_variants(error: Any, status: int, message: str) -> None:
    with pytest.raises(BackendError) as caught:
        StreamTranslator("chat", "m").feed({"error": error})
    assert (caught.value.status, caught.value.message) == (status, message)


@pytest.mark.parametrize(
    "chunk",
    [
        {"choices": [17]},
        {"choices": "abc"},
        {"choices": [{"delta": "x"}]},
        {"choices": [{"delta": {"content": 5}}]},
        {"choices": [{"delta": {"reasoning_content": ["x"]}}]},
        {"choices": [{"text": {"a": 1}}]},
        {"choices": [{"delta": {"tool_calls": 3}}]},
    ],
)
def test_malformed_chunk_is_a_backend_error_not_a_crash(chunk: dict[str, Any]) -> None:
    translator = StreamTranslator("chat", "m")
    with pytest.raises(BackendError) as caught:
        translator.feed(chunk)
    assert caught.value.status == 502
    assert "malformed" in str(caught.value)


def test_usage_and_timings_of_the_wrong_shape_are_ignored() -> None:
    translator = StreamTranslator("chat", "m")
    translator.feed({"choices": [], "usage": [1], "timings": "x"})
    final = translator.finish(1)[-1]
    assert final["prompt_eval_count"] == 0
    assert final["eval_duration"] == 0


def test_eof_without_done() -> None:
    error = StreamTranslator("chat", "m").eof_without_done()
    assert isinstance(error, BackendError)
    assert error.status == 502
    assert "before it finished" in str(error)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        StreamTranslator("embed", "m")  # type: ignore[arg-type]


def test_default_timestamps_are_rfc3339_with_nanoseconds() -> None:
    translator = StreamTranslator("chat", "m")
    (chunk,) = translator.feed(wire({"content": "x"}))
    assert RFC3339_NANOS.match(chunk["created_at"])
    assert RFC3339_NANOS.match(rfc3339_now())
    parsed = datetime.fromisoformat(rfc3339_now()[:26] + "+00:00")
    assert parsed.tzinfo is not None


# ---------------------------------------------------------------------------
# folding a stream into one answer (ChunkAssembler, shared with the audit trail)


def fold(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    assembler = ChunkAssembler()
    for chunk in chunks:
        assembler.feed(chunk)
    result = assembler.result()
    assert result is not None
    return result


def test_fold_chat_stream() -> None:
    backend = frames("chat-stream")
    _, out = run(backend)
    result = fold(out)
    assert result["message"] == {
        "role": "assistant",
        "content": "".join(deltas(backend)),
    }
    assert result["done"] is True
    assert result["done_reason"] == "length"
    assert result["eval_count"] == 12
    assert_final_ints(result)
    ChatResponse.model_validate(result)


def test_fold_tool_call_stream() -> None:
    backend = frames("chat-tools-stream")
    _, out = run(backend)
    result = fold(out)
    assert result["message"]["content"] == "".join(deltas(backend))
    (call,) = result["message"]["tool_calls"]
    assert call["function"]["name"] == "HassTurnOn"
    assert "thinking" not in result["message"]
    ChatResponse.model_validate(result)


def test_fold_passed_through_ollama_chunks() -> None:
    chunks = [
        {"model": "m", "created_at": STAMP, "response": "a", "done": False},
        {
            "model": "m",
            "created_at": STAMP,
            "response": "",
            "thinking": "t",
            "done": False,
        },
        {"model": "m", "created_at": STAMP, "response": "b", "done": False},
        {
            "model": "m",
            "created_at": STAMP,
            "response": "",
            "done": True,
            "done_reason": "stop",
            "context": [1, 2],
            "eval_count": 2,
        },
    ]
    original = copy.deepcopy(chunks)
    result = fold(chunks)
    assert result["response"] == "ab"
    assert result["thinking"] == "t"
    assert result["context"] == [1, 2]
    assert result["eval_count"] == 2
    assert chunks == original
    GenerateResponse.model_validate(result)


# ---------------------------------------------------------------------------
# Requests


def home_assistant_body() -> dict[str, Any]:
    """A chat body shaped like the one Home Assistant's Ollama integration sends."""
    return {
        "model": "smollm2",
        "messages": [
            {"role": "system", "content": "You are a voice assistant."},
            {"role": "user", "content": "Turn on the kitchen and the hall light"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"function": {"name": "HassTurnOn", "arguments": {"name": "kitchen"}}},
                    {"function": {"name": "HassTurnOn", "arguments": {"name": "hall"}}},
                ],
            },
            {"role": "tool", "content": '{"success": true}'},
            {"role": "tool", "content": '{"success": false}'},
            {"role": "user", "content": "What is this?", "images": [PNG_B64]},
        ],
        "tools": [],
        "stream": True,
        "keep_alive": "-1.0s",
        "options": {"num_ctx": 8192.0, "num_predict": 100, "top_k": 40.0},
        "think": False,
        "format": {"type": "object", "properties": {"ok": {"type": "boolean"}}},
    }


def test_home_assistant_chat_request() -> None:
    body = home_assistant_body()
    original = copy.deepcopy(body)
    out = chat_request(body, "backend-model", {})
    assert body == original
    assert out["model"] == "backend-model"
    assert out["stream"] is True
    assert out["stream_options"] == {"include_usage": True}
    assert "tools" not in out
    assert "num_ctx" not in out
    assert "keep_alive" not in out
    assert out["max_tokens"] == 100
    assert out["top_k"] == 40
    assert type(out["top_k"]) is int
    assert out["chat_template_kwargs"] == {"enable_thinking": False}
    assert out["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": original["format"]},
    }
    messages = out["messages"]
    assert messages[0] == {"role": "system", "content": "You are a voice assistant."}
    assistant = messages[2]
    assert assistant["content"] == ""
    assert assistant["tool_calls"] == [
        {
            "id": "call_0",
            "type": "function",
            "function": {"name": "HassTurnOn", "arguments": '{"name":"kitchen"}'},
        },
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "HassTurnOn", "arguments": '{"name":"hall"}'},
        },
    ]
    assert messages[3] == {
        "role": "tool",
        "content": '{"success": true}',
        "tool_call_id": "call_0",
    }
    assert messages[4] == {
        "role": "tool",
        "content": '{"success": false}',
        "tool_call_id": "call_1",
    }
    assert messages[5]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_B64}},
    ]
    assert orjson.loads(orjson.dumps(out)) == out


def test_chat_request_matches_what_the_real_server_accepted() -> None:
    recorded = fixture_json("chat-tool-result.meta.json")["request"]["body"]
    ollama_body = {
        "model": "smollm2",
        "messages": [
            {"role": "user", "content": "Turn on the kitchen light"},
            {
                "role": "assistant",
                "tool_calls": [{"function": {"name": "HassTurnOn", "arguments": {"name": "kitchen"}}}],
            },
            {"role": "tool", "content": '{"success": true}', "tool_name": "HassTurnOn"},
        ],
        "tools": [TURN_ON],
        "options": {"num_predict": 16, "temperature": 0},
    }
    out = chat_request(ollama_body, "smollm2", {})
    assert out["tools"] == recorded["tools"]
    assert out["stream"] == recorded["stream"]
    assert out["stream_options"] == recorded["stream_options"]
    assert out["max_tokens"] == recorded["max_tokens"]
    assert out["temperature"] == recorded["temperature"]
    expected_messages = copy.deepcopy(recorded["messages"])
    expected_messages[1]["content"] = ""  # llama-server takes "" as well as null
    for message in (expected_messages[1], out["messages"][1]):
        for call in message["tool_calls"]:
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    assert out["messages"] == expected_messages


def test_history_tool_call_ids_and_string_arguments_are_kept() -> None:
    body = {
        "messages": [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "x1", "function": {"name": "a", "arguments": '{"k":1}'}},
                    {"function": {"name": "b", "index": 1}},
                ],
            },
            {"role": "tool", "content": "rb", "tool_name": "b"},
            {"role": "tool", "content": "ra"},
            {"role": "tool", "content": "extra"},
        ]
    }
    messages = chat_request(body, "m", {})["messages"]
    calls = messages[0]["tool_calls"]
    assert calls[0]["id"] == "x1"
    assert calls[0]["function"]["arguments"] == '{"k":1}'
    assert calls[1]["id"] == "call_1"
    assert calls[1]["function"] == {"name": "b", "arguments": "{}"}
    # tool_name picks among parallel calls; the rest pair in order.
    assert messages[1]["tool_call_id"] == "call_1"
    assert messages[2]["tool_call_id"] == "x1"
    # More results than calls: no id is invented.
    assert "tool_call_id" not in messages[3]
    assert "tool_name" not in messages[1]


def test_explicit_tool_call_id_is_kept_and_consumes_its_call() -> None:
    body = {
        "messages": [
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "p", "function": {"name": "a", "arguments": {}}},
                    {"id": "q", "function": {"name": "a", "arguments": {}}},
                ],
            },
            {"role": "tool", "content": "1", "tool_call_id": "q"},
            {"role": "tool", "content": "2"},
        ]
    }
    messages = chat_request(body, "m", {})["messages"]
    assert messages[1]["tool_call_id"] == "q"
    assert messages[2]["tool_call_id"] == "p"


def test_synthesized_ids_are_stable_as_the_conversation_grows() -> None:
    body = home_assistant_body()
    first = chat_request(body, "m", {})["messages"]
    body["messages"] += [
        {"role": "assistant", "tool_calls": [{"function": {"name": "X", "arguments": {}}}]},
        {"role": "tool", "content": "done"},
    ]
    second = chat_request(body, "m", {})["messages"]
    assert second[: len(first)] == first
    assert second[-2]["tool_calls"][0]["id"] == "call_2"
    assert second[-1]["tool_call_id"] == "call_2"


def test_assistant_thinking_is_passed_as_reasoning_content() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello", "thinking": "be nice"},
            {"role": "user", "content": "again", "thinking": "ignored on users"},
        ]
    }
    messages = chat_request(body, "m", {})["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": "hello",
        "reasoning_content": "be nice",
    }
    assert messages[2] == {"role": "user", "content": "again"}


def test_missing_content_becomes_empty_string() -> None:
    body = {"messages": [{"role": "user"}, {"role": "system", "content": None}]}
    messages = chat_request(body, "m", {})["messages"]
    assert messages == [
        {"role": "user", "content": ""},
        {"role": "system", "content": ""},
    ]


def test_tools_pass_through_and_get_a_type() -> None:
    bare = {"function": {"name": "f"}}
    out = chat_request({"messages": [], "tools": [TURN_ON, bare]}, "m", {})
    assert out["tools"] == [TURN_ON, {"type": "function", "function": {"name": "f"}}]
    assert "tools" not in chat_request({"messages": [], "tools": None}, "m", {})


def image_b64(head: bytes) -> str:
    return base64.b64encode(head + b"\x00" * 32).decode()


@pytest.mark.parametrize(
    ("head", "mime"),
    [
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xd8\xff\xe0", "image/jpeg"),
        (b"GIF89a", "image/gif"),
        (b"GIF87a", "image/gif"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"BM", "image/bmp"),
        (b"\x00\x01unknown", "image/jpeg"),
    ],
)
def test_image_mime_is_sniffed(head: bytes, mime: str) -> None:
    data = image_b64(head)
    out = chat_request({"messages": [{"role": "user", "content": "", "images": [data]}]}, "m", {})
    assert out["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}
    ]


def test_image_with_data_url_prefix_line_breaks_and_no_padding() -> None:
    wrapped = PNG_B64[:40] + "\n" + PNG_B64[40:].rstrip("=")
    with_prefix = "data:image/png;base64," + PNG_B64
    body = {"messages": [{"role": "user", "content": "x", "images": [wrapped, with_prefix]}]}
    parts = chat_request(body, "m", {})["messages"][0]["content"]
    assert parts[1]["image_url"]["url"] == "data:image/png;base64," + PNG_B64
    assert parts[2]["image_url"]["url"] == "data:image/png;base64," + PNG_B64


@pytest.mark.parametrize("image", ["not base64!"])
def test_invalid_image_names_the_field(image: Any) -> None:
    body = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "user", "content": "b", "images": [PNG_B64, image]},
        ]
    }
    with pytest.raises(BadRequest, match=re.escape("messages[1].images[1]")) as caught:
        chat_request(body, "m", {})
    assert caught.value.status == 400


@pytest.mark.parametrize("image", ["==", "ABCDE="])
def test_images_only_decoding_refuses_pass_the_edge_and_stop_here(image: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "b", "images": [image]}]}
    validate.request("/api/chat", body)  # the edge checks characters and length, not the data
    with pytest.raises(BadRequest) as caught:
        chat_request(body, "m", {})
    assert caught.value.message == "'messages[0].images[0]' must be base64 image data"


def test_missing_messages_are_an_empty_conversation() -> None:
    assert chat_request({"model": "x"}, "m", {})["messages"] == []


def test_options_mapping() -> None:
    options = {
        "num_predict": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 20,
        "min_p": 0.05,
        "typical_p": 1.0,
        "repeat_penalty": 1.1,
        "repeat_last_n": 64.0,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "seed": 7,
        "mirostat": 2,
        "mirostat_tau": 5.0,
        "mirostat_eta": 0.1,
        "stop": ["\n\n", "User:"],
        "num_keep": 4,
        "num_ctx": 8192,
        "num_gpu": 99,
        "num_thread": 8,
        "num_batch": 512,
        "main_gpu": 0,
        "use_mmap": True,
        "use_mlock": False,
        "numa": False,
        "low_vram": False,
        "f16_kv": True,
        "vocab_only": False,
        "penalize_newline": True,
        "something_new": 1,
        "temperature_unset": None,
    }
    out = chat_request({"messages": [], "options": options}, "m", {})
    mapped = {k: v for k, v in out.items() if k not in ("model", "messages", "stream", "stream_options")}
    assert mapped == {
        "max_tokens": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 20,
        "min_p": 0.05,
        "typical_p": 1.0,
        "repeat_penalty": 1.1,
        "repeat_last_n": 64,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "seed": 7,
        "mirostat": 2,
        "mirostat_tau": 5.0,
        "mirostat_eta": 0.1,
        "stop": ["\n\n", "User:"],
        "n_keep": 4,
    }
    assert dropped_options({"options": options}) == [
        "num_ctx",
        "num_gpu",
        "num_thread",
        "num_batch",
        "main_gpu",
        "use_mmap",
        "use_mlock",
        "numa",
        "low_vram",
        "f16_kv",
        "vocab_only",
        "penalize_newline",
        "something_new",
        "temperature_unset",
    ]


@pytest.mark.parametrize(
    ("key", "value"),
    [("top_k", 2**31), ("repeat_last_n", -(2**31) - 1), ("num_predict", 3e9), ("num_keep", 2**40)],
)
def test_integer_options_llama_server_cannot_hold_are_400_naming_them(key: str, value: float) -> None:
    with pytest.raises(BadRequest) as caught:
        chat_request({"messages": [], "options": {key: value}}, "m", {})
    assert (
        caught.value.message
        == f"'options.{key}' must be a number from -2147483648 to 2147483647 for llama-server"
    )


def test_integer_options_at_llama_servers_limits_pass() -> None:
    options = {"top_k": 2**31 - 1, "mirostat": -(2**31), "num_predict": float(2**31 - 1), "seed": -(2**63)}
    out = chat_request({"messages": [], "options": options}, "m", {})
    assert (out["top_k"], out["mirostat"], out["max_tokens"], out["seed"]) == (
        2**31 - 1,
        -(2**31),
        2**31 - 1,
        -(2**63),
    )


@pytest.mark.parametrize("value", [-1, -2, -5, -1.0])
def test_negative_num_predict_is_omitted(value: float) -> None:
    out = chat_request({"messages": [], "options": {"num_predict": value}}, "m", {})
    assert "max_tokens" not in out


def test_stop_string_becomes_a_list() -> None:
    out = chat_request({"messages": [], "options": {"stop": "END"}}, "m", {})
    assert out["stop"] == ["END"]


@pytest.mark.parametrize("keep_alive", ["-1s", "-1.0s", "300.0s", "5m", 0, -1, 3.5, None])
def test_keep_alive_is_accepted_and_ignored(keep_alive: Any) -> None:
    out = chat_request({"messages": [], "keep_alive": keep_alive}, "m", {})
    assert "keep_alive" not in out


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("json", {"response_format": {"type": "json_object"}}),
        ("", {}),
        (None, {}),
        (
            {"type": "object"},
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "response", "schema": {"type": "object"}},
                }
            },
        ),
    ],
)
def test_format_mapping(fmt: Any, expected: dict[str, Any]) -> None:
    out = chat_request({"messages": [], "format": fmt}, "m", {})
    assert {k: v for k, v in out.items() if k == "response_format"} == expected


@pytest.mark.parametrize(
    ("think", "expected"),
    [
        (True, {"chat_template_kwargs": {"enable_thinking": True}}),
        (False, {"chat_template_kwargs": {"enable_thinking": False}}),
        ("low", {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "low"}),
        ("medium", {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "medium"}),
        ("high", {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "high"}),
        ("max", {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "max"}),
        (None, {}),
    ],
)
def test_think_mapping(think: Any, expected: dict[str, Any]) -> None:
    out = chat_request({"messages": [], "think": think}, "m", {})
    keys = ("chat_template_kwargs", "reasoning_effort")
    assert {k: v for k, v in out.items() if k in keys} == expected


def test_params_merge_on_top() -> None:
    params = {
        "chat_template_kwargs": {"reasoning_budget": 0},
        "cache_prompt": False,
        "temperature": 0.0,
        "stream": False,
        "model": "other",
    }
    frozen = copy.deepcopy(params)
    body = {"messages": [], "think": True, "options": {"temperature": 0.9}}
    out = chat_request(body, "m", params)
    assert out["chat_template_kwargs"] == {"enable_thinking": True, "reasoning_budget": 0}
    assert out["cache_prompt"] is False
    assert out["temperature"] == 0.0
    # The proxy's own streaming and model choice are not the config's to change.
    assert out["stream"] is True
    assert out["model"] == "m"
    out["chat_template_kwargs"]["x"] = 1
    assert params == frozen


def test_generate_request_chat_path() -> None:
    body = {
        "model": "x",
        "prompt": "Why is the sky blue?",
        "system": "Be brief.",
        "images": [PNG_B64],
        "options": {"num_predict": 10},
        "format": "json",
        "think": False,
        "suffix": "ignored",
        "context": [1, 2, 3],
    }
    path, out = generate_request(body, "b", {"cache_prompt": True})
    assert path == "/v1/chat/completions"
    assert out["messages"] == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Why is the sky blue?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_B64}},
            ],
        },
    ]
    assert out["max_tokens"] == 10
    assert out["response_format"] == {"type": "json_object"}
    assert out["chat_template_kwargs"] == {"enable_thinking": False}
    assert out["cache_prompt"] is True
    assert out["stream"] is True
    assert out["stream_options"] == {"include_usage": True}
    assert "suffix" not in out


def test_generate_request_without_system_or_prompt() -> None:
    path, out = generate_request({"model": "x", "system": ""}, "b", {})
    assert path == "/v1/chat/completions"
    assert out["messages"] == [{"role": "user", "content": ""}]


def test_generate_request_raw_goes_to_completions() -> None:
    recorded = fixture_json("completions-stream.meta.json")["request"]["body"]
    body = {
        "model": "x",
        "prompt": "The sky is",
        "raw": True,
        "system": "dropped in raw mode",
        "suffix": "llama-server would reject this",
        "options": {"num_predict": 6, "seed": 1, "temperature": 0},
        "think": True,
    }
    path, out = generate_request(body, "smollm2", {})
    assert path == "/v1/completions"
    assert out == {**recorded, "stream_options": {"include_usage": True}}
    _, with_format = generate_request({**body, "format": {"type": "object"}}, "m", {})
    assert with_format["json_schema"] == {"type": "object"}
    assert "response_format" not in with_format
    _, json_format = generate_request({**body, "format": "json"}, "m", {})
    assert json_format["json_schema"] == {}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "a", "images": ["!!"]}, "images[0]"),
        ({"prompt": "a", "raw": True, "images": [PNG_B64]}, "images"),
    ],
)
def test_bad_generate_requests(body: dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(field)):
        generate_request(body, "m", {})


# ---------------------------------------------------------------------------
# Embeddings


def test_embed_request_and_response() -> None:
    recorded = fixture_json("embeddings.meta.json")["request"]["body"]
    body = {"model": "x", "input": ["hello", "world"], "truncate": True, "dimensions": 64}
    out = embed_request(body, "smollm2")
    assert out == {**recorded, "encoding_format": "float", "dimensions": 64}
    assert "dimensions" not in embed_request({"input": "a", "dimensions": "64"}, "m")
    assert embed_request({"input": "one"}, "m")["input"] == "one"
    assert embed_request({}, "m")["input"] == []
    backend = fixture_json("embeddings.body")
    result = embed_response(backend, "smollm2:latest", 42)
    assert result["model"] == "smollm2:latest"
    assert len(result["embeddings"]) == 2
    assert result["embeddings"][0] == backend["data"][0]["embedding"]
    assert result["total_duration"] == 42
    assert result["load_duration"] == 0
    assert result["prompt_eval_count"] == backend["usage"]["prompt_tokens"]
    EmbedResponse.model_validate(result)


def test_embed_response_orders_by_index() -> None:
    backend = {"data": [{"index": 1, "embedding": [2.0]}, {"index": 0, "embedding": [1.0]}]}
    assert embed_response(backend, "m", 1)["embeddings"] == [[1.0], [2.0]]


@pytest.mark.parametrize("backend", [{}, {"data": "x"}, {"data": [{"embedding": "x"}]}])
def test_bad_embeddings_from_the_backend(backend: dict[str, Any]) -> None:
    with pytest.raises(BackendError):
        embed_response(backend, "m", 1)


def test_legacy_embeddings() -> None:
    assert embeddings_legacy_request({"prompt": "hi"}, "b") == {
        "model": "b",
        "input": "hi",
        "encoding_format": "float",
    }
    backend = fixture_json("embeddings.body")
    result = embeddings_legacy_response(backend)
    assert result == {"embedding": backend["data"][0]["embedding"]}
    EmbeddingsResponse.model_validate(result)


# ---------------------------------------------------------------------------
# Errors

ERROR_FIXTURES = [
    "error-bad-messages",
    "error-context-exceeded",
    "error-embeddings-disabled",
    "error-image-no-mmproj",
    "error-unparseable-tool-output",
]


@pytest.mark.parametrize("name", ERROR_FIXTURES)
def test_error_from_backend_keeps_status_and_message(name: str) -> None:
    status = fixture_json(f"{name}.meta.json")["status"]
    raw = fixture_bytes(f"{name}.body")
    error = error_from_backend(status, raw)
    assert isinstance(error, BackendError)
    assert error.status == status
    assert str(error) == orjson.loads(raw)["error"]["message"]


def test_error_from_backend_while_loading() -> None:
    meta = fixture_json("health-loading.meta.json")
    error = error_from_backend(meta["status"], fixture_bytes("health-loading.body"))
    assert error.status == 503
    assert "loading" in str(error)
    assert "Loading model" in str(error)


def test_error_from_backend_with_a_non_json_body() -> None:
    error = error_from_backend(502, b"<html>Bad Gateway</html>" + b"x" * 1000)
    assert error.status == 502
    assert str(error).startswith("<html>Bad Gateway</html>")
    assert len(str(error)) == 500


def test_error_from_backend_with_an_empty_body() -> None:
    error = error_from_backend(404, b"")
    assert error.status == 404
    assert "Not Found" in str(error)
    assert str(error_from_backend(599, b"")) == "backend answered 599"


def test_error_from_backend_other_shapes() -> None:
    assert str(error_from_backend(400, b'{"error": "plain"}')) == "plain"
    assert str(error_from_backend(400, b'{"message": "top"}')) == "top"
    assert error_from_backend(200, b'{"error": "odd"}').status == 502


# ---------------------------------------------------------------------------
# Model endpoints


def parse_rfc3339(value: str) -> datetime:
    assert value.endswith("Z")
    return datetime.fromisoformat(value[:-1][:26] + "+00:00")


def test_tags_from_recorded_models_and_props() -> None:
    models = fixture_json("models.body")
    props = fixture_json("props.body")
    tags = tags_from_models(models, props, {})
    (entry,) = tags["models"]
    assert entry["name"] == "smollm2:latest"
    assert entry["model"] == "smollm2:latest"
    assert parse_rfc3339(entry["modified_at"]).timestamp() == models["data"][0]["created"]
    assert type(entry["size"]) is int
    assert entry["size"] == models["data"][0]["meta"]["size"]
    assert re.fullmatch(r"[0-9a-f]{64}", entry["digest"])
    assert entry["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "",
        "families": None,
        "parameter_size": "135M",
        "quantization_level": "Q4_1",
    }
    parsed = ListResponse.model_validate(tags)
    assert parsed.models[0].model == "smollm2:latest"
    assert entry["capabilities"] == ["completion", "tools"]  # as /api/show has them
    # Without /props the listing is the same, but only "completion" is known.
    bare = tags_from_models(models, None, {})
    assert bare["models"][0].pop("capabilities") == ["completion"]
    assert bare == {"models": [{k: v for k, v in entry.items() if k != "capabilities"}]}


def test_tags_use_the_client_names_from_the_mappings() -> None:
    models = fixture_json("models.body")
    mappings = {"llama3.2": "smollm2", "assistant:fast": "smollm2", "other": "nope"}
    names = [m["name"] for m in tags_from_models(models, None, mappings)["models"]]
    assert names == ["llama3.2:latest", "assistant:fast"]


def test_tags_ignore_the_ollama_looking_models_array() -> None:
    models = fixture_json("models.body")
    assert models["models"]
    assert tags_from_models({**models, "data": []}, None, {}) == {"models": []}
    assert tags_from_models({}, None, {}) == {"models": []}
    ListResponse.model_validate(tags_from_models({"data": None}, None, {}))


def test_tags_while_meta_is_null() -> None:
    models = {"object": "list", "data": [{"id": "m", "object": "model", "meta": None}]}
    (entry,) = tags_from_models(models, None, {})["models"]
    assert entry["size"] == 0
    assert entry["details"]["parameter_size"] == ""
    parse_rfc3339(entry["modified_at"])
    ListResponse.model_validate({"models": [entry]})


def test_show_from_recorded_props() -> None:
    models = fixture_json("models.body")
    props = fixture_json("props.body")
    show = show_from_props("smollm2:latest", models["data"][0], props)
    assert show["template"] == props["chat_template"]
    assert show["parameters"] == ""
    assert show["modelfile"].startswith("#")
    assert props["model_path"] in show["modelfile"]
    assert show["capabilities"] == ["completion", "tools"]
    info = show["model_info"]
    arch = info["general.architecture"]
    assert info[f"{arch}.context_length"] == 2048
    assert info[f"{arch}.embedding_length"] == 576
    assert info["general.parameter_count"] == 134515008
    assert show["details"]["quantization_level"] == "Q4_1"
    parse_rfc3339(show["modified_at"])
    parsed = ShowResponse.model_validate(show)
    assert parsed.capabilities == ["completion", "tools"]
    assert parsed.modelinfo is not None


def test_show_capabilities_from_props_flags() -> None:
    props = {
        "modalities": {"vision": True},
        "chat_template_caps": {"supports_tools": False, "supports_reasoning": True},
    }
    show = show_from_props("m", None, props)
    assert show["capabilities"] == ["completion", "vision", "thinking"]
    bare = show_from_props("m", None, None)
    assert bare["capabilities"] == ["completion"]
    assert bare["template"] == ""
    ShowResponse.model_validate(bare)


def test_ps_from_recorded_models() -> None:
    models = fixture_json("models.body")
    props = fixture_json("props.body")
    ps = ps_from_models(models, props, {"assistant": "smollm2"})
    (entry,) = ps["models"]
    assert entry["name"] == entry["model"] == "assistant:latest"
    assert entry["context_length"] == 2048
    assert entry["size_vram"] == 0
    assert entry["size"] == 96576768
    assert parse_rfc3339(entry["expires_at"]).year > 2100
    ProcessResponse.model_validate(ps)


@pytest.mark.parametrize(
    ("ftype", "path", "expected"),
    [
        (None, "models/Llama-3.2-3B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
        (None, "/m/qwen2.5-7b-instruct-q8_0.gguf", "Q8_0"),
        (None, "phi-3-mini.f16.gguf", "F16"),
        (None, "gemma-IQ3_XXS.gguf", "IQ3_XXS"),
        (None, "mystery.gguf", ""),
        ("MOSTLY_Q5_1", "x.gguf", "Q5_1"),
    ],
)
def test_quantization_level(ftype: str | None, path: str, expected: str) -> None:
    entry = {"id": "m", "meta": {"ftype": ftype} if ftype else {}}
    tags = tags_from_models({"data": [entry]}, {"model_path": path}, {})
    assert tags["models"][0]["details"]["quantization_level"] == expected


@pytest.mark.parametrize(
    ("n_params", "expected"),
    [(134515008, "135M"), (1_711_376_384, "1.7B"), (8_030_261_248, "8B"), (999, "999"), (None, "")],
)
def test_parameter_size(n_params: int | None, expected: str) -> None:
    entry = {"id": "m", "meta": {"n_params": n_params}}
    tags = tags_from_models({"data": [entry]}, None, {})
    assert tags["models"][0]["details"]["parameter_size"] == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("llama3", "llama3:latest"),
        ("llama3:8b", "llama3:8b"),
        ("llama3:latest", "llama3:latest"),
        ("registry:5000/library/llama3", "registry:5000/library/llama3:latest"),
        ("registry:5000/library/llama3:q4", "registry:5000/library/llama3:q4"),
    ],
)
def test_normalize_model_name(name: str, expected: str) -> None:
    assert normalize_model_name(name) == expected


def test_a_tool_call_is_bounded() -> None:
    translator = StreamTranslator("chat", "m", limit=1000)
    fragment = wire({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "x" * 100}}]})
    for _ in range(10):
        translator.feed(fragment)
    with pytest.raises(BackendError, match=r"tool call larger than .* MiB \(backend.max_answer_mb\)"):
        translator.feed(fragment)


def test_status_answered_locally_says_cloud_is_disabled() -> None:
    call = Call("/api/status", "GET", "/api/status", None, b"", "", None, None, 0.0, stream=False)
    reply = replies.answer_locally(call, "openai", "serves what it serves")
    assert isinstance(reply, Whole) and reply.status == 200 and reply.content_type == "application/json"
    assert orjson.loads(reply.body) == {"cloud": {"disabled": True, "source": "llm-proxy"}}


def test_think_level_in_generate_and_params_still_win() -> None:
    _, out = generate_request({"prompt": "x", "think": "max"}, "m", {})
    assert (out["reasoning_effort"], out["chat_template_kwargs"]) == ("max", {"enable_thinking": True})
    params = {"chat_template_kwargs": {"enable_thinking": False}}
    out = chat_request({"messages": [], "think": "low"}, "m", params)
    assert out["chat_template_kwargs"] == {"enable_thinking": False}  # the operator's config rules


def test_truncate_and_shift_are_not_sent_to_llama_server() -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "truncate": False, "shift": False}
    assert not {"truncate", "shift"} & chat_request(body, "m", {}).keys()
    _, out = generate_request({"prompt": "x", "truncate": True, "shift": True}, "m", {})
    assert not {"truncate", "shift"} & out.keys()


def test_client_tool_call_id_and_index_are_kept_for_the_backend() -> None:
    body = {
        "messages": [
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "call_b", "function": {"index": 1, "name": "b", "arguments": {}}},
                    {"id": "call_a", "function": {"index": 0, "name": "a", "arguments": {}}},
                ],
            },
            {"role": "tool", "content": "ra", "tool_name": "a", "tool_call_id": "call_a"},
            {"role": "tool", "content": "rb", "tool_name": "b", "tool_call_id": "call_b"},
        ]
    }
    messages = chat_request(body, "m", {})["messages"]
    assert [(c["id"], c["index"]) for c in messages[0]["tool_calls"]] == [("call_b", 1), ("call_a", 0)]
    assert [m["tool_call_id"] for m in messages[1:]] == ["call_a", "call_b"]  # the client's, not by order
    assert all("tool_name" not in m for m in messages[1:])


def test_answered_tool_calls_carry_the_backend_id_and_index() -> None:
    translator = StreamTranslator("chat", "m", created_at=lambda: "t")
    chunks = translator.feed(tool_delta(0, id="id0", function={"name": "a", "arguments": "{}"}))
    chunks += translator.feed(tool_delta(1, id="id1", function={"name": "b", "arguments": "{}"}))
    chunks += translator.feed(wire({}, finish_reason="tool_calls"))
    [chunk] = [c for c in chunks if c["message"].get("tool_calls")]
    calls = chunk["message"]["tool_calls"]
    assert [(c["id"], c["function"]["index"], c["function"]["name"]) for c in calls] == [
        ("id0", 0, "a"), ("id1", 1, "b"),
    ]  # fmt: skip
    assert ChatResponse(**chunk).message.tool_calls is not None  # the client still parses it


def test_embeddings_are_cut_to_dimensions_and_normalised() -> None:
    answer = {"data": [{"index": 0, "embedding": [3.0, 4.0, 12.0]}, {"index": 1, "embedding": [1.0]}]}
    out = embed_response(answer, "m", 1, dimensions=2)
    assert out["embeddings"] == [[0.6, 0.8], [1.0]]  # a shorter vector is left as it is
    assert embed_response(answer, "m", 1)["embeddings"][0] == [3.0, 4.0, 12.0]
