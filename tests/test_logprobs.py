"""Token log probabilities: Ollama's ``logprobs``/``top_logprobs`` to llama-server and back.

The backend chunks below are the shapes the real llama-server streams (recorded
from SmolLM2 with ``logprobs: true, top_logprobs: 2``); the end-to-end tests in
test_e2e_fidelity.py ask the real server.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import ollama
import pytest

from llm_proxy.translate.ndjson import ChunkAssembler
from llm_proxy.translate.requests import chat_request, generate_request
from llm_proxy.translate.stream import StreamTranslator

from .conftest import Proxy

STAMP = "2026-12-01T00:00:00Z"


def _entry(token: str, logprob: float, alternatives: list[tuple[str, float]]) -> dict[str, Any]:
    return {
        "id": 1,
        "token": token,
        "bytes": list(token.encode()),
        "logprob": logprob,
        "top_logprobs": [
            {"id": 2, "token": t, "bytes": list(t.encode()), "logprob": lp} for t, lp in alternatives
        ],
    }


HELLO = _entry("Hello", -0.54, [("Hello", -0.54), ("Hi", -2.39)])
BANG = _entry("!", -0.33, [("!", -0.33), (".", -1.8)])


def _chunk(text: str, entry: dict[str, Any]) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "logprobs": {"content": [entry]}}]}


@pytest.mark.parametrize(
    ("body", "wanted"),
    [
        ({"logprobs": True, "top_logprobs": 3}, {"logprobs": True, "top_logprobs": 3}),
        # llama-server sends no logprobs at all for 0 alternatives: one is asked for.
        ({"logprobs": True}, {"logprobs": True, "top_logprobs": 1}),
        ({"logprobs": False, "top_logprobs": 5}, {}),
        ({"top_logprobs": 5}, {}),
    ],
)
def test_chat_and_generate_ask_the_server_for_logprobs(body: dict[str, Any], wanted: dict[str, Any]) -> None:
    chat = chat_request({"messages": [{"role": "user", "content": "Hi"}], **body}, "m", {})
    _, generate = generate_request({"prompt": "Hi", **body}, "m", {})
    for sent in (chat, generate):
        assert {k: sent[k] for k in ("logprobs", "top_logprobs") if k in sent} == wanted


def test_a_raw_prompt_asks_with_the_completions_count() -> None:
    _, sent = generate_request({"prompt": "Hi", "raw": True, "logprobs": True, "top_logprobs": 4}, "m", {})
    assert sent["logprobs"] == 4 and "top_logprobs" not in sent


def test_each_chunk_carries_its_tokens_logprobs_and_the_fold_joins_them() -> None:
    translator = StreamTranslator("chat", "m", lambda: STAMP, logprobs=1)
    chunks = translator.feed(_chunk("Hello", HELLO)) + translator.feed(_chunk("!", BANG))
    assert [c["logprobs"] for c in chunks] == [
        [{"token": "Hello", "logprob": -0.54, "bytes": [72, 101, 108, 108, 111],
          "top_logprobs": [{"token": "Hello", "logprob": -0.54, "bytes": [72, 101, 108, 108, 111]}]}],
        [{"token": "!", "logprob": -0.33, "bytes": [33],
          "top_logprobs": [{"token": "!", "logprob": -0.33, "bytes": [33]}]}],
    ]  # fmt: skip
    final = translator.finish(1000)
    assembler = ChunkAssembler(logprobs=True)
    for chunk in chunks + final:
        assembler.feed(chunk)
    folded = assembler.result()
    assert folded is not None and folded["message"]["content"] == "Hello!"
    assert [p["token"] for p in folded["logprobs"]] == ["Hello", "!"]
    # The client's own types read it.
    parsed = ollama.ChatResponse.model_validate(folded)
    assert parsed.logprobs is not None and parsed.logprobs[1].top_logprobs is not None
    assert parsed.logprobs[1].top_logprobs[0].token == "!"


def test_no_alternatives_wanted_leaves_them_out_and_no_logprobs_wanted_leaves_all_out() -> None:
    none_top = StreamTranslator("generate", "m", lambda: STAMP, logprobs=0).feed(_chunk("Hello", HELLO))
    assert none_top[0]["logprobs"] == [
        {"token": "Hello", "logprob": -0.54, "bytes": [72, 101, 108, 108, 111]}
    ]
    unasked = StreamTranslator("generate", "m", lambda: STAMP).feed(_chunk("Hello", HELLO))
    assert "logprobs" not in unasked[0] and unasked[0]["response"] == "Hello"


def test_entries_of_another_shape_are_skipped_not_fatal() -> None:
    odd = {"choices": [{"delta": {"content": "x"}, "logprobs": {"content": [{"token": 3}, "no", HELLO]}}]}
    [chunk] = StreamTranslator("chat", "m", lambda: STAMP, logprobs=0).feed(odd)
    assert [p["token"] for p in chunk["logprobs"]] == ["Hello"]


@pytest.mark.parametrize("value", [21, -1, "3", 2.5, True])
async def test_top_logprobs_out_of_range_is_a_400_in_ollamas_shape(oproxy: Proxy, value: Any) -> None:
    body = {"model": "smollm2", "messages": [], "logprobs": True, "top_logprobs": value}
    async with aiohttp.ClientSession() as http, http.post(f"{oproxy.url}/api/chat", json=body) as resp:
        assert resp.status == 400
        answer = await resp.json()
    assert set(answer) == {"error"} and "top_logprobs" in answer["error"]
    [row] = await oproxy.wait_rows(1)
    assert row["status_code"] == 400 and row["error"] == answer["error"]
