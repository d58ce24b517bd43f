"""/v1/responses and /v1/messages: relayed, recorded, and refused in the right shape.

The event shapes below are those the real llama-server streams (recorded from
SmolLM2); test_e2e_fidelity.py sends the real SDKs to the real server.
"""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from llm_proxy.translate.event_assembler import MessagesAssembler, ResponsesAssembler

from .conftest import Proxy

MESSAGE_STREAM: list[dict[str, Any]] = [
    {"type": "message_start", "message": {"id": "m1", "type": "message", "role": "assistant", "content": [],
     "model": "smollm2", "stop_reason": None, "usage": {"input_tokens": 31, "output_tokens": 0}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ","}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1,
     "content_block": {"type": "tool_use", "id": "t1", "name": "HassTurnOn", "input": {}}},
    {"type": "content_block_delta", "index": 1,
     "delta": {"type": "input_json_delta", "partial_json": '{"name": '}},
    {"type": "content_block_delta", "index": 1,
     "delta": {"type": "input_json_delta", "partial_json": '"kitchen"}'}},
    {"type": "content_block_stop", "index": 1},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}},
    {"type": "message_stop"},
]  # fmt: skip

RESPONSE_STREAM: list[dict[str, Any]] = [
    {"type": "response.created", "response": {"id": "r1", "object": "response", "status": "in_progress"}},
    {"type": "response.output_text.delta", "item_id": "i1", "delta": "Welcome"},
    {"type": "response.output_text.delta", "item_id": "i1", "delta": " to"},
    {"type": "response.output_text.done", "item_id": "i1", "text": "Welcome to"},
    {"type": "response.completed", "response": {
        "id": "r1", "object": "response", "status": "completed", "model": "smollm2",
        "output": [{"type": "message", "role": "assistant",
                    "content": [{"type": "output_text", "text": "Welcome to"}]}],
        "usage": {"input_tokens": 31, "output_tokens": 2, "total_tokens": 33}}},
]  # fmt: skip


def test_a_messages_stream_folds_into_text_tool_calls_and_counts() -> None:
    assembler = MessagesAssembler()
    tokens = [assembler.feed(event) for event in MESSAGE_STREAM]
    assert tokens.count(True) == 5  # two text deltas, the tool call's two fragments and its end
    assert assembler.text == "Hello,"
    assert assembler.tool_calls == [
        {"type": "tool_use", "id": "t1", "name": "HassTurnOn", "input": {"name": "kitchen"}}
    ]
    assert (assembler.done_reason, assembler.prompt_tokens, assembler.completion_tokens) == (
        "tool_use",
        31,
        9,
    )
    folded = assembler.result()
    assert folded is not None
    # The Anthropic SDK's own type reads the folded copy.
    message = anthropic.types.Message.model_validate(folded)
    assert [block.type for block in message.content] == ["text", "tool_use"]
    assert message.usage.output_tokens == 9


def test_a_responses_stream_keeps_the_text_once_and_the_final_response() -> None:
    assembler = ResponsesAssembler()
    for event in RESPONSE_STREAM:
        assembler.feed(event)
    assert assembler.text == "Welcome to"  # not again from response.completed's output
    assert (assembler.done_reason, assembler.prompt_tokens, assembler.completion_tokens) == (
        "completed",
        31,
        2,
    )
    assert assembler.result() == RESPONSE_STREAM[-1]["response"]


def test_whole_answers_and_a_budget() -> None:
    whole = {"type": "message", "content": [{"type": "text", "text": "x" * 50}], "stop_reason": "end_turn",
             "usage": {"input_tokens": 3, "output_tokens": 50}}  # fmt: skip
    assembler = MessagesAssembler(limit=10)
    assert assembler.feed(whole) is True
    assert (assembler.text, assembler.truncated, assembler.done_reason) == ("x" * 10, True, "end_turn")
    response = RESPONSE_STREAM[-1]["response"]
    folded = ResponsesAssembler()
    assert folded.feed(response) is True and folded.text == "Welcome to"


def test_error_events_are_recorded() -> None:
    messages = MessagesAssembler()
    messages.feed({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
    responses = ResponsesAssembler()
    responses.feed({"type": "error", "code": "500", "message": "broke"})
    assert (messages.error, responses.error) == ("busy", "broke")


async def test_a_backend_without_the_messages_api_is_a_501_in_anthropics_shape(oproxy: Proxy) -> None:
    """The llama-server double serves no /v1/messages: the Anthropic SDK reads a clear 501."""
    client = anthropic.AsyncAnthropic(base_url=oproxy.url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as caught:
        await client.messages.create(
            model="smollm2", max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
        )
    assert caught.value.status_code == 501
    body: Any = caught.value.body
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert body["error"]["message"] == "the backend does not serve /v1/messages"
    [row] = await oproxy.wait_rows(1)
    assert (row["endpoint"], row["api"], row["status_code"]) == ("/v1/messages", "openai", 501)
    assert row["prompt"] == "Hi" and row["error"] == body["error"]["message"]


async def test_a_backend_without_the_responses_api_is_a_501_in_openais_shape(oproxy: Proxy) -> None:
    client = openai.AsyncOpenAI(base_url=f"{oproxy.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.responses.create(model="smollm2", input="Hi")
    assert caught.value.status_code == 501
    assert caught.value.message.endswith("the backend does not serve /v1/responses")
    [row] = await oproxy.wait_rows(1)
    assert (row["endpoint"], row["status_code"], row["prompt"]) == ("/v1/responses", 501, "Hi")


async def test_bad_json_to_messages_is_a_400_in_anthropics_shape(oproxy: Proxy) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.post(f"{oproxy.url}/v1/messages", data=b"{nope") as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
