"""``logs export --format openai-chat|sharegpt``: real traffic as training examples, as OpenAI types."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import ollama
import openai
import orjson
import pytest
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionContentPartParam,
    ChatCompletionDeveloperMessageParam,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCallParam,
    ChatCompletionSystemMessageParam,
    ChatCompletionToolMessageParam,
    ChatCompletionUserMessageParam,
)
from pydantic import TypeAdapter

from llm_proxy.audit import datasets

from . import ha_turn
from .conftest import MakeProxy, Proxy
from .llama_double import LlamaServerDouble
from .planted import rows_of

# OpenAI's message types by role. pydantic checks a TypedDict's fields but lets
# unknown keys through and checks Iterable fields only lazily, so both are checked here.
MESSAGE_TYPES: dict[str, Any] = {
    "system": ChatCompletionSystemMessageParam,
    "developer": ChatCompletionDeveloperMessageParam,
    "user": ChatCompletionUserMessageParam,
    "assistant": ChatCompletionAssistantMessageParam,
    "tool": ChatCompletionToolMessageParam,
}
PART: TypeAdapter[ChatCompletionContentPartParam] = TypeAdapter(ChatCompletionContentPartParam)
CALL = TypeAdapter(ChatCompletionMessageFunctionToolCallParam)
TOOL = TypeAdapter(ChatCompletionFunctionToolParam)
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def _typed(kind: Any, value: dict[str, Any], where: str) -> None:
    allowed = kind.__required_keys__ | kind.__optional_keys__
    assert set(value) <= allowed, f"{where}: unknown keys {set(value) - allowed}"
    assert kind.__required_keys__ <= set(value), f"{where}: missing {kind.__required_keys__ - set(value)}"
    TypeAdapter(kind).validate_python(value)


def validate(example: dict[str, Any]) -> None:
    """One line of a chat fine-tuning file, as OpenAI's types and the format's rules have it."""
    assert set(example) <= {"messages", "tools", "parallel_tool_calls"}
    messages = example["messages"]
    assert messages and messages[-1]["role"] == "assistant"
    open_calls: list[str] = []
    for i, m in enumerate(messages):
        _typed(MESSAGE_TYPES[m["role"]], m, f"messages[{i}]")
        if isinstance(m.get("content"), list):
            for part in m["content"]:
                PART.validate_python(part)
        for call in m.get("tool_calls") or []:
            _typed(ChatCompletionMessageFunctionToolCallParam, call, f"messages[{i}].tool_calls")
            CALL.validate_python(call)
            assert isinstance(orjson.loads(call["function"]["arguments"]), dict)
            open_calls.append(call["id"])
        if m["role"] == "tool":
            assert m["tool_call_id"] in open_calls, m
            open_calls.remove(m["tool_call_id"])
    for tool in example.get("tools") or []:
        _typed(ChatCompletionFunctionToolParam, tool, "tools")
        TOOL.validate_python(tool)


def export(db: Path, *args: str) -> tuple[list[dict[str, Any]], str]:
    done = subprocess.run(
        [sys.executable, "-m", "llm_proxy", "logs", "export", "--db", str(db), *args],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    return [orjson.loads(line) for line in done.stdout.splitlines()], done.stderr.decode()


@pytest.fixture
async def recorded(make_proxy: MakeProxy, aiohttp_server: Any) -> Proxy:
    """A Home Assistant turn of three rounds, /v1 with tools, generate, an image, an error, embeddings."""
    double = LlamaServerDouble()
    backend = await aiohttp_server(double.app(), host="127.0.0.1")
    proxy = await make_proxy(str(backend.make_url("")).rstrip("/"), "openai")
    client = ha_turn.client(proxy.url, ha_turn.Capture())
    await ha_turn.spoken_request(client, double, ha_turn.start_messages(), "turn on the kitchen light", 3)
    oai = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="unused")
    await oai.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "kitchen on"}],
        tools=[TOOL.validate_python(ha_turn.TURN_ON)],
    )
    await oai.close()
    plain = ollama.AsyncClient(host=proxy.url)
    await plain.generate(model="smollm2", prompt="Why is the sky blue?", system="Be brief.", stream=False)
    await plain.chat(
        model="smollm2", messages=[{"role": "user", "content": "what is this?", "images": [PIXEL]}]
    )
    double.scenario = "error-bad-messages"
    with pytest.raises(ollama.ResponseError):
        await plain.chat(model="smollm2", messages=[{"role": "user", "content": "this fails"}])
    await plain.embed(model="smollm2", input="embed me")
    await rows_of(proxy.db, 8)
    return proxy


async def test_one_example_per_exchange_each_valid(recorded: Proxy) -> None:
    examples, err = export(recorded.db, "--format", "openai-chat")
    assert len(examples) == 6, err  # three rounds, /v1, generate, the image; not the error or embeddings
    for example in examples:
        validate(example)
    assert "exported 6 examples; skipped 1 exchanges: 1 not a chat or generate request (/api/embed)" in err
    first = examples[0]
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]
    assert first["messages"][-1]["tool_calls"][0]["function"]["name"] == "HassTurnOn"
    assert [t["function"]["name"] for t in first["tools"]] == [name for name, _, _ in ha_turn.INTENTS]
    v1 = examples[3]
    assert v1["messages"][-1]["tool_calls"][0]["id"]  # the id the backend gave is kept
    generate = examples[4]["messages"]
    assert generate[:2] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why is the sky blue?"},
    ]
    image = examples[5]["messages"][0]["content"]
    assert image[1] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}
    with_errors, _ = export(recorded.db, "--format", "openai-chat", "--include-errors")
    assert len(with_errors) == 7
    for example in with_errors:
        validate(example)


async def test_one_example_per_turn_holds_every_tool_round(recorded: Proxy) -> None:
    examples, err = export(recorded.db, "--format", "openai-chat", "--per", "turn", "--endpoint", "chat")
    assert len(examples) == 2, err  # the Home Assistant turn, the image question
    turn = examples[0]
    validate(turn)
    roles = [m["role"] for m in turn["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    calls = [m["tool_calls"][0] for m in turn["messages"] if m.get("tool_calls")]
    assert [c["function"]["name"] for c in calls] == ["HassTurnOn", "HassTurnOn"]
    assert [m["tool_call_id"] for m in turn["messages"] if m["role"] == "tool"] == [c["id"] for c in calls]
    assert orjson.loads(calls[0]["function"]["arguments"]) == {"name": "HassTurnOn"}
    assert turn["messages"][-1]["content"] and "tool_calls" not in turn["messages"][-1]


async def test_sharegpt(recorded: Proxy) -> None:
    examples, _ = export(recorded.db, "--format", "sharegpt", "--per", "turn", "-n", "1")
    assert len(examples) == 1
    (turn,) = examples
    assert [c["from"] for c in turn["conversations"]] == [
        "human", "function_call", "observation", "function_call", "observation", "gpt"
    ]  # fmt: skip
    assert orjson.loads(turn["conversations"][1]["value"]) == {
        "name": "HassTurnOn",
        "arguments": {"name": "HassTurnOn"},
    }
    assert turn["system"] == ha_turn.SYSTEM
    assert len(orjson.loads(turn["tools"])) == len(ha_turn.TOOLS)


def test_rows_that_make_no_example_say_why() -> None:
    row = {"endpoint": "/api/chat", "request_body": None}
    with pytest.raises(datasets.Skip, match="metadata"):
        datasets.openai_chat(row)
    cut = {"endpoint": "/api/chat", "request_body": '{"messages": [{"role": "user", "cont'}
    with pytest.raises(datasets.Skip, match="not JSON"):
        datasets.openai_chat(cut)
    orphan = {"endpoint": "/api/chat", "request_body": '{"messages": [{"role": "tool", "content": "42"}]}'}
    with pytest.raises(datasets.Skip, match="answers no tool call"):
        datasets.openai_chat(orphan)
