"""End to end: the real ``ollama`` client, the proxy, and a real llama.cpp ``llama-server``.

The model (SmolLM2-135M) is tiny and its words are not the point: these tests
assert on the protocol's shapes, counts and timings, and on the audit rows.
Everything they need comes from ``bash tests/install.sh``; when something is
missing they fail and say so, rather than skip a feature CI always has.
"""

from __future__ import annotations

import contextlib
import re
import signal
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import ollama
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionUserMessageParam

from . import llama_server
from .conftest import MakeProxy, Proxy
from .e2e import Connect
from .llama_server import ALIAS, INSTALL_HINT, LlamaServer, NotInstalled, ServerFailed

MODEL = ALIAS  # what clients ask for; the proxy lists it as "smollm2:latest"
USER: ChatCompletionUserMessageParam = {"role": "user", "content": "Say hello."}
# Small answers keep the file fast on two CPU cores; the counts are what is checked.
SHORT = {"num_predict": 8, "temperature": 0}
# The final chunk's counts and durations: positive integers for any real answer.
METRICS = ("prompt_eval_count", "eval_count", "prompt_eval_duration", "eval_duration", "total_duration")
# Tool calls take longer than the conftest default of 10 s allows on a busy machine.
BACKEND = {"timeout": 60}

# Home Assistant's request, reduced to one tool. Measured with this model and the
# Llama 3.2 template: it calls the tool on every run (after 50-90 tokens of
# content) when "name" is required; without that list it talks until max_tokens.
HASS_TURN_ON: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "HassTurnOn",
        "description": "Turns on a device",
        "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
    },
}
KITCHEN = {"role": "user", "content": "Turn on the kitchen light"}
# Per-model params from the proxy config: a tool call every time, the same one every run.
TOOL_PARAMS = {"tool_choice": "required", "temperature": 0, "cache_prompt": False, "max_tokens": 256}


def assert_metrics(final: ollama.ChatResponse | ollama.GenerateResponse) -> None:
    """The final chunk carries the counts and durations as positive integers."""
    assert final.done is True
    for field in METRICS:
        value = getattr(final, field)
        assert isinstance(value, int) and value > 0, (field, value)
    assert isinstance(final.load_duration, int)
    assert isinstance(final.created_at, str) and final.model == MODEL


def assert_stream_shape(chunks: Sequence[ollama.ChatResponse | ollama.GenerateResponse]) -> None:
    """Only the last chunk is done, and no chunk went out without a token in it."""
    assert len(chunks) >= 2
    assert [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert all(c.model == MODEL and isinstance(c.created_at, str) for c in chunks)
    final = chunks[-1]
    assert final.eval_count is not None and len(chunks) - 1 <= final.eval_count


def assert_recorded(
    row: dict[str, Any],
    endpoint: str,
    stream: bool,
    final: ollama.ChatResponse | ollama.GenerateResponse,
    text: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The audit row says what the client got; returns the backend request and the response body."""
    assert (row["endpoint"], row["status_code"], row["error"]) == (endpoint, 200, None)
    assert (row["model"], row["backend_model"], row["backend_type"]) == (MODEL, MODEL, "openai")
    assert row["stream"] == int(stream)
    assert row["response"] == text
    assert row["done_reason"] == final.done_reason
    assert (row["prompt_tokens"], row["completion_tokens"]) == (final.prompt_eval_count, final.eval_count)
    assert row["latency_ms"] >= 0 and row["ttfb_ms"] is not None
    body = orjson.loads(row["response_body"])
    for field in ("done_reason", "prompt_eval_count", "eval_count", "eval_duration", "total_duration"):
        assert body[field] == getattr(final, field), field
    sent = orjson.loads(row["backend_request"])
    assert sent["model"] == MODEL and sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    return sent, body


async def test_list_show_ps(make_proxy: MakeProxy, chat_server: LlamaServer, connect: Connect) -> None:
    proxy = await make_proxy(chat_server.url, backend_type="openai")
    client = connect(proxy)
    listed = await client.list()
    [model] = listed.models
    assert model.model == "smollm2:latest"
    assert isinstance(model.size, int) and model.size > 0
    assert isinstance(model.modified_at, datetime) and model.modified_at.tzinfo is not None
    assert model.details is not None and model.details.format == "gguf"

    shown = await client.show(MODEL)
    assert shown.modelinfo is not None and shown.modelinfo["general.parameter_count"] > 0
    # --jinja with a template that renders tools: the server says so in /props.
    assert shown.capabilities is not None and {"completion", "tools"} <= set(shown.capabilities)

    running = await client.ps()
    [loaded] = running.models
    assert loaded.model == "smollm2:latest" and loaded.size == model.size
    assert isinstance(loaded.context_length, int) and loaded.context_length > 0

    rows = await proxy.wait_rows(3)
    assert [(r["endpoint"], r["status_code"], r["error"]) for r in rows] == [
        ("/api/tags", 200, None), ("/api/show", 200, None), ("/api/ps", 200, None),
    ]  # fmt: skip
    tags, show, ps = (orjson.loads(r["response_body"]) for r in rows)
    assert [(m["name"], m["model"], m["size"]) for m in tags["models"]] == [
        ("smollm2:latest", "smollm2:latest", model.size)
    ]
    assert show["capabilities"] == shown.capabilities and show["model_info"] == shown.modelinfo
    assert [m["context_length"] for m in ps["models"]] == [loaded.context_length]


async def test_chat_without_streaming(
    make_proxy: MakeProxy, chat_server: LlamaServer, connect: Connect
) -> None:
    proxy = await make_proxy(chat_server.url, backend_type="openai")
    answer = await connect(proxy).chat(model=MODEL, messages=[USER], stream=False, options=SHORT)
    assert answer.message.role == "assistant" and isinstance(answer.message.content, str)
    assert not answer.message.tool_calls
    assert answer.done_reason in ("stop", "length")
    assert_metrics(answer)
    [row] = await proxy.wait_rows(1)
    sent, body = assert_recorded(row, "/api/chat", False, answer, answer.message.content)
    assert sent["messages"] == [USER] and sent["max_tokens"] == 8 and sent["temperature"] == 0
    assert body["message"] == {"role": "assistant", "content": answer.message.content}


async def test_chat_stream(make_proxy: MakeProxy, chat_server: LlamaServer, connect: Connect) -> None:
    proxy = await make_proxy(chat_server.url, backend_type="openai")
    stream = await connect(proxy).chat(model=MODEL, messages=[USER], stream=True, options=SHORT)
    chunks = [chunk async for chunk in stream]
    assert_stream_shape(chunks)
    assert all(c.message.role == "assistant" and not c.message.tool_calls for c in chunks)
    final = chunks[-1]
    assert final.message.content == "" and final.done_reason in ("stop", "length")
    assert_metrics(final)
    text = "".join(c.message.content or "" for c in chunks)
    [row] = await proxy.wait_rows(1)
    sent, body = assert_recorded(row, "/api/chat", True, final, text)
    assert sent["messages"] == [USER] and sent["max_tokens"] == 8
    assert body["message"]["content"] == text and row["ttft_ms"] is not None


async def test_generate_without_streaming(
    make_proxy: MakeProxy, chat_server: LlamaServer, connect: Connect
) -> None:
    proxy = await make_proxy(chat_server.url, backend_type="openai")
    answer = await connect(proxy).generate(
        model=MODEL, prompt="Say hello.", system="Be brief.", stream=False, options=SHORT
    )
    assert isinstance(answer.response, str) and answer.done_reason in ("stop", "length")
    assert_metrics(answer)
    [row] = await proxy.wait_rows(1)
    sent, body = assert_recorded(row, "/api/generate", False, answer, answer.response)
    # Not raw: the prompt goes through the server's chat template as a one-turn chat.
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello."},
    ]
    assert body["response"] == answer.response


async def test_generate_stream(make_proxy: MakeProxy, chat_server: LlamaServer, connect: Connect) -> None:
    proxy = await make_proxy(chat_server.url, backend_type="openai")
    stream = await connect(proxy).generate(model=MODEL, prompt="Say hello.", stream=True, options=SHORT)
    chunks = [chunk async for chunk in stream]
    assert_stream_shape(chunks)
    final = chunks[-1]
    assert final.response == "" and final.done_reason in ("stop", "length")
    assert_metrics(final)
    text = "".join(c.response or "" for c in chunks)
    [row] = await proxy.wait_rows(1)
    sent, body = assert_recorded(row, "/api/generate", True, final, text)
    assert sent["messages"] == [{"role": "user", "content": "Say hello."}]
    assert body["response"] == text


async def test_generate_raw(make_proxy: MakeProxy, chat_server: LlamaServer, connect: Connect) -> None:
    proxy = await make_proxy(chat_server.url, backend_type="openai")
    # SmolLM2's own ChatML, written by the client: raw means no template on the server.
    prompt = "<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\n"
    stream = await connect(proxy).generate(model=MODEL, prompt=prompt, raw=True, stream=True, options=SHORT)
    chunks = [chunk async for chunk in stream]
    assert_stream_shape(chunks)
    final = chunks[-1]
    assert_metrics(final)
    text = "".join(c.response or "" for c in chunks)
    [row] = await proxy.wait_rows(1)
    sent, _ = assert_recorded(row, "/api/generate", True, final, text)
    assert sent["prompt"] == prompt and "messages" not in sent and sent["max_tokens"] == 8


async def test_embed(make_proxy: MakeProxy, embed_server: LlamaServer, connect: Connect) -> None:
    proxy = await make_proxy(embed_server.url, backend_type="openai")
    client = connect(proxy)
    texts = ["The sky is blue.", "Grass is green."]
    many = await client.embed(model=MODEL, input=texts)
    assert many.model == MODEL and len(many.embeddings) == 2
    width = len(many.embeddings[0])
    assert width > 0 and all(
        len(v) == width and all(isinstance(x, float) for x in v) for v in many.embeddings
    )
    assert isinstance(many.prompt_eval_count, int) and many.prompt_eval_count > 0
    assert isinstance(many.total_duration, int) and many.total_duration > 0
    one = await client.embed(model=MODEL, input="The sky is blue.")
    assert [len(v) for v in one.embeddings] == [width]
    legacy = await client.embeddings(model=MODEL, prompt="The sky is blue.")
    assert len(legacy.embedding) == width
    # The vector is as wide as the model's embedding, which show reports.
    shown = await client.show(MODEL)
    assert shown.modelinfo is not None
    assert [v for k, v in shown.modelinfo.items() if k.endswith(".embedding_length")] == [width]

    rows = await proxy.wait_rows(4)
    assert [(r["endpoint"], r["status_code"], r["error"]) for r in rows] == [
        ("/api/embed", 200, None), ("/api/embed", 200, None), ("/api/embeddings", 200, None),
        ("/api/show", 200, None),
    ]  # fmt: skip
    sent = [orjson.loads(r["backend_request"]) for r in rows[:3]]
    assert [s["input"] for s in sent] == [texts, "The sky is blue.", "The sky is blue."]
    assert all(s["model"] == MODEL for s in sent)
    recorded = orjson.loads(rows[0]["response_body"])
    assert recorded["embeddings"] == many.embeddings
    assert rows[0]["prompt_tokens"] == many.prompt_eval_count
    assert recorded["prompt_eval_count"] == many.prompt_eval_count
    assert rows[0]["prompt"] == "\n".join(texts)


async def test_real_tool_call_and_the_answer_to_it(
    make_proxy: MakeProxy, chat_server: LlamaServer, connect: Connect
) -> None:
    """Home Assistant's turn: a streamed tool call, then the tool's result sent back."""
    proxy = await make_proxy(
        chat_server.url, backend_type="openai", backend=BACKEND, models={"params": {MODEL: TOOL_PARAMS}}
    )
    client = connect(proxy)
    stream = await client.chat(model=MODEL, messages=[KITCHEN], tools=[HASS_TURN_ON], stream=True)
    chunks = [chunk async for chunk in stream]
    assert_stream_shape(chunks)
    # Home Assistant runs every call it sees: exactly one chunk, one complete call, before the end.
    with_calls = [i for i, c in enumerate(chunks) if c.message.tool_calls]
    assert len(with_calls) == 1, with_calls
    [at] = with_calls
    assert at < len(chunks) - 1 and not chunks[at].done
    calls = chunks[at].message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0].function
    assert call.name == "HassTurnOn" and isinstance(call.arguments, dict)
    final = chunks[-1]
    assert final.done_reason == "stop" and not final.message.tool_calls
    assert_metrics(final)
    text = "".join(c.message.content or "" for c in chunks)

    [row] = await proxy.wait_rows(1)
    sent, body = assert_recorded(row, "/api/chat", True, final, text)
    assert {k: sent[k] for k in TOOL_PARAMS} == TOOL_PARAMS  # the config's params reached the server
    assert [t["function"]["name"] for t in sent["tools"]] == ["HassTurnOn"]
    recorded_calls = orjson.loads(row["tool_calls"])
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in recorded_calls] == [
        ("HassTurnOn", call.arguments)
    ]
    assert body["message"]["tool_calls"] == recorded_calls

    # Round two as Home Assistant sends it: the call without content, the result without id or name.
    assistant = {
        "role": "assistant",
        "tool_calls": [{"function": {"name": call.name, "arguments": call.arguments}}],
    }
    result = {"role": "tool", "content": '{"success": true}'}
    stream = await client.chat(
        model=MODEL, messages=[KITCHEN, assistant, result], tools=[HASS_TURN_ON], stream=True
    )
    again = [chunk async for chunk in stream]
    assert_stream_shape(again)
    assert_metrics(again[-1])
    assert again[-1].done_reason in ("stop", "length")

    rows = await proxy.wait_rows(2)
    assert len(rows) == 2
    row = rows[1]
    text = "".join(c.message.content or "" for c in again)
    sent, _ = assert_recorded(row, "/api/chat", True, again[-1], text)
    received = orjson.loads(row["request_body"])["messages"]
    assert "content" not in received[1] and set(received[2]) == {"role", "content"}
    # The proxy gave the call an id and paired the result with it, as llama-server requires.
    history = sent["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "tool"]
    [history_call] = history[1]["tool_calls"]
    assert history_call["type"] == "function" and history_call["function"]["name"] == "HassTurnOn"
    assert orjson.loads(history_call["function"]["arguments"]) == call.arguments
    assert history[2]["tool_call_id"] == history_call["id"]
    assert history[2]["content"] == '{"success": true}'


def test_harness_names_the_fix_when_a_file_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing file names the fix; the session fixtures turn that into a failure, not a skip."""
    monkeypatch.setattr(llama_server, "CACHE_DIR", tmp_path / "nothing-here")
    with pytest.raises(NotInstalled, match=re.escape(INSTALL_HINT)):
        llama_server.template_path()


def test_harness_fails_fast_when_the_server_dies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that dies (here: of SIGILL, like a build for another CPU) fails at once, with its log."""
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\necho 'loading model'\nkill -ILL $$\n")
    fake.chmod(0o755)
    monkeypatch.setattr(llama_server, "find_binary", lambda: fake)
    monkeypatch.setattr(llama_server, "find_model", lambda: tmp_path / "model.gguf")
    started = time.monotonic()
    with pytest.raises(ServerFailed) as caught:
        LlamaServer(log_dir=tmp_path).start()
    assert time.monotonic() - started < 10
    assert caught.value.signal_number == signal.SIGILL
    assert "SIGILL" in str(caught.value) and "loading model" in str(caught.value)


# -- the OpenAI-compatible API (/v1/*), with the real openai SDK (issue 8) ------


@contextlib.asynccontextmanager
async def openai_sdk(proxy: Proxy) -> AsyncIterator[openai.AsyncOpenAI]:
    """The real openai SDK against the proxy's /v1; no retries, so one call is one row."""
    async with openai.AsyncOpenAI(
        base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0, timeout=60
    ) as client:
        yield client


async def test_v1_chat_stream_and_not(make_proxy: MakeProxy, chat_server: LlamaServer) -> None:
    proxy = await make_proxy(chat_server.url, backend_type="openai", backend=BACKEND)
    async with openai_sdk(proxy) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[USER], stream=True, max_tokens=8, temperature=0
        )
        chunks = [chunk async for chunk in stream]
        whole = await client.chat.completions.create(
            model=MODEL, messages=[USER], max_tokens=8, temperature=0
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    # The proxy asked for usage; the client did not, so it gets no usage-only chunk.
    assert text and all(c.choices and c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    streamed, plain = await proxy.wait_rows(2)
    for row in (streamed, plain):
        assert (row["api"], row["endpoint"], row["status_code"], row["error"]) == (
            "openai", "/v1/chat/completions", 200, None,
        )  # fmt: skip
        assert row["backend_type"] == "openai" and row["prompt"] == USER["content"]
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0 and row["ttft_ms"] is not None
    assert (streamed["stream"], streamed["response"]) == (1, text)
    assert streamed["done_reason"] == chunks[-1].choices[0].finish_reason
    assert orjson.loads(streamed["backend_request"])["stream_options"] == {"include_usage": True}
    assert (plain["stream"], plain["response"]) == (0, whole.choices[0].message.content)
    assert plain["completion_tokens"] == whole.usage.completion_tokens


async def test_v1_tool_call_fragments_accumulate_to_the_backends_call(
    make_proxy: MakeProxy, chat_server: LlamaServer
) -> None:
    proxy = await make_proxy(chat_server.url, backend_type="openai", backend=BACKEND)
    request: Any = {
        "model": MODEL, "messages": [KITCHEN], "tools": [HASS_TURN_ON], "tool_choice": "required",
        "temperature": 0, "max_tokens": 256,
    }  # fmt: skip
    async with (
        openai_sdk(proxy) as client,
        client.chat.completions.stream(**request, extra_body={"cache_prompt": False}) as stream,
    ):
        final = await stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    got: list[dict[str, Any]] = [
        {"id": c.id, "type": c.type, "function": {"name": c.function.name, "arguments": c.function.arguments}}
        for c in calls
        if c.type == "function"
    ]
    assert [c["function"]["name"] for c in got] == ["HassTurnOn"]
    assert final.choices[0].finish_reason == "tool_calls"
    # The same request straight to llama-server, not streamed: the call the backend makes.
    async with openai.AsyncOpenAI(
        base_url=f"{chat_server.url}/v1", api_key="unused", max_retries=0, timeout=60
    ) as direct:
        answer = await direct.chat.completions.create(**request, extra_body={"cache_prompt": False})
    backend_calls = answer.choices[0].message.tool_calls or []
    assert [(c.function.name, c.function.arguments) for c in backend_calls if c.type == "function"] == [
        (c["function"]["name"], c["function"]["arguments"]) for c in got
    ]
    [row] = await proxy.wait_rows(1)
    assert orjson.loads(row["tool_calls"]) == got
    assert (row["api"], row["done_reason"], row["status_code"]) == ("openai", "tool_calls", 200)


async def test_v1_completions_and_models(make_proxy: MakeProxy, chat_server: LlamaServer) -> None:
    proxy = await make_proxy(chat_server.url, backend_type="openai", backend=BACKEND)
    async with openai_sdk(proxy) as client:
        stream = await client.completions.create(
            model=MODEL, prompt="The sky is", max_tokens=6, temperature=0, stream=True
        )
        text = "".join([c.choices[0].text async for c in stream])
        listed = await client.models.list()
        model = await client.models.retrieve(MODEL)
    assert text and [m.id for m in listed.data] == [MODEL] and model.id == MODEL
    completions, models, one = await proxy.wait_rows(3)
    assert (completions["endpoint"], completions["response"], completions["api"]) == (
        "/v1/completions", text, "openai",
    )  # fmt: skip
    assert completions["prompt_tokens"] > 0 and completions["completion_tokens"] > 0
    assert [(r["endpoint"], r["status_code"]) for r in (models, one)] == [
        ("/v1/models", 200), ("/v1/models/{model}", 200),
    ]  # fmt: skip


async def test_v1_embeddings(make_proxy: MakeProxy, embed_server: LlamaServer) -> None:
    embed_proxy = await make_proxy(embed_server.url, backend_type="openai", backend=BACKEND)
    async with openai_sdk(embed_proxy) as client:
        embedded = await client.embeddings.create(model=MODEL, input=["hello", "world"])
    assert [d.index for d in embedded.data] == [0, 1]
    assert all(len(d.embedding) > 0 for d in embedded.data)
    [row] = await embed_proxy.wait_rows(1)
    assert (row["endpoint"], row["status_code"], row["api"]) == ("/v1/embeddings", 200, "openai")
    assert row["prompt_tokens"] > 0 and row["prompt"] == "hello\nworld"


async def test_v1_errors_are_the_sdks_exceptions(make_proxy: MakeProxy, chat_server: LlamaServer) -> None:
    proxy = await make_proxy(chat_server.url, backend_type="openai", backend=BACKEND)
    bad: Any = [{"role": "user", "content": {"nested": "object"}}]
    async with openai_sdk(proxy) as client:
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="nope", messages=[USER])
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model=MODEL, messages=bad)
    assert caught.value.status_code == 400 and isinstance(caught.value.body, dict)
    missing, rejected = await proxy.wait_rows(2)
    assert (missing["status_code"], missing["error"]) == (404, "model 'nope' not found")
    assert rejected["status_code"] == 400 and rejected["error"] == caught.value.body["message"]
    assert missing["api"] == rejected["api"] == "openai"


@pytest.mark.parametrize("level", ["low", "max"])
async def test_think_level_reaches_the_real_server(
    make_proxy: MakeProxy, chat_server: LlamaServer, connect: Connect, level: str
) -> None:
    """A think level goes out as reasoning_effort with thinking on, and the server takes it."""
    proxy = await make_proxy(chat_server.url, backend_type="openai", backend=BACKEND)
    answer = await connect(proxy).chat(model=MODEL, messages=[USER], think=level, stream=False, options=SHORT)
    assert isinstance(answer.message.content, str) and answer.done_reason in ("stop", "length")
    [row] = await proxy.wait_rows(1)
    assert (row["status_code"], row["error"]) == (200, None)
    sent = orjson.loads(row["backend_request"])
    assert (sent["reasoning_effort"], sent["chat_template_kwargs"]) == (level, {"enable_thinking": True})


async def test_embed_dimensions_and_truncate(
    make_proxy: MakeProxy, embed_server: LlamaServer, connect: Connect
) -> None:
    """``dimensions`` goes out as OpenAI's field and cuts the answer; ``truncate`` is not sent."""
    proxy = await make_proxy(embed_server.url, backend_type="openai")
    answer = await connect(proxy).embed(model=MODEL, input="The sky is blue.", dimensions=8, truncate=True)
    [vector] = answer.embeddings
    # llama-server ignores dimensions and answers the model's full width; the
    # proxy cuts it to 8 and scales it back to length 1, as Ollama does.
    assert len(vector) == 8 and all(isinstance(x, float) for x in vector)
    assert abs(sum(x * x for x in vector) - 1.0) < 1e-6
    [row] = await proxy.wait_rows(1)
    sent = orjson.loads(row["backend_request"])
    assert (sent["dimensions"], "truncate" in sent) == (8, False)


async def test_tool_call_ids_kept_both_ways_with_the_real_server(
    make_proxy: MakeProxy, chat_server: LlamaServer, connect: Connect
) -> None:
    """The server's call id and index reach the client, and come back to it as the client sent them."""
    proxy = await make_proxy(
        chat_server.url, backend_type="openai", backend=BACKEND, models={"params": {MODEL: TOOL_PARAMS}}
    )
    http = connect(proxy)._client  # ollama-python 0.6 keeps no id: the wire shows what newer clients read
    body = {"model": MODEL, "messages": [KITCHEN], "tools": [HASS_TURN_ON], "stream": False}
    answer = (await http.post("/api/chat", json=body)).json()
    [call] = answer["message"]["tool_calls"]
    assert isinstance(call["id"], str) and call["id"] and call["function"]["index"] == 0
    result = {"role": "tool", "content": '{"success": true}', "tool_call_id": call["id"]}
    resp = await http.post("/api/chat", json={**body, "messages": [KITCHEN, answer["message"], result]})
    assert resp.status_code == 200 and resp.json()["done"] is True
    rows = await proxy.wait_rows(2)
    assert [(r["status_code"], r["error"]) for r in rows] == [(200, None), (200, None)]
    history = orjson.loads(rows[1]["backend_request"])["messages"]
    [kept] = history[1]["tool_calls"]
    assert (kept["id"], kept["index"]) == (call["id"], 0)
    assert history[2]["tool_call_id"] == call["id"]


async def test_tags_list_the_capabilities_show_reports(
    make_proxy: MakeProxy, chat_server: LlamaServer, connect: Connect
) -> None:
    proxy = await make_proxy(chat_server.url, backend_type="openai")
    client = connect(proxy)
    shown = await client.show(MODEL)
    tags = (await client._client.get("/api/tags")).json()
    assert [m["capabilities"] for m in tags["models"]] == [shown.capabilities]
    assert shown.capabilities is not None and "completion" in shown.capabilities
