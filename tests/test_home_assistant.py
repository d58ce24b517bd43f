"""Home Assistant's Ollama integration, call for call, against the openai backend.

The calls, their arguments and the message shapes are those of
home-assistant/core ``homeassistant/components/ollama`` (see
docs/home-assistant.md): model list and ps polling, a pull of a model that is
not listed, and a streamed, multi-round tool loop built from ``ollama.Message``
objects — assistant tool-call messages without content, tool results without
ids or names, bare-base64 images.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import ollama
import orjson
import pytest

from .conftest import Proxy
from .llama_double import LlamaServerDouble, frames

MAX_TOOL_ITERATIONS = 10  # Home Assistant's own bound on tool rounds
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "HassTurnOn",
            "description": "Turns on/opens a device or entity",
            "parameters": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "area": {"type": "string"}},
                "required": [],
            },
        },
    }
]
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 13).decode()


async def test_polling_and_pull_of_an_unlisted_model(oproxy: Proxy) -> None:
    c = ollama.AsyncClient(host=oproxy.url)
    listed = await c.list()
    assert [m.model for m in listed.models] == ["smollm2:latest"]
    running = await c.ps()
    assert [m.model for m in running.models] == ["smollm2:latest"]
    with pytest.raises(ollama.ResponseError) as caught:
        await c.pull("llama3.2:latest", insecure=False, stream=False)
    assert caught.value.status_code == 404


async def test_multi_round_tool_loop(oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]) -> None:
    double = llama_double[0]
    c = ollama.AsyncClient(host=oproxy.url, headers={"Authorization": "Bearer ha-key"})
    messages: list[ollama.Message] = [
        ollama.Message(role="system", content="You are a voice assistant for Home Assistant."),
        ollama.Message(role="user", content="Turn on the kitchen light", images=[ollama.Image(value=PNG)]),
    ]
    executed: list[tuple[str, dict[str, Any]]] = []
    final_text = ""
    for _ in range(MAX_TOOL_ITERATIONS):
        stream = await c.chat(
            model="smollm2",
            messages=messages,
            tools=TOOLS,
            stream=True,
            keep_alive="-1.0s",
            options={"num_ctx": 8192.0},
            think=False,
            format=SCHEMA,
        )
        content, calls = "", list[ollama.Message.ToolCall]()
        async for chunk in stream:  # the client validates every chunk with pydantic
            content += chunk.message.content or ""
            calls.extend(chunk.message.tool_calls or [])
        # What Home Assistant appends to its chat log: no content key when empty.
        messages.append(ollama.Message(role="assistant", content=content or None, tool_calls=calls or None))
        if not calls:
            final_text = content
            break
        for call in calls:
            assert isinstance(call.function.arguments, dict)
            executed.append((call.function.name, dict(call.function.arguments)))
            messages.append(ollama.Message(role="tool", content=json.dumps({"success": True})))
    assert [name for name, _ in executed] == ["HassTurnOn"]  # each call executed exactly once
    assert final_text  # the second round answered in words

    first, second = (body for path, body in double.requests)
    assert "num_ctx" not in first and first["chat_template_kwargs"] == {"enable_thinking": False}
    assert first["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": SCHEMA},
    }
    image = first["messages"][1]["content"][1]["image_url"]["url"]
    assert image == f"data:image/png;base64,{PNG}"
    assistant, tool = second["messages"][-2], second["messages"][-1]
    [sent_call] = assistant["tool_calls"]
    assert sent_call["type"] == "function" and isinstance(sent_call["function"]["arguments"], str)
    assert tool["role"] == "tool" and tool["tool_call_id"] == sent_call["id"]

    rows = await oproxy.wait_rows(2)
    assert [r["status_code"] for r in rows] == [200, 200]
    assert [f["function"]["name"] for f in orjson.loads(rows[0]["tool_calls"])] == ["HassTurnOn"]
    assert rows[1]["response"] == final_text and rows[1]["tool_calls"] is None
    assert all(r["prompt"] == "Turn on the kitchen light" for r in rows)
    assert all("ha-key" not in str(v) for r in rows for v in r.values())  # the key is never stored


# -- Home Assistant 2026.11 ------------------------------------------------------------------

# Its tools carry the API's prefix: the name the model must call, and HA executes, is the whole name.
PREFIXED = ["intent__HassTurnOn", "light__HassLightSet", "homeassistant__GetLiveContext", "llm__GetDateTime"]
HA_2026_TOOLS = [
    {"type": "function", "function": {"name": name, "description": name.split("__")[1],
                                      "parameters": {"type": "object", "properties": {
                                          "name": {"type": "string"}, "brightness": {"type": "integer"}},
                                          "required": []}}}
    for name in PREFIXED
]  # fmt: skip


def two_tool_calls() -> bytes:
    """A llama-server stream that calls two prefixed tools, arguments in fragments."""
    base = {"id": "chatcmpl-ha", "object": "chat.completion.chunk", "created": 1, "model": "smollm2"}

    def delta(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}

    def call(i: int, name: str | None, args: str, call_id: str | None = None) -> dict[str, Any]:
        fn: dict[str, Any] = {"arguments": args}
        if name is not None:
            fn["name"] = name
        piece: dict[str, Any] = {"index": i, "function": fn}
        if call_id is not None:
            piece.update(id=call_id, type="function")
        return delta({"tool_calls": [piece]})

    return frames(
        delta({"role": "assistant", "content": None}),
        delta({"reasoning_content": "The user wants the kitchen light on, at half brightness."}),
        call(0, "intent__HassTurnOn", '{"name": "Kitch', "call_a"),
        call(0, None, 'en Light"}'),
        call(1, "light__HassLightSet", '{"name": "Kitchen Light", ', "call_b"),
        call(1, None, '"brightness": 50}'),
        delta({}, "tool_calls"),
        {
            **base,
            "choices": [],
            "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150},
        },
    )


async def test_home_assistant_2026_11_turn_with_prefixed_tools_numeric_keep_alive_and_two_calls(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    double = llama_double[0]
    c = ollama.AsyncClient(host=oproxy.url, timeout=5)  # HA's timeout for the model list
    assert [m.model for m in (await c.list()).models] == ["smollm2:latest"]
    double.queued.append(two_tool_calls())
    messages: list[ollama.Message] = [
        ollama.Message(role="system", content="You are a voice assistant for Home Assistant."),
        ollama.Message(role="user", content="Kitchen light on, half brightness"),
    ]
    executed: list[tuple[str, dict[str, Any]]] = []
    final_text = ""
    for _ in range(MAX_TOOL_ITERATIONS):
        stream = await c.chat(
            model="smollm2", messages=messages, tools=HA_2026_TOOLS, stream=True,
            keep_alive=-1, options={"num_ctx": 8192.0},
        )  # fmt: skip
        content, thinking, calls = "", "", list[ollama.Message.ToolCall]()
        async for chunk in stream:
            content += chunk.message.content or ""
            thinking += chunk.message.thinking or ""
            calls.extend(chunk.message.tool_calls or [])
        # 2026.11 keeps the thinking in its chat log, and tool calls without ids.
        messages.append(
            ollama.Message(
                role="assistant", content=content or None, thinking=thinking or None, tool_calls=calls or None
            )
        )
        if not calls:
            final_text = content
            break
        for call in calls:
            executed.append((call.function.name, dict(call.function.arguments)))
            messages.append(ollama.Message(role="tool", content=json.dumps({"success": True})))
    assert executed == [
        ("intent__HassTurnOn", {"name": "Kitchen Light"}),
        ("light__HassLightSet", {"name": "Kitchen Light", "brightness": 50}),
    ]  # each call once, under the name HA gave the tool
    assert final_text

    first, second = (body for _, body in double.requests)
    assert [t["function"]["name"] for t in first["tools"]] == PREFIXED
    assert "keep_alive" not in first and "num_ctx" not in first
    assistant = second["messages"][2]
    assert [tc["function"]["name"] for tc in assistant["tool_calls"]] == PREFIXED[:2]
    assert assistant["reasoning_content"].startswith("The user wants")
    results = second["messages"][3:5]
    assert [r["tool_call_id"] for r in results] == [tc["id"] for tc in assistant["tool_calls"]]

    rows = await oproxy.wait_rows(3)
    chats = [r for r in rows if r["endpoint"] == "/api/chat"]
    assert [r["status_code"] for r in chats] == [200, 200]
    names = [f["function"]["name"] for f in orjson.loads(chats[0]["tool_calls"])]
    assert names == PREFIXED[:2]
    assert chats[0]["thinking"].startswith("The user wants") and chats[0]["completion_tokens"] == 30


async def test_home_assistant_2026_11_ai_task_with_a_schema_and_an_image(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    c = ollama.AsyncClient(host=oproxy.url, timeout=5)
    image = ollama.Image(value=PNG)
    stream = await c.chat(
        model="smollm2",
        messages=[ollama.Message(role="user", content="Describe the camera image", images=[image])],
        stream=True, keep_alive=-1, options={"num_ctx": 8192.0}, format=SCHEMA,
    )  # fmt: skip
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].done and "".join(ch.message.content or "" for ch in chunks)
    [(_, sent)] = llama_double[0].requests
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": SCHEMA},
    }
    assert sent["messages"][0]["content"][1]["image_url"]["url"] == f"data:image/png;base64,{PNG}"
    [row] = await oproxy.wait_rows(1)
    assert row["status_code"] == 200 and row["prompt"] == "Describe the camera image"
