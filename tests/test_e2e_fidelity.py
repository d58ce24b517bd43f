"""End to end against the real llama-server: the newer Ollama and OpenAI surface.

Token log probabilities, and the /v1/responses and /v1/messages relays, through
the real ``ollama`` and ``openai`` clients. Shapes and counts are asserted,
not words: the model is SmolLM2-135M.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import anthropic
import ollama
import openai
import orjson

from .conftest import MakeProxy
from .e2e import Connect
from .llama_server import LlamaServer
from .test_e2e_llama_server import MODEL, SHORT, USER


def assert_logprobs(entries: Sequence[Any] | None, text: str, alternatives: int) -> None:
    """One entry per token, tokens that spell the text, logprobs <= 0, the alternatives asked for."""
    assert entries, "no logprobs in the answer"
    assert "".join(e.token for e in entries) == text
    for entry in entries:
        assert isinstance(entry.logprob, float) and entry.logprob <= 0 and math.isfinite(entry.logprob)
        if alternatives:
            assert entry.top_logprobs is not None and len(entry.top_logprobs) == alternatives
            assert all(alt.logprob <= 0 for alt in entry.top_logprobs)
            # The sampled token at temperature 0 is the most likely one.
            assert entry.top_logprobs[0].token == entry.token
        else:
            assert not entry.top_logprobs


async def test_chat_logprobs_whole_and_streamed(
    make_proxy: MakeProxy, chat_server: LlamaServer, connect: Connect
) -> None:
    proxy = await make_proxy(chat_server.url, backend_type="openai")
    client = connect(proxy)
    answer = await client.chat(
        model=MODEL, messages=[USER], stream=False, options=SHORT, logprobs=True, top_logprobs=2
    )
    assert_logprobs(answer.logprobs, answer.message.content or "", 2)
    assert answer.eval_count == len(answer.logprobs or [])

    stream = await client.chat(model=MODEL, messages=[USER], stream=True, options=SHORT, logprobs=True)
    chunks = [chunk async for chunk in stream]
    tokens = [entry for chunk in chunks[:-1] for entry in (chunk.logprobs or [])]
    assert_logprobs(tokens, "".join(c.message.content or "" for c in chunks), 0)
    assert chunks[-1].done and not chunks[-1].logprobs

    rows = await proxy.wait_rows(2)
    assert [(r["status_code"], r["error"]) for r in rows] == [(200, None), (200, None)]
    sent = [orjson.loads(r["backend_request"]) for r in rows]
    assert [(s["logprobs"], s["top_logprobs"]) for s in sent] == [(True, 2), (True, 1)]


async def test_generate_logprobs_raw_and_templated(
    make_proxy: MakeProxy, chat_server: LlamaServer, connect: Connect
) -> None:
    proxy = await make_proxy(chat_server.url, backend_type="openai")
    client = connect(proxy)
    prompt = "<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\n"
    raw = await client.generate(
        model=MODEL, prompt=prompt, raw=True, stream=False, options=SHORT, logprobs=True, top_logprobs=3
    )
    assert_logprobs(raw.logprobs, raw.response or "", 3)
    templated = await client.generate(model=MODEL, prompt="Say hello.", options=SHORT, logprobs=True)
    assert_logprobs(templated.logprobs, templated.response or "", 0)
    plain = await client.generate(model=MODEL, prompt="Say hello.", options=SHORT)
    assert plain.logprobs is None
    rows = await proxy.wait_rows(3)
    assert orjson.loads(rows[0]["backend_request"])["logprobs"] == 3
    assert "logprobs" not in orjson.loads(rows[2]["backend_request"])
    assert isinstance(ollama.GenerateResponse.model_validate_json(rows[0]["response_body"]).logprobs, list)


async def test_back_to_back_streams_never_meet_the_connection_llama_server_closed(
    make_proxy: MakeProxy, chat_server: LlamaServer, connect: Connect
) -> None:
    """llama-server closes its connection after each streamed answer although it says Keep-Alive.

    The next request, sent at once, used to take that connection from the pool
    and fail with 502 "Server disconnected": every other request, for a client
    as quick as Home Assistant's tool rounds.
    """
    proxy = await make_proxy(chat_server.url, backend_type="openai")
    client = connect(proxy)
    tiny = {"num_predict": 2, "temperature": 0}
    for round_ in range(6):
        if round_ % 2:
            answer = await client.chat(model=MODEL, messages=[USER], stream=False, options=tiny)
            assert answer.done
        else:
            stream = await client.generate(model=MODEL, prompt="Hi", stream=True, options=tiny)
            chunks = [c async for c in stream]
            assert chunks[-1].done
    rows = await proxy.wait_rows(6)
    assert [(r["status_code"], r["error"]) for r in rows] == [(200, None)] * 6


async def test_responses_api_relayed_and_recorded(make_proxy: MakeProxy, chat_server: LlamaServer) -> None:
    """The openai SDK's Responses API, whole and streamed, through the proxy to the real server."""
    proxy = await make_proxy(chat_server.url, backend_type="openai")
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)
    whole = await client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=8, temperature=0)
    assert whole.status == "completed" and whole.output_text
    events = [e async for e in await client.responses.create(
        model=MODEL, input="Say hello.", max_output_tokens=8, temperature=0, stream=True
    )]  # fmt: skip
    assert events[-1].type == "response.completed"
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    rows = await proxy.wait_rows(2)
    assert [(r["endpoint"], r["status_code"], r["error"], r["stream"]) for r in rows] == [
        ("/v1/responses", 200, None, 0), ("/v1/responses", 200, None, 1),
    ]  # fmt: skip
    assert [r["response"] for r in rows] == [whole.output_text, streamed]
    assert all(r["prompt"] == "Say hello." and r["completion_tokens"] for r in rows)
    assert whole.usage is not None and rows[0]["prompt_tokens"] == whole.usage.input_tokens


async def test_messages_api_relayed_and_recorded(make_proxy: MakeProxy, chat_server: LlamaServer) -> None:
    """The Anthropic SDK's Messages API, whole and streamed, through the proxy to the real server."""
    proxy = await make_proxy(chat_server.url, backend_type="openai")
    client = anthropic.AsyncAnthropic(base_url=proxy.url, api_key="unused", max_retries=0)
    messages: Any = [{"role": "user", "content": "Say hello."}]
    whole = await client.messages.create(
        model=MODEL, max_tokens=8, messages=messages, extra_body={"temperature": 0}
    )
    [block] = whole.content
    assert block.type == "text" and block.text and whole.stop_reason in ("end_turn", "max_tokens")
    async with client.messages.stream(
        model=MODEL, max_tokens=8, messages=messages, extra_body={"temperature": 0}
    ) as stream:
        streamed = "".join([text async for text in stream.text_stream])
        final = await stream.get_final_message()
    assert final.stop_reason in ("end_turn", "max_tokens")
    rows = await proxy.wait_rows(2)
    assert [(r["endpoint"], r["status_code"], r["error"], r["stream"]) for r in rows] == [
        ("/v1/messages", 200, None, 0), ("/v1/messages", 200, None, 1),
    ]  # fmt: skip
    assert [r["response"] for r in rows] == [block.text, streamed]
    assert [r["done_reason"] for r in rows] == [whole.stop_reason, final.stop_reason]
    assert rows[1]["completion_tokens"] == final.usage.output_tokens and rows[1]["ttft_ms"] is not None
