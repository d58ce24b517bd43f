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
from .llama_double import LlamaServerDouble

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
        content, calls = "", []
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
