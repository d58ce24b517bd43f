"""The openai backend: Ollama clients in front of (a replay of) llama-server."""

from __future__ import annotations

import asyncio
import base64
from datetime import datetime

import aiohttp
import ollama
import orjson
import pytest

from .conftest import MakeProxy, Proxy, present
from .llama_double import LlamaServerDouble, sse_events

USER = [{"role": "user", "content": "Say hello in five words."}]
# The recorded chat-stream.body's deltas, concatenated: what the client must see.
RECORDED_TEXT = "".join(
    (e["choices"][0]["delta"].get("content") or "") for e in sse_events("chat-stream") if e["choices"]
)
RECORDED_USAGE = next(e for e in sse_events("chat-stream") if e.get("usage"))


def client(proxy: Proxy) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=proxy.url)


async def test_list_show_ps_version(oproxy: Proxy) -> None:
    c = client(oproxy)
    listed = await c.list()
    [model] = listed.models
    assert model.model == "smollm2:latest" and isinstance(model.size, int) and model.size > 0
    assert isinstance(model.modified_at, datetime) and present(model.details).quantization_level == "Q4_1"
    shown = await c.show("smollm2")
    assert "completion" in (shown.capabilities or []) and shown.modelinfo is not None
    assert shown.modelinfo["general.parameter_count"] == 134515008
    assert (await c.show("smollm2:latest")).modelinfo == shown.modelinfo  # x and x:latest alike
    running = await c.ps()
    assert [m.model for m in running.models] == ["smollm2:latest"]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{oproxy.url}/api/version") as resp:
            assert "version" in await resp.json()
        async with http.head(f"{oproxy.url}/") as resp:  # the ollama CLI's server check
            assert resp.status == 200
    rows = await oproxy.wait_rows(6)
    assert [(r["endpoint"], r["status_code"]) for r in rows] == [
        ("/api/tags", 200), ("/api/show", 200), ("/api/show", 200), ("/api/ps", 200), ("/api/version", 200),
        ("/", 200),
    ]  # fmt: skip


async def test_unknown_model_is_404_everywhere(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    c = client(oproxy)
    for call in (
        c.chat(model="nope", messages=USER),
        c.show("nope"),
        c.generate(model="nope", prompt="x"),
        c.embed(model="nope", input="x"),
    ):
        with pytest.raises(ollama.ResponseError) as caught:
            await call
        assert caught.value.status_code == 404 and caught.value.error == "model 'nope' not found"
    assert llama_double[0].requests == []  # nothing reached the backend
    rows = await oproxy.wait_rows(4)
    assert all(r["status_code"] == 404 and r["error"] == "model 'nope' not found" for r in rows)


async def test_chat_stream_translates_and_records(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    chunks = [c async for c in await client(oproxy).chat(model="smollm2", messages=USER, stream=True)]
    assert "".join(c.message.content or "" for c in chunks) == RECORDED_TEXT
    assert all(c.message.role == "assistant" for c in chunks)
    final = chunks[-1]
    assert final.done and final.done_reason == "length" and all(not c.done for c in chunks[:-1])
    assert final.prompt_eval_count == RECORDED_USAGE["usage"]["prompt_tokens"]
    assert final.eval_count == RECORDED_USAGE["usage"]["completion_tokens"]
    assert final.prompt_eval_duration == int(RECORDED_USAGE["timings"]["prompt_ms"] * 1e6)
    assert final.eval_duration == int(RECORDED_USAGE["timings"]["predicted_ms"] * 1e6)
    assert isinstance(final.total_duration, int) and final.total_duration > 0
    [(path, sent)] = llama_double[0].requests
    assert path == "/v1/chat/completions"
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    [row] = await oproxy.wait_rows(1)
    assert (row["response"], row["done_reason"], row["stream"]) == (RECORDED_TEXT, "length", 1)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (final.prompt_eval_count, final.eval_count)
    assert orjson.loads(row["backend_request"]) == sent
    assert row["ttft_ms"] is not None and row["error"] is None and row["backend_type"] == "openai"


async def test_chat_and_generate_without_streaming(oproxy: Proxy) -> None:
    chat = await client(oproxy).chat(model="smollm2", messages=USER, stream=False)
    assert chat.message.content == RECORDED_TEXT and chat.done and chat.eval_count == 12
    gen = await client(oproxy).generate(model="smollm2", prompt="Say hello", stream=False)
    assert gen.response == RECORDED_TEXT and gen.done_reason == "length"
    rows = await oproxy.wait_rows(2)
    assert [(r["endpoint"], r["stream"], r["response"]) for r in rows] == [
        ("/api/chat", 0, RECORDED_TEXT), ("/api/generate", 0, RECORDED_TEXT),
    ]  # fmt: skip


async def test_generate_uses_chat_template_and_raw_uses_completions(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    text = "".join(
        [
            present(c.response)
            async for c in await client(oproxy).generate(
                model="smollm2", prompt="Hi", system="Be brief", stream=True
            )
        ]
    )
    assert text == RECORDED_TEXT
    raw = "".join(
        [
            present(c.response)
            async for c in await client(oproxy).generate(
                model="smollm2", prompt="The sky is", raw=True, stream=True
            )
        ]
    )
    completions = "".join(
        e["choices"][0].get("text", "") for e in sse_events("completions-stream") if e["choices"]
    )
    assert raw == completions
    (p1, b1), (p2, b2) = llama_double[0].requests
    assert p1 == "/v1/chat/completions"
    assert b1["messages"] == [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}]
    assert (p2, b2["prompt"]) == ("/v1/completions", "The sky is")


async def test_tool_call_arrives_once_complete_with_dict_arguments(oproxy: Proxy) -> None:
    tools = [{"type": "function", "function": {"name": "HassTurnOn", "description": "Turns on a device",
              "parameters": {"type": "object", "properties": {"name": {"type": "string"}}}}}]  # fmt: skip
    chunks = [
        c async for c in await client(oproxy).chat(model="smollm2", messages=USER, tools=tools, stream=True)
    ]
    with_calls = [c for c in chunks if c.message.tool_calls]
    assert len(with_calls) == 1 and not with_calls[0].done
    [call] = with_calls[0].message.tool_calls or []
    assert call.function.name == "HassTurnOn" and isinstance(call.function.arguments, dict)
    assert chunks[-1].done and chunks[-1].done_reason == "stop"
    assert chunks.index(with_calls[0]) == len(chunks) - 2  # right before the final chunk
    [row] = await oproxy.wait_rows(1)
    recorded = orjson.loads(row["tool_calls"])
    assert [c["function"]["name"] for c in recorded] == ["HassTurnOn"]
    assert recorded[0]["function"]["arguments"] == call.function.arguments


async def test_thinking_is_separate_from_content(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    llama_double[0].scenario = "reasoning"
    chunks = [
        c async for c in await client(oproxy).chat(model="smollm2", messages=USER, think=True, stream=True)
    ]
    assert "".join(c.message.thinking or "" for c in chunks) == "The user greets me."
    assert "".join(c.message.content or "" for c in chunks) == "Hello!"
    assert llama_double[0].requests[0][1]["chat_template_kwargs"] == {"enable_thinking": True}
    [row] = await oproxy.wait_rows(1)
    assert (row["thinking"], row["response"]) == ("The user greets me.", "Hello!")
    assert chunks[-1].prompt_eval_duration == 12_500_000 and chunks[-1].eval_duration == 40_250_000


@pytest.mark.parametrize(
    ("scenario", "status", "message"),
    [
        ("error-bad-messages", 400, "Expected 'content' to be a string or an array"),
        ("error-context-exceeded", 400, "exceeds the available context size"),
        ("error-image-no-mmproj", 500, "image input is not supported"),
        ("error-unparseable-tool-output", 500, "does not match the expected"),
    ],
)
async def test_backend_errors_keep_status_and_message(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str], scenario: str, status: int, message: str
) -> None:
    llama_double[0].scenario = scenario
    with pytest.raises(ollama.ResponseError) as caught:
        await client(oproxy).chat(model="smollm2", messages=USER)
    assert caught.value.status_code == status and message in caught.value.error
    [row] = await oproxy.wait_rows(1)
    assert row["status_code"] == status and message in row["error"]


async def test_a_refused_request_keeps_what_was_sent_in_its_row(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    llama_double[0].scenario = "error-context-exceeded"
    with pytest.raises(ollama.ResponseError):
        await client(oproxy).chat(model="smollm2", messages=USER)
    [(_, sent)] = llama_double[0].requests
    [row] = await oproxy.wait_rows(1)
    assert row["status_code"] == 400 and orjson.loads(row["backend_request"]) == sent


async def test_model_loading_is_503(oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]) -> None:
    llama_double[0].loading = True
    with pytest.raises(ollama.ResponseError) as caught:
        await client(oproxy).list()
    assert caught.value.status_code == 503 and "loading" in caught.value.error.lower()
    async with aiohttp.ClientSession() as http, http.get(f"{oproxy.url}/health") as resp:
        assert resp.status == 503 and "loading" in (await resp.json())["error"].lower()
    llama_double[0].loading = False
    assert [m.model for m in (await client(oproxy).list()).models] == ["smollm2:latest"]


@pytest.mark.parametrize(
    ("scenario", "message"),
    [("mid-stream-error", "llama_decode failed: out of memory"), ("eof", "before it finished")],
)
async def test_failures_mid_stream_end_with_an_error_line(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str], scenario: str, message: str
) -> None:
    llama_double[0].scenario = scenario
    got = []
    with pytest.raises(ollama.ResponseError) as caught:
        async for chunk in await client(oproxy).chat(model="smollm2", messages=USER, stream=True):
            got.append(present(chunk.message.content))
            assert not chunk.done  # no final chunk for a stream that failed
    assert message in caught.value.error and got  # the tokens before the failure arrived
    [row] = await oproxy.wait_rows(1)
    assert message in row["error"] and row["response"] == "".join(got)


async def test_stream_is_not_buffered(oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]) -> None:
    double = llama_double[0]
    double.hold = asyncio.Event()
    stream = await client(oproxy).chat(model="smollm2", messages=USER, stream=True)
    first = await asyncio.wait_for(anext(aiter(stream)), timeout=5)
    assert first.message.content == "I" and not double.hold.is_set()  # backend still holding
    double.hold.set()
    rest = "".join([c.message.content or "" async for c in stream])
    assert "I" + rest == RECORDED_TEXT


async def test_backend_timeout_bounds_each_silence_not_the_whole_answer(
    make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    """stream:false with backend.timeout 0.4 s: a 2 s answer that keeps coming is whole; a stall is 504."""
    double, url = llama_double
    slow = await make_proxy(url, backend_type="openai", backend={"timeout": 0.4})
    double.pace = 2.0 / len(sse_events("chat-stream"))  # every frame in time, the answer not
    started = asyncio.get_running_loop().time()
    answer = await client(slow).chat(model="smollm2", messages=USER, stream=False)
    assert asyncio.get_running_loop().time() - started > 1.0
    assert answer.message.content == RECORDED_TEXT and answer.done
    double.pace, double.hold = 0.0, asyncio.Event()  # now it stops after two frames
    with pytest.raises(ollama.ResponseError) as caught:
        await client(slow).chat(model="smollm2", messages=USER, stream=False)
    assert caught.value.status_code == 504 and "stopped answering" in caught.value.error
    double.hold.set()
    rows = await slow.wait_rows(2)
    assert [(r["status_code"], r["response"]) for r in rows] == [(200, RECORDED_TEXT), (504, None)]


async def test_embed_and_legacy_embeddings(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    embedded = await client(oproxy).embed(model="smollm2", input=["hello", "world"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 576
    legacy = await client(oproxy).embeddings(model="smollm2", prompt="hello")
    assert len(legacy.embedding) == 576
    assert [p for p, _ in llama_double[0].requests] == ["/v1/embeddings", "/v1/embeddings"]
    rows = await oproxy.wait_rows(2)
    assert [(r["endpoint"], r["prompt"]) for r in rows] == [
        ("/api/embed", "hello\nworld"),
        ("/api/embeddings", "hello"),
    ]


async def test_pull_succeeds_only_for_served_models(oproxy: Proxy) -> None:
    assert (await client(oproxy).pull("smollm2", stream=False)).status == "success"
    assert [p.status async for p in await client(oproxy).pull("smollm2:latest", stream=True)] == ["success"]
    with pytest.raises(ollama.ResponseError) as caught:
        await client(oproxy).pull("llama3.2", stream=False)
    assert caught.value.status_code == 404 and "model 'llama3.2' not found" in caught.value.error


async def test_model_management_is_a_clear_error(oproxy: Proxy) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await client(oproxy).delete("smollm2")
    assert caught.value.status_code == 501 and "does not manage model files" in caught.value.error
    with pytest.raises(ollama.ResponseError):
        await client(oproxy).copy("smollm2", "other")


async def test_params_mapping_and_options_reach_the_backend(
    make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    double, url = llama_double
    proxy = await make_proxy(
        url,
        backend_type="openai",
        models={
            "mappings": {"assistant": "smollm2"},
            "params": {"assistant": {"tool_choice": "required", "cache_prompt": False}},
        },
    )
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
    await client(proxy).chat(
        model="assistant",
        messages=[{"role": "user", "content": "What is this?", "images": [png]}],
        options={"num_ctx": 8192.0, "num_predict": 32, "temperature": 0.2, "stop": ["\n"]},
        keep_alive="-1.0s",
        format={"type": "object", "properties": {"a": {"type": "string"}}},
    )
    [(_, sent)] = double.requests
    assert sent["model"] == "smollm2" and sent["tool_choice"] == "required" and sent["cache_prompt"] is False
    assert sent["max_tokens"] == 32 and sent["temperature"] == 0.2 and "num_ctx" not in sent
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert [m.model for m in (await client(proxy).list()).models] == ["assistant:latest"]


async def test_empty_prompt_loads_the_model(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    loaded = await client(oproxy).generate(model="smollm2", prompt="", stream=False)
    assert loaded.done and loaded.done_reason == "load"
    assert llama_double[0].requests == []


async def test_backend_down_is_502(make_proxy: MakeProxy, unused_tcp_port: int) -> None:
    proxy = await make_proxy(f"http://127.0.0.1:{unused_tcp_port}", backend_type="openai")
    for call in (client(proxy).chat(model="smollm2", messages=USER), client(proxy).list()):
        with pytest.raises(ollama.ResponseError) as caught:
            await call
        assert caught.value.status_code == 502 and "unreachable" in caught.value.error
    rows = await proxy.wait_rows(2)
    assert [r["status_code"] for r in rows] == [502, 502]


async def test_tool_call_without_streaming(oproxy: Proxy) -> None:
    tools = [{"type": "function", "function": {"name": "HassTurnOn", "parameters": {"type": "object"}}}]
    chat = await client(oproxy).chat(model="smollm2", messages=USER, tools=tools, stream=False)
    [call] = chat.message.tool_calls or []
    assert call.function.name == "HassTurnOn" and call.function.arguments == {"name": "HassTurnOn"}
    assert chat.done_reason == "stop" and chat.message.content  # the content before the call, kept
    [row] = await oproxy.wait_rows(1)
    assert [c["function"]["name"] for c in orjson.loads(row["tool_calls"])] == ["HassTurnOn"]


async def test_a_mapping_to_a_tagged_name_shows_its_alias_everywhere(
    make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    # llama-server calls its model "smollm2"; the mapping names it with its tag.
    proxy = await make_proxy(
        llama_double[1], backend_type="openai", models={"mappings": {"assistant": "smollm2:latest"}}
    )
    assert [m.model for m in (await client(proxy).list()).models] == ["assistant:latest"]
    assert [m.model for m in (await client(proxy).ps()).models] == ["assistant:latest"]
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/v1/models") as resp:
        assert [m["id"] for m in (await resp.json())["data"]] == ["assistant"]
    reply = await client(proxy).chat(model="assistant", messages=USER)
    assert reply.message.content == RECORDED_TEXT


async def test_load_and_unload_answer_one_json_object_as_ollama_does(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    # Open WebUI's unload: no "stream" field, keep_alive 0; it refuses an NDJSON answer.
    async with aiohttp.ClientSession() as http:
        for path, body, reason in (
            ("/api/generate", {"model": "smollm2", "prompt": "", "keep_alive": 0}, "unload"),
            ("/api/chat", {"model": "smollm2", "messages": [], "keep_alive": 0}, "unload"),
            ("/api/chat", {"model": "smollm2", "messages": []}, "load"),
            ("/api/generate", {"model": "smollm2", "keep_alive": "5m", "stream": True}, "load"),
        ):
            async with http.post(f"{oproxy.url}{path}", json=body) as resp:
                assert resp.status == 200
                assert resp.content_type == "application/json", (path, body)
                answer = orjson.loads(await resp.read())
            assert answer["done"] is True and answer["done_reason"] == reason, (path, body, answer)
    unloaded = await client(oproxy).generate(model="smollm2", prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert llama_double[0].requests == []
    rows = await oproxy.wait_rows(5)
    assert [r["done_reason"] for r in rows] == ["unload", "unload", "load", "load", "unload"]


async def test_newer_probe_routes(oproxy: Proxy) -> None:
    """HEAD /api/tags and /api/version answer 200 without a body; /api/status says no cloud."""
    c = client(oproxy)
    http = c._client  # the client's own HTTP connection: ollama-python has no call for these
    for path in ("/api/tags", "/api/version"):
        resp = await http.head(path)
        assert resp.status_code == 200 and resp.content == b""
    resp = await http.get("/api/status")
    assert resp.status_code == 200
    assert resp.json() == {"cloud": {"disabled": True, "source": "llm-proxy"}}
    assert [m.model for m in (await c.list()).models] == ["smollm2:latest"]  # GET still has its body
    rows = await oproxy.wait_rows(4)
    assert [(r["method"], r["endpoint"], r["status_code"]) for r in rows] == [
        ("HEAD", "/api/tags", 200), ("HEAD", "/api/version", 200), ("GET", "/api/status", 200),
        ("GET", "/api/tags", 200),
    ]  # fmt: skip


@pytest.mark.parametrize("level", ["low", "medium", "high", "max"])
async def test_think_level_is_reasoning_effort_with_thinking_on(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str], level: str
) -> None:
    llama_double[0].scenario = "reasoning"
    answer = await client(oproxy).chat(model="smollm2", messages=USER, think=level, stream=False)
    assert answer.message.thinking == "The user greets me." and answer.message.content == "Hello!"
    [(_, sent)] = llama_double[0].requests
    assert (sent["reasoning_effort"], sent["chat_template_kwargs"]) == (level, {"enable_thinking": True})


async def test_think_of_another_kind_is_refused_at_the_edge(oproxy: Proxy) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await client(oproxy).chat(model="smollm2", messages=USER, think="extreme", stream=False)
    assert caught.value.status_code == 400 and "'think' must be true, false" in caught.value.error


async def test_embed_dimensions_sent_truncate_not(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    c = client(oproxy)
    embedded = await c.embed(model="smollm2", input="hello", dimensions=64, truncate=False)
    assert len(embedded.embeddings) == 1
    [(_, sent)] = llama_double[0].requests
    assert sent is not None and sent["dimensions"] == 64 and "truncate" not in sent
    with pytest.raises(ollama.ResponseError) as caught:
        await c.embed(model="smollm2", input="hello", dimensions=0)
    assert caught.value.status_code == 400 and "'dimensions' must be an integer above 0" in caught.value.error


async def test_chat_and_generate_take_truncate_and_shift(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    http = client(oproxy)._client  # ollama-python 0.6 has no parameter for these yet
    chat = {"model": "smollm2", "messages": USER, "stream": False, "truncate": False, "shift": False}
    resp = await http.post("/api/chat", json=chat)
    assert resp.status_code == 200 and ollama.ChatResponse(**resp.json()).message.content == RECORDED_TEXT
    generate = {"model": "smollm2", "prompt": "hi", "stream": False, "truncate": True, "shift": True}
    assert (await http.post("/api/generate", json=generate)).status_code == 200
    sent = [body for _, body in llama_double[0].requests]
    assert all(body is not None and not {"truncate", "shift"} & body.keys() for body in sent)
    resp = await http.post("/api/chat", json={**chat, "shift": "yes"})
    assert resp.status_code == 400 and "'shift' must be true or false" in resp.json()["error"]


TOOLS = [{"type": "function", "function": {"name": "HassTurnOn", "parameters": {"type": "object"}}}]


async def test_tool_call_ids_both_ways(oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]) -> None:
    """The backend's id and index reach the client; the client's ids reach the backend."""
    c = client(oproxy)
    chunks = [c async for c in await c.chat(model="smollm2", messages=USER, tools=TOOLS, stream=True)]
    assert [call.function.name for ch in chunks for call in ch.message.tool_calls or []] == ["HassTurnOn"]
    # ollama-python 0.6 parses every chunk but keeps no id; the wire has it, as newer clients read it.
    body = {"model": "smollm2", "messages": USER, "tools": TOOLS, "stream": False}
    answer = (await c._client.post("/api/chat", json=body)).json()
    [call] = answer["message"]["tool_calls"]
    assert (call["id"], call["function"]["index"]) == ("QwiJu1ZkXgOKD9Jj8bxEdHG0GbqmaaGm", 0)
    # Round two as a newer client sends it: the call with its id and index, the result naming it.
    result = {"role": "tool", "content": "{}", "tool_name": "HassTurnOn", "tool_call_id": call["id"]}
    history = [*USER, answer["message"], result]
    resp = await c._client.post("/api/chat", json={**body, "messages": history})
    assert resp.status_code == 200
    sent = llama_double[0].requests[-1][1]
    assert sent is not None
    [kept] = sent["messages"][1]["tool_calls"]
    assert (kept["id"], kept["index"]) == (call["id"], 0)
    assert sent["messages"][2]["tool_call_id"] == call["id"]


async def test_tags_carry_the_capabilities_show_has_and_ps_the_context(oproxy: Proxy) -> None:
    c = client(oproxy)
    shown = await c.show("smollm2")
    listed = (await c._client.get("/api/tags")).json()["models"]  # ollama-python 0.6 keeps no capabilities
    assert [m["capabilities"] for m in listed] == [shown.capabilities]
    assert [m.model for m in (await c.list()).models] == ["smollm2:latest"]  # and still parses the list
    [running] = (await c.ps()).models
    assert isinstance(running.context_length, int) and running.context_length > 0
