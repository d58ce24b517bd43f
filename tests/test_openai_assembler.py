"""Tests for the OpenAI answer assembler, on recorded llama-server frames and edge cases."""

from __future__ import annotations

from typing import Any

import orjson

from llm_proxy.translate import Assembler
from llm_proxy.translate.openai_assembler import OpenAIAssembler, is_usage_only

from .llama_double import fixture, sse_events


def answer(assembler: Assembler) -> dict[str, Any]:
    """The assembled answer, which these tests always have."""
    result = assembler.result()
    assert result is not None
    return result


def fold(events: list[dict[str, Any]]) -> OpenAIAssembler:
    assembler = OpenAIAssembler()
    for event in events:
        assembler.feed(event)
    return assembler


def delta(d: dict[str, Any], finish: str | None = None, index: int = 0) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": index, "delta": d, "finish_reason": finish}],
    }


def test_recorded_tool_stream_folds_to_the_recorded_shape() -> None:
    assembler = fold(sse_events("chat-tools-stream"))
    [call] = assembler.tool_calls or []
    assert call["function"]["name"] == "HassTurnOn" and call["type"] == "function"
    assert orjson.loads(call["function"]["arguments"]) == {"name": "HassTurnOn"}
    assert assembler.done_reason == "tool_calls" and assembler.text is not None
    assert answer(assembler)["object"] == "chat.completion"


def test_whole_answer_and_its_stream_record_the_same_columns() -> None:
    whole = OpenAIAssembler()
    assert whole.feed(orjson.loads(fixture("chat")))
    assert (whole.text, whole.done_reason, whole.prompt_tokens, whole.completion_tokens) == (
        "A color is a color.", "stop", 21, 7,
    )  # fmt: skip
    streamed = fold(sse_events("chat-stream"))
    assert (streamed.prompt_tokens, streamed.completion_tokens, streamed.done_reason) == (38, 12, "length")
    assert streamed.timings is not None and streamed.timings["predicted_n"] == 12


def test_interleaved_tool_call_fragments_join_per_index() -> None:
    assembler = fold([
        delta({"tool_calls": [{"index": 0, "id": "a", "type": "function", "function": {"name": "f"}}]}),
        delta({"tool_calls": [{"index": 1, "id": "b", "type": "function", "function": {"name": "g"}}]}),
        delta({"tool_calls": [{"index": 0, "function": {"arguments": ""}}]}),
        delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"x":'}}]}),
        delta({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
        delta({"tool_calls": [{"index": 0}]}),  # some builds send a delta without "function"
        delta({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}),
        delta({}, "tool_calls"),
    ])  # fmt: skip
    assert assembler.tool_calls == [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
        {"id": "b", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]


def test_reasoning_under_either_name_and_tokens_flag() -> None:
    assembler = OpenAIAssembler()
    assert assembler.feed(delta({"role": "assistant", "content": None})) is False
    assert assembler.feed(delta({"reasoning_content": "llama "}))
    assert assembler.feed(delta({"content": "", "reasoning": "ollama"}))
    assert assembler.feed(delta({"content": "hi"}))
    assert (assembler.thinking, assembler.text) == ("llama ollama", "hi")
    assert answer(assembler)["choices"][0]["message"]["reasoning_content"] == "llama ollama"


def test_last_usage_wins_and_the_usage_only_chunk_is_recognised() -> None:
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    text = {"object": "text_completion", "choices": [{"index": 0, "text": "a", "finish_reason": None}]}
    last = {"object": "text_completion", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 1}}
    assembler = fold([{**text, "usage": zero}, last])
    assert (assembler.text, assembler.prompt_tokens, assembler.completion_tokens) == ("a", 4, 1)
    assert is_usage_only(last) and not is_usage_only({**text, "usage": zero})
    assert answer(assembler)["choices"] == [{"index": 0, "text": "a", "finish_reason": None}]


def test_error_frame_is_kept_with_its_code() -> None:
    assembler = fold([delta({"content": "x"}), {"error": {"code": 500, "message": "out of memory"}}])
    assert (assembler.error, assembler.error_status, assembler.text) == ("out of memory", 500, "x")
    assert fold([{"error": "plain"}]).error == "plain"


def test_a_limit_keeps_the_start_of_the_answer_and_says_it_was_cut() -> None:
    assembler = OpenAIAssembler(limit=100)
    for _ in range(50):
        assert assembler.feed(delta({"content": "abc", "reasoning_content": "r"}))
    for index in range(10_000):  # ever new choices and tool calls cannot grow the copy either
        call = {"index": index, "function": {"arguments": "{}"}}
        assembler.feed(delta({"tool_calls": [call]}, index=index))
    assert assembler.truncated and assembler.text is not None
    kept = len(assembler.text) + len(assembler.thinking or "")
    assert kept <= 100 and assembler.text.startswith("abcabc")
    assert len(answer(assembler)["choices"]) == 1
    whole = OpenAIAssembler(limit=10_000)
    assert not fold_into(whole, [delta({"content": "abc"})] * 50).truncated
    assert whole.text == "abc" * 50


def fold_into(assembler: OpenAIAssembler, events: list[dict[str, Any]]) -> OpenAIAssembler:
    for event in events:
        assembler.feed(event)
    return assembler
