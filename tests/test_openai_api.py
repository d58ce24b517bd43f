"""The OpenAI-compatible API (/v1/*), driven by the real `openai` SDK.

In front of the llama-server double (frames recorded from the real server) for
the openai backend, and in front of the Ollama double (Ollama's compatibility
layer's wire format) for the ollama backend. Every call must leave one complete
row with ``api = 'openai'``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from openai import AsyncOpenAI

from .conftest import MakeProxy, Proxy
from .ha_turn import TURN_ON
from .llama_double import LlamaServerDouble, fixture, sse_events
from .ollama_double import ANSWER, THOUGHT, OllamaDouble
from .raw_backend import RawRequest, chunk, head, raw_backend, whole

USER: Any = [{"role": "user", "content": "Say hello in five words."}]
TOOLS: Any = [TURN_ON]


def _deltas(name: str, key: str) -> str:
    return "".join((e["choices"][0]["delta"].get(key) or "") for e in sse_events(name) if e["choices"])


RECORDED_TEXT = _deltas("chat-stream", "content")
RECORDED_USAGE = sse_events("chat-stream")[-1]["usage"]


def recorded_tool_calls(name: str) -> list[dict[str, Any]]:
    """The tool calls of a recorded stream, fragments joined per index: what the backend sent."""
    calls: dict[int, dict[str, Any]] = {}
    for event in sse_events(name):
        for choice in event["choices"]:
            for part in choice["delta"].get("tool_calls") or []:
                call = calls.setdefault(part["index"], {"function": {"name": "", "arguments": ""}})
                if "id" in part:
                    call["id"], call["type"] = part["id"], part["type"]
                function = part.get("function") or {}
                call["function"]["name"] += function.get("name") or ""
                call["function"]["arguments"] += function.get("arguments") or ""
    return [calls[i] for i in sorted(calls)]


@asynccontextmanager
async def sdk(proxy: Proxy) -> AsyncIterator[AsyncOpenAI]:
    # No retries: a retried call would leave two rows and hide the first error.
    async with AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


async def post(proxy: Proxy, path: str, body: Any) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http, http.post(f"{proxy.url}{path}", json=body) as resp:
        return resp.status, await resp.read()


def not_found(model: str) -> dict[str, Any]:
    """The proxy's own 404, in OpenAI's error shape (the SDK's ``body`` is its "error")."""
    return {"message": f"model '{model}' not found", "type": "not_found_error", "code": 404}


def only_openai_rows(rows: list[dict[str, Any]], count: int) -> None:
    assert len(rows) == count
    for row in rows:
        assert row["api"] == "openai" and row["latency_ms"] is not None and row["request_id"]


# -- the openai backend (llama-server) ------------------------------------------


async def test_chat_stream_relays_deltas_strips_unasked_usage_and_records(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    async with sdk(oproxy) as client:
        stream = await client.chat.completions.create(model="smollm2", messages=USER, stream=True)
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == RECORDED_TEXT
    assert all(c.choices and c.usage is None for c in chunks)  # the usage chunk was not passed on
    assert chunks[-1].choices[0].finish_reason == "length"
    [(path, sent)] = llama_double[0].requests
    assert path == "/v1/chat/completions" and sent["stream_options"] == {"include_usage": True}
    [row] = await oproxy.wait_rows(1)
    only_openai_rows([row], 1)
    assert (row["endpoint"], row["method"], row["status_code"], row["stream"]) == (
        "/v1/chat/completions", "POST", 200, 1,
    )  # fmt: skip
    assert (row["model"], row["backend_model"], row["backend_type"]) == ("smollm2", "smollm2", "openai")
    assert (row["response"], row["done_reason"]) == (RECORDED_TEXT, "length")
    assert row["prompt"] == USER[0]["content"]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        RECORDED_USAGE["prompt_tokens"], RECORDED_USAGE["completion_tokens"],
    )  # fmt: skip
    assert row["error"] is None and row["ttfb_ms"] is not None and row["ttft_ms"] is not None
    assembled = orjson.loads(row["response_body"])
    assert assembled["object"] == "chat.completion" and assembled["timings"]["predicted_n"] == 12
    assert assembled["choices"][0]["message"]["content"] == RECORDED_TEXT
    assert orjson.loads(row["backend_request"]) == sent


async def test_stream_bytes_are_the_backends_frames_unchanged(oproxy: Proxy) -> None:
    recorded = fixture("chat-stream")
    usage_frame = recorded[recorded.rindex(b"data: {") : recorded.rindex(b"data: [DONE]")]
    assert b'"choices":[]' in usage_frame
    asked = {"model": "smollm2", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    assert await post(oproxy, "/v1/chat/completions", asked) == (200, recorded)
    unasked = {"model": "smollm2", "messages": USER, "stream": True}
    assert await post(oproxy, "/v1/chat/completions", unasked) == (200, recorded.replace(usage_frame, b""))
    rows = await oproxy.wait_rows(2)
    assert [r["prompt_tokens"] for r in rows] == [RECORDED_USAGE["prompt_tokens"]] * 2


async def test_chat_stream_with_usage_asked_ends_with_the_usage_chunk(oproxy: Proxy) -> None:
    async with sdk(oproxy) as client:
        stream = await client.chat.completions.create(
            model="smollm2", messages=USER, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == RECORDED_USAGE["completion_tokens"]
    [row] = await oproxy.wait_rows(1)
    assert row["completion_tokens"] == RECORDED_USAGE["completion_tokens"]


async def test_chat_without_streaming(oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]) -> None:
    recorded = orjson.loads(fixture("chat"))
    async with sdk(oproxy) as client:
        answer = await client.chat.completions.create(model="smollm2", messages=USER)
    assert answer.choices[0].message.content == recorded["choices"][0]["message"]["content"]
    assert answer.usage is not None and answer.usage.prompt_tokens == recorded["usage"]["prompt_tokens"]
    [(_, sent)] = llama_double[0].requests
    assert "stream_options" not in sent
    [row] = await oproxy.wait_rows(1)
    only_openai_rows([row], 1)
    assert (row["response"], row["done_reason"], row["stream"]) == ("A color is a color.", "stop", 0)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (21, 7)
    assert orjson.loads(row["response_body"]) == recorded and row["ttft_ms"] is not None


async def test_tool_call_fragments_accumulate_to_what_the_backend_sent(oproxy: Proxy) -> None:
    expected = recorded_tool_calls("chat-tools-stream")
    events = sse_events("chat-tools-stream")
    fragments = [e for e in events if e["choices"] and "tool_calls" in e["choices"][0]["delta"]]
    assert len(expected) == 1 and len(fragments) > 5  # really streamed in pieces
    async with (
        sdk(oproxy) as client,
        client.chat.completions.stream(
            model="smollm2", messages=[{"role": "user", "content": "Turn on the kitchen light"}],
            tools=TOOLS, tool_choice="required",
        ) as stream,
    ):  # fmt: skip
        final = await stream.get_final_completion()
    message = final.choices[0].message
    assert message.tool_calls is not None
    got = [
        {"id": c.id, "type": c.type, "function": {"name": c.function.name, "arguments": c.function.arguments}}
        for c in message.tool_calls
        if c.type == "function"
    ]
    assert got == expected and final.choices[0].finish_reason == "tool_calls"
    assert message.content == _deltas("chat-tools-stream", "content")
    [row] = await oproxy.wait_rows(1)
    assert orjson.loads(row["tool_calls"]) == expected
    assert (row["done_reason"], row["response"]) == ("tool_calls", message.content)


async def test_tool_calls_without_streaming(oproxy: Proxy) -> None:
    recorded = orjson.loads(fixture("chat-tools"))["choices"][0]["message"]["tool_calls"]
    async with sdk(oproxy) as client:
        answer = await client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Turn on the kitchen light"}], tools=TOOLS
        )
    assert [c.model_dump(exclude_none=True) for c in answer.choices[0].message.tool_calls or []] == recorded
    [row] = await oproxy.wait_rows(1)
    assert orjson.loads(row["tool_calls"]) == recorded and row["done_reason"] == "tool_calls"


async def test_reasoning_is_recorded_as_thinking(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    llama_double[0].scenario = "reasoning"
    async with sdk(oproxy) as client:
        stream = await client.chat.completions.create(model="smollm2", messages=USER, stream=True)
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello!"
    [row] = await oproxy.wait_rows(1)
    assert (row["thinking"], row["response"]) == ("The user greets me.", "Hello!")
    assert row["completion_tokens"] == 4


async def test_completions_stream(oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]) -> None:
    events = sse_events("completions-stream")
    expected = "".join(e["choices"][0]["text"] for e in events)
    async with sdk(oproxy) as client:
        stream = await client.completions.create(model="smollm2", prompt="The sky is", stream=True)
        text = "".join([c.choices[0].text async for c in stream])
    assert text == expected
    [(path, sent)] = llama_double[0].requests
    assert path == "/v1/completions" and sent["stream_options"] == {"include_usage": True}
    [row] = await oproxy.wait_rows(1)
    only_openai_rows([row], 1)
    assert (row["endpoint"], row["prompt"], row["response"], row["done_reason"]) == (
        "/v1/completions", "The sky is", expected, "length",
    )  # fmt: skip
    assert (row["prompt_tokens"], row["completion_tokens"]) == (3, 6)


async def test_embeddings(oproxy: Proxy) -> None:
    recorded = orjson.loads(fixture("embeddings"))
    async with sdk(oproxy) as client:
        answer = await client.embeddings.create(model="smollm2", input=["hello", "world"])
    assert [d.index for d in answer.data] == [0, 1]
    assert answer.data[0].embedding == pytest.approx(recorded["data"][0]["embedding"])
    [row] = await oproxy.wait_rows(1)
    only_openai_rows([row], 1)
    assert (row["endpoint"], row["prompt"], row["prompt_tokens"], row["status_code"]) == (
        "/v1/embeddings", "hello\nworld", 2, 200,
    )  # fmt: skip


async def test_models_show_client_side_names_and_mappings_apply(
    make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    proxy = await make_proxy(
        llama_double[1], backend_type="openai",
        models={"mappings": {"assistant": "smollm2"}, "default": "assistant"},
    )  # fmt: skip
    async with sdk(proxy) as client:
        listed = await client.models.list()
        assert [m.id for m in listed.data] == ["assistant"]
        assert (await client.models.retrieve("assistant")).id == "assistant"
        with pytest.raises(openai.NotFoundError) as caught:
            await client.models.retrieve("smollm3")
        assert caught.value.status_code == 404
        assert caught.value.body == not_found("smollm3")
        await client.chat.completions.create(model="assistant", messages=USER)
        await client.chat.completions.create(model="", messages=USER)  # models.default fills it in
    assert [sent["model"] for _, sent in llama_double[0].requests] == ["smollm2", "smollm2"]
    rows = await proxy.wait_rows(5)
    only_openai_rows(rows, 5)
    assert [(r["endpoint"], r["model"], r["backend_model"], r["status_code"]) for r in rows] == [
        ("/v1/models", None, None, 200),
        ("/v1/models/{model}", "assistant", "smollm2", 200),
        ("/v1/models/{model}", "smollm3", "smollm3", 404),
        ("/v1/chat/completions", "assistant", "smollm2", 200),
        ("/v1/chat/completions", "assistant", "smollm2", 200),
    ]


@pytest.mark.parametrize(
    ("scenario", "call", "exception", "status"),
    [
        ("error-bad-messages", "chat", openai.BadRequestError, 400),
        ("error-context-exceeded", "chat", openai.BadRequestError, 400),
        ("error-image-no-mmproj", "chat", openai.InternalServerError, 500),
        ("error-embeddings-disabled", "embed", openai.InternalServerError, 501),
    ],
)
async def test_backend_errors_reach_the_sdk_unchanged(
    oproxy: Proxy,
    llama_double: tuple[LlamaServerDouble, str],
    scenario: str,
    call: str,
    exception: type[openai.APIStatusError],
    status: int,
) -> None:
    recorded = orjson.loads(fixture(scenario))
    llama_double[0].scenario = scenario
    async with sdk(oproxy) as client:
        with pytest.raises(exception) as caught:
            if call == "chat":
                await client.chat.completions.create(model="smollm2", messages=USER)
            else:
                await client.embeddings.create(model="smollm2", input="x")
    assert caught.value.status_code == status and caught.value.body == recorded["error"]
    [row] = await oproxy.wait_rows(1)
    only_openai_rows([row], 1)
    assert (row["status_code"], row["error"]) == (status, recorded["error"]["message"])
    assert orjson.loads(row["response_body"]) == recorded


async def test_backend_error_body_is_relayed_byte_for_byte(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    llama_double[0].scenario = "error-bad-messages"
    bad = {"model": "smollm2", "messages": [{"role": "user", "content": {"nested": "object"}}]}
    assert await post(oproxy, "/v1/chat/completions", bad) == (400, fixture("error-bad-messages"))


async def test_unknown_model_is_not_found_and_never_reaches_the_backend(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    async with sdk(oproxy) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model="nope", messages=USER, stream=True)
        assert caught.value.body == not_found("nope")
        with pytest.raises(openai.NotFoundError):
            await client.embeddings.create(model="nope", input="x")
    assert llama_double[0].requests == []
    rows = await oproxy.wait_rows(2)
    only_openai_rows(rows, 2)
    assert all(r["status_code"] == 404 and r["error"] == "model 'nope' not found" for r in rows)


async def test_bad_requests_get_openai_shaped_errors_and_rows(oproxy: Proxy) -> None:
    for body, message in [
        (b"{not json", "invalid JSON in request body"),
        (b"[1]", "request body must be a JSON object"),
        (b'{"messages": []}', "model is required"),
        (b'{"model": "smollm2", "stream": "yes"}', "'stream' must be true or false"),
    ]:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{oproxy.url}/v1/chat/completions", data=body) as resp,
        ):
            error = (await resp.json())["error"]
            assert resp.status == 400 and error["type"] == "invalid_request_error" and error["code"] == 400
            assert error["message"].startswith(message)
    async with aiohttp.ClientSession() as http, http.get(f"{oproxy.url}/v1/nothing-here") as resp:
        assert resp.status == 404 and (await resp.json())["error"]["type"] == "not_found_error"
    rows = await oproxy.wait_rows(5)
    only_openai_rows(rows, 5)  # hostile or mistaken, an unknown route leaves its row too
    assert all(r["status_code"] == 400 and r["error"] for r in rows[:4])
    assert (rows[4]["endpoint"], rows[4]["status_code"]) == ("/v1/nothing-here", 404)


async def test_mid_stream_error_frame_raises_in_the_sdk_and_is_recorded(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    llama_double[0].scenario = "mid-stream-error"
    received = []
    async with sdk(oproxy) as client:
        stream = await client.chat.completions.create(model="smollm2", messages=USER, stream=True)
        with pytest.raises(openai.APIError, match="llama_decode failed: out of memory"):
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
    [row] = await oproxy.wait_rows(1)
    assert (row["status_code"], row["error"]) == (500, "llama_decode failed: out of memory")
    assert row["response"] == "".join(received) and received


async def test_stream_cut_off_without_done_ends_with_an_error(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    llama_double[0].scenario = "eof"
    async with sdk(oproxy) as client:
        stream = await client.chat.completions.create(model="smollm2", messages=USER, stream=True)
        with pytest.raises(openai.APIError, match="without \\[DONE\\]"):
            async for _ in stream:
                pass
    [row] = await oproxy.wait_rows(1)
    assert row["status_code"] == 502 and "without [DONE]" in row["error"]


async def test_first_frame_reaches_the_client_before_the_backend_sends_the_last(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    double = llama_double[0]
    double.hold = asyncio.Event()
    async with sdk(oproxy) as client:
        stream = await client.chat.completions.create(model="smollm2", messages=USER, stream=True)
        chunks = aiter(stream)
        first = await asyncio.wait_for(anext(chunks), 10)
        # The backend is still holding its stream open: nothing after its first frames was sent.
        assert double.streams_finished == 0 and first.choices[0].delta.role == "assistant"
        double.hold.set()
        rest = [chunk async for chunk in chunks]
    assert double.streams_finished == 1
    assert "".join(c.choices[0].delta.content or "" for c in [first, *rest]) == RECORDED_TEXT
    [row] = await oproxy.wait_rows(1)
    assert row["status_code"] == 200 and row["response"] == RECORDED_TEXT


async def test_client_leaving_mid_stream_is_recorded(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    double = llama_double[0]
    double.hold = asyncio.Event()
    async with sdk(oproxy) as client:
        stream = await client.chat.completions.create(model="smollm2", messages=USER, stream=True)
        await asyncio.wait_for(anext(aiter(stream)), 10)
        await stream.close()
    double.hold.set()
    [row] = await oproxy.wait_rows(1)
    assert (row["status_code"], row["error"]) == (499, "client disconnected")


# -- the ollama backend (Ollama's own /v1) ----------------------------------------


async def test_ollama_chat_stream_with_mapping(proxy: Proxy, ollama_double: tuple[OllamaDouble, str]) -> None:
    async with sdk(proxy) as client:
        stream = await client.chat.completions.create(model="llama2", messages=USER, stream=True)
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(ANSWER)
    assert all(c.choices for c in chunks) and chunks[-1].choices[0].finish_reason == "stop"
    [(path, sent)] = ollama_double[0].requests
    assert sent is not None
    assert (path, sent["model"], sent["stream_options"]) == (
        "/v1/chat/completions", "llama3.2", {"include_usage": True},
    )  # fmt: skip
    [row] = await proxy.wait_rows(1)
    only_openai_rows([row], 1)
    assert (row["model"], row["backend_model"], row["backend_type"]) == ("llama2", "llama3.2", "ollama")
    assert (row["response"], row["done_reason"], row["prompt_tokens"], row["completion_tokens"]) == (
        "".join(ANSWER), "stop", 26, len(ANSWER),
    )  # fmt: skip


async def test_ollama_tool_calls_and_reasoning(proxy: Proxy, ollama_double: tuple[OllamaDouble, str]) -> None:
    ollama_double[0].think = True
    messages: Any = [{"role": "user", "content": "Turn on the kitchen light"}]
    async with (
        sdk(proxy) as client,
        client.chat.completions.stream(model="llama3.2", messages=messages, tools=TOOLS) as stream,
    ):
        final = await stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    sent = [
        {"id": c.id, "type": c.type, "function": {"name": c.function.name, "arguments": c.function.arguments}}
        for c in calls
        if c.type == "function"
    ]
    assert sent == [
        {"id": "call_u1b3kx9f", "type": "function",
         "function": {"name": "HassTurnOn", "arguments": '{"name":"kitchen light"}'}},
    ]  # fmt: skip
    [row] = await proxy.wait_rows(1)
    assert orjson.loads(row["tool_calls"]) == sent and row["done_reason"] == "tool_calls"
    assert row["thinking"] == "".join(THOUGHT)


async def test_ollama_chat_completions_embeddings_without_streaming(proxy: Proxy) -> None:
    async with sdk(proxy) as client:
        chat = await client.chat.completions.create(model="llama2", messages=USER)
        done = await client.completions.create(model="llama2", prompt="Why is the sky blue?")
        embedded = await client.embeddings.create(model="nomic-embed-text", input=["a", "b"])
    assert chat.choices[0].message.content == "".join(ANSWER) and chat.model == "llama3.2"
    assert done.choices[0].text == "".join(ANSWER)
    assert [d.embedding for d in embedded.data] == [[0.1, 0.2, 0.3]] * 2
    rows = await proxy.wait_rows(3)
    only_openai_rows(rows, 3)
    assert [(r["endpoint"], r["stream"], r["response"], r["prompt_tokens"]) for r in rows] == [
        ("/v1/chat/completions", 0, "".join(ANSWER), 26),
        ("/v1/completions", 0, "".join(ANSWER), 4),
        ("/v1/embeddings", 0, None, 8),
    ]


async def test_ollama_completions_stream_records_the_real_usage(proxy: Proxy) -> None:
    async with sdk(proxy) as client:
        stream = await client.completions.create(model="llama2", prompt="Why?", stream=True)
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks) == "".join(ANSWER)
    assert all(c.choices for c in chunks)  # Ollama's usage-only chunk was kept back
    [row] = await proxy.wait_rows(1)
    # Ollama sends zero usage on every chunk and the real one last.
    assert (row["prompt_tokens"], row["completion_tokens"], row["done_reason"]) == (4, len(ANSWER), "stop")


async def test_ollama_models_and_errors(proxy: Proxy, ollama_double: tuple[OllamaDouble, str]) -> None:
    async with sdk(proxy) as client:
        listed = await client.models.list()
        assert [m.id for m in listed.data] == ["llama2", "nomic-embed-text:latest"]
        assert (await client.models.retrieve("llama2")).id == "llama2"
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(model="nope", messages=USER, stream=True)
        with pytest.raises(openai.BadRequestError) as empty:
            await client.chat.completions.create(model="llama2", messages=[])
    assert ("/v1/models/llama3.2", None) in ollama_double[0].requests
    assert missing.value.body == {
        "message": 'model "nope" not found, try pulling it first', "type": "not_found_error",
        "param": None, "code": None,
    }  # fmt: skip
    assert empty.value.status_code == 400
    rows = await proxy.wait_rows(4)
    only_openai_rows(rows, 4)
    assert [(r["endpoint"], r["status_code"]) for r in rows] == [
        ("/v1/models", 200), ("/v1/models/{model}", 200), ("/v1/chat/completions", 404),
        ("/v1/chat/completions", 400),
    ]  # fmt: skip
    assert rows[2]["error"] == 'model "nope" not found, try pulling it first'


async def test_ollama_first_frame_reaches_the_client_while_the_backend_holds(
    proxy: Proxy, ollama_double: tuple[OllamaDouble, str]
) -> None:
    ollama_double[0].hold = asyncio.Event()
    async with sdk(proxy) as client:
        stream = await client.chat.completions.create(model="llama2", messages=USER, stream=True)
        chunks = aiter(stream)
        first = await asyncio.wait_for(anext(chunks), 10)
        assert first.choices[0].delta.content == ANSWER[0]
        ollama_double[0].hold.set()
        rest = [chunk.choices[0].delta.content async for chunk in chunks]
    assert "".join([ANSWER[0], *(t or "" for t in rest)]) == "".join(ANSWER)


async def test_a_stream_read_to_done_is_complete_though_the_backend_ends_it_later(
    make_proxy: MakeProxy,
) -> None:
    # The openai SDK stops at [DONE] and closes; llama-server may end its chunked
    # body a moment later. The client got every byte: the row must say 200.
    ended = asyncio.Event()

    async def late_end(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        if request.path == "/v1/models":
            writer.write(whole(fixture("models")))
            await writer.drain()
            return True
        writer.write(head(content_type="text/event-stream", Transfer_Encoding="chunked"))
        writer.write(chunk(fixture("chat-stream")))  # every frame, [DONE] included
        await writer.drain()
        await asyncio.sleep(1.0)  # then the end of the body, late
        with suppress(ConnectionError):
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        ended.set()
        return False

    async with raw_backend(late_end) as backend:
        proxy = await make_proxy(backend.url, backend_type="openai")
        sdk = AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="none", max_retries=0)
        stream = await sdk.chat.completions.create(model="smollm2", messages=USER, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await stream.close()
        assert text == RECORDED_TEXT
        await asyncio.wait_for(ended.wait(), 5)
        [row] = await proxy.wait_rows(1)
    assert row["status_code"] == 200 and row["error"] is None
    assert row["response"] == RECORDED_TEXT
