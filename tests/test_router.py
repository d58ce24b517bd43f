"""Many backends behind one proxy, with the test doubles: one catalog, routing, failover, breaker, fallback.

Real servers on 127.0.0.1 (the llama-server and Ollama doubles replay the real
wire formats), the real ``ollama`` client and ``openai`` SDK, the real SQLite
file, the real CLI reading it back. tests/test_e2e_backends.py does the same
with real llama-servers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import ollama
import openai
import pytest
from aiohttp import web
from openai import AsyncOpenAI

from llm_proxy.cli.main import main

from .conftest import MakeProxy, Proxy, present
from .llama_double import LlamaServerDouble, sse_events
from .ollama_double import OllamaDouble
from .process import free_port

USER: Any = [{"role": "user", "content": "hi"}]
# What the llama-server double's recorded stream says.
LLAMA = "".join(
    (c.get("delta") or {}).get("content") or ""
    for e in sse_events("chat-stream")
    for c in e.get("choices") or []
)
Doubles = Callable[[], Any]


@pytest.fixture
async def llama_doubles(aiohttp_server: Any) -> Callable[[], Any]:
    """Start another llama-server double on each call: (double, its URL)."""

    async def start() -> tuple[LlamaServerDouble, str]:
        double = LlamaServerDouble()
        server = await aiohttp_server(double.app(), host="127.0.0.1")
        return double, str(server.make_url("")).rstrip("/")

    return start


def llama(endpoint: str, **extra: Any) -> dict[str, Any]:
    return {"type": "openai", "endpoint": endpoint, **extra}


def tries(row: dict[str, Any]) -> list[tuple[str, int | None]]:
    """The row's attempts as (backend, status) pairs."""
    return [(a["backend"], a["status"]) for a in json.loads(row["attempts"])]


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    for _ in range(int(within / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def chat(proxy: Proxy, model: str) -> str:
    answer = await ollama.AsyncClient(host=proxy.url).chat(model=model, messages=USER)
    return present(answer.message.content)


async def test_one_catalog_and_each_model_answered_by_its_backend(
    make_proxy: MakeProxy,
    llama_doubles: Doubles,
    ollama_double: tuple[OllamaDouble, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    (gpu, gpu_url), (spare, spare_url) = await llama_doubles(), await llama_doubles()
    proxy = await make_proxy(
        gpu_url,
        backends={"gpu": llama(gpu_url), "laptop": {"type": "ollama", "endpoint": ollama_double[1]},
                  "spare": llama(spare_url)},
    )  # fmt: skip
    listed = await ollama.AsyncClient(host=proxy.url).list()
    # smollm2 is on both llama-servers: listed once.
    assert sorted(m.model or "" for m in listed.models) == [
        "llama3.2:latest",
        "nomic-embed-text:latest",
        "smollm2:latest",
    ]
    async with AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0) as sdk:
        ids = sorted([m.id async for m in sdk.models.list()])
        assert ids == ["llama3.2:latest", "nomic-embed-text:latest", "smollm2"]
        completion = await sdk.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content == "The sky is blue."
    assert await chat(proxy, "smollm2") == LLAMA  # the first llama-server in the list
    assert await chat(proxy, "llama3.2") == "The sky is blue."  # only the laptop serves it
    assert [p for p, _ in gpu.requests] == ["/v1/chat/completions"] and spare.requests == []
    rows = await proxy.wait_rows(5)
    chats = [r for r in rows if r["endpoint"] in ("/api/chat", "/v1/chat/completions")]
    assert [(r["model"], r["backend_name"], r["backend_type"]) for r in chats] == [
        ("llama3.2", "laptop", "ollama"), ("smollm2", "gpu", "openai"), ("llama3.2", "laptop", "ollama"),
    ]  # fmt: skip
    assert tries(chats[1]) == [("gpu", 200)]
    # A model nobody lists: each backend without serves patterns may still have it
    # (pulled a moment ago); none has, so 404 in the client's shape.
    with pytest.raises(ollama.ResponseError) as caught:
        await chat(proxy, "made-up")
    assert caught.value.status_code == 404
    missing = (await proxy.wait_rows(6))[5]
    assert tries(missing) == [("gpu", 404), ("laptop", 404), ("spare", 404)]
    assert (missing["status_code"], missing["backend_name"]) == (404, "spare")
    # The audit CLI reads the backend back.
    assert main(["stats", "--db", str(proxy.db), "--by", "backend", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    by_backend = {s["backend"]: s["requests"] for s in stats["by_backend"]}
    assert by_backend["gpu"] == 1 and by_backend["laptop"] == 2 and "by_model" not in stats


async def test_failover_before_the_first_byte_then_the_breaker_skips_and_the_probe_restores(
    make_proxy: MakeProxy, llama_doubles: Doubles, capsys: pytest.CaptureFixture[str]
) -> None:
    (first, first_url), (_, second_url) = await llama_doubles(), await llama_doubles()
    first.loading = True  # llama-server's 503 "Loading model"
    proxy = await make_proxy(
        first_url,
        # serves: first's list is not there while it loads; the config says it serves smollm2.
        backends=[
            {"name": "first", **llama(first_url, serves=["smollm2"])},
            {"name": "second", **llama(second_url, serves=["smol*"])},
        ],
        routing={"breaker_failures": 2, "probe_interval": 0.1},
    )
    assert await chat(proxy, "smollm2") == LLAMA
    rows = await proxy.wait_rows(1)
    assert rows[0]["status_code"] == 200 and rows[0]["backend_name"] == "second"
    assert tries(rows[0]) == [("first", 503), ("second", 200)]
    assert "model is loading" in json.loads(rows[0]["attempts"])[0]["error"]
    # logs show names the backend and both tries.
    assert main(["logs", "show", str(rows[0]["id"]), "--db", str(proxy.db)]) == 0
    shown = capsys.readouterr().out
    assert "backend:    second  (tried: first 503" in shown and "second 200" in shown
    assert await chat(proxy, "smollm2") == LLAMA  # the second failure in a row opens the breaker
    assert await chat(proxy, "smollm2") == LLAMA
    rows = await proxy.wait_rows(3)
    assert tries(rows[2]) == [("second", 200)]  # skipped while open: no wait on it
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxy.url}/health") as resp:
            health = await resp.json()
        assert resp.status == 200  # one backend answers
        states = {b["name"]: (b["state"], b["reachable"]) for b in health["backends"]}
        assert states == {"first": ("open", False), "second": ("closed", True)}
        async with http.get(f"{proxy.url}/metrics") as resp:
            metrics = await resp.text()
        assert 'llm_proxy_backend_up{backend="first"} 0.0' in metrics
        assert 'llm_proxy_backend_attempts_total{backend="first",status="503"} 2.0' in metrics
        assert 'llm_proxy_backend_requests_total{backend="second"} 3.0' in metrics
        first.loading = False  # the model is loaded: the probe finds it
        for _ in range(250):  # bounded: 5 s
            async with http.get(f"{proxy.url}/health/ready") as resp:
                ready = await resp.json()
            if ready["backends"]["first"] == "closed":
                break
            await asyncio.sleep(0.02)
        assert ready["backends"] == {"first": "closed", "second": "closed"}
    assert await chat(proxy, "smollm2") == LLAMA
    rows = await proxy.wait_rows(4)
    assert tries(rows[3]) == [("first", 200)]


async def test_an_unreachable_backend_fails_over_through_both_apis(
    make_proxy: MakeProxy, llama_doubles: Doubles
) -> None:
    live, live_url = await llama_doubles()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proxy = await make_proxy(
        live_url,
        backends={"dead": llama(dead, serves=["smollm2"]), "live": llama(live_url, serves=["smollm2"])},
        routing={"breaker_failures": 5},
    )
    async with AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0) as sdk:
        stream = await sdk.chat.completions.create(model="smollm2", messages=USER, stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == LLAMA
    assert await chat(proxy, "smollm2") == LLAMA
    rows = await proxy.wait_rows(2)
    for row in rows:
        assert (row["status_code"], row["backend_name"]) == (200, "live")
        assert tries(row) == [("dead", 502), ("live", 200)]
        assert "unreachable" in json.loads(row["attempts"])[0]["error"]
    assert [p for p, _ in live.requests] == ["/v1/chat/completions"] * 2


async def test_a_stream_that_broke_after_it_started_is_ended_not_retried(
    make_proxy: MakeProxy, llama_doubles: Doubles
) -> None:
    (first, first_url), (second, second_url) = await llama_doubles(), await llama_doubles()
    first.scenario = "mid-stream-error"
    proxy = await make_proxy(first_url, backends={"first": llama(first_url), "second": llama(second_url)})
    parts = []
    with pytest.raises(ollama.ResponseError) as caught:
        async for chunk in await ollama.AsyncClient(host=proxy.url).chat(
            model="smollm2", messages=USER, stream=True
        ):
            parts.append(chunk.message.content)
    assert parts and "out of memory" in str(caught.value.error)
    assert second.requests == []  # never retried: the client had its first bytes
    (row,) = await proxy.wait_rows(1)
    assert (row["status_code"], row["backend_name"]) == (500, "first")
    assert tries(row) == [("first", 200)] and "out of memory" in row["error"]


async def test_a_request_over_the_context_is_retried_once_on_the_fallback_model(
    make_proxy: MakeProxy, llama_doubles: Doubles
) -> None:
    (small, small_url), (big, big_url) = await llama_doubles(), await llama_doubles()
    proxy = await make_proxy(
        small_url,
        backends={"small": llama(small_url, serves=["tiny"]), "big": llama(big_url, serves=["roomy"])},
        models={"mappings": {"tiny": "smollm2", "roomy": "smollm2"}, "fallback": {"tiny": "roomy"}},
    )
    small.scenario = "error-context-exceeded"
    assert await chat(proxy, "tiny") == LLAMA
    small.scenario = "error-context-exceeded"
    async with AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0) as sdk:
        completion = await sdk.chat.completions.create(model="tiny", messages=USER)
        assert completion.choices[0].message.content
    rows = await proxy.wait_rows(2)
    for row in rows:
        assert (row["status_code"], row["model"], row["backend_name"]) == (200, "tiny", "big")
        attempts = json.loads(row["attempts"])
        assert [(a["backend"], a["status"], a.get("model")) for a in attempts] == [
            ("small", 400, None), ("big", 200, "roomy"),
        ]  # fmt: skip
        assert "exceeds the available context size" in attempts[0]["error"]
    # Once only: the fallback over its context too is the client's 400.
    small.scenario = big.scenario = "error-context-exceeded"
    with pytest.raises(ollama.ResponseError) as caught:
        await chat(proxy, "tiny")
    assert caught.value.status_code == 400 and "context size" in str(caught.value.error)
    # Without a fallback the refusal is the client's, as before.
    big.scenario = "error-context-exceeded"
    async with AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0) as sdk:
        with pytest.raises(openai.BadRequestError):
            await sdk.chat.completions.create(model="roomy", messages=USER)
    rows = await proxy.wait_rows(4)
    assert tries(rows[3]) == [("big", 400)] and rows[3]["status_code"] == 400


async def test_a_full_queue_moves_the_request_to_the_next_backend(
    make_proxy: MakeProxy, llama_doubles: Doubles
) -> None:
    (first, first_url), (_, second_url) = await llama_doubles(), await llama_doubles()
    first.hold = asyncio.Event()
    proxy = await make_proxy(
        first_url,
        backends={"first": llama(first_url, max_concurrency=1, max_queue=0), "second": llama(second_url)},
    )
    held = asyncio.create_task(chat(proxy, "smollm2"))
    await until(lambda: bool(first.requests))
    assert await chat(proxy, "smollm2") == LLAMA  # first is busy: second answers at once
    first.hold.set()
    assert await held == LLAMA
    rows = await proxy.wait_rows(2)
    busy = next(r for r in rows if r["backend_name"] == "second")
    assert tries(busy) == [("first", 503), ("second", 200)]
    assert "backends.first.max_concurrency" in json.loads(busy["attempts"])[0]["error"]


async def test_a_backend_that_never_answers_its_list_does_not_hold_up_the_catalog(
    make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str], aiohttp_server: Any
) -> None:
    stuck = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await stuck.wait()  # accepts the connection, never answers
        return web.json_response({"models": []})

    app = web.Application()
    app.router.add_get("/api/tags", hang)
    silent = str((await aiohttp_server(app, host="127.0.0.1")).make_url("")).rstrip("/")
    proxy = await make_proxy(
        ollama_double[1],
        backends=[
            {"name": "silent", "type": "ollama", "endpoint": silent, "timeout": 60},
            {"name": "laptop", "type": "ollama", "endpoint": ollama_double[1]},
        ],
    )
    client = ollama.AsyncClient(host=proxy.url)
    waits = []
    for _ in range(3):  # Home Assistant's poll, with its 5 s timeout
        started = asyncio.get_running_loop().time()
        listed = await client.list()
        waits.append(asyncio.get_running_loop().time() - started)
        assert [m.model for m in listed.models] == ["llama3.2:latest", "nomic-embed-text:latest"]
    # At most the first poll waits for the silent one (bounded); the next ones never do.
    assert waits[0] < 4.5 and max(waits[1:]) < 1.0
    # And requests for the laptop's models go to the laptop.
    assert await chat(proxy, "llama3.2") == "The sky is blue."
    rows = await proxy.wait_rows(4)
    assert tries(rows[3]) == [("laptop", 200)]
    stuck.set()


async def test_least_busy_sends_the_next_request_to_the_idle_backend(
    make_proxy: MakeProxy, llama_doubles: Doubles
) -> None:
    (first, first_url), (_, second_url) = await llama_doubles(), await llama_doubles()
    first.hold = asyncio.Event()
    proxy = await make_proxy(
        first_url,
        backends=[
            {"name": "first", **llama(first_url, serves=["smollm2"])},
            {"name": "second", **llama(second_url, serves=["smollm2"])},
        ],
        routing={"strategy": "least_busy"},
    )
    held = asyncio.create_task(chat(proxy, "smollm2"))
    await until(lambda: bool(first.requests))
    assert await chat(proxy, "smollm2") == LLAMA  # first is working on one: second is idle
    first.hold.set()
    assert await held == LLAMA
    rows = await proxy.wait_rows(2)
    assert sorted(r["backend_name"] for r in rows) == ["first", "second"]
    assert all(len(tries(r)) == 1 for r in rows)  # chosen, not failed over


# What Ollama (0.30 and later, truncate: false or a model whose runner refuses)
# answers for a prompt over num_ctx: llama.cpp's error, wrapped in Ollama's shape.
OLLAMA_OVER_CONTEXT = {
    "error": '{"error":{"code":400,"message":"request (351 tokens) exceeds the available context size '
    '(256 tokens), try increasing it","type":"exceed_context_size_error","n_prompt_tokens":351,"n_ctx":256}}'
}


async def test_ollamas_context_refusal_falls_back_too(
    make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str], aiohttp_server: Any
) -> None:
    refused: list[dict[str, Any]] = []

    async def too_long(request: web.Request) -> web.Response:
        refused.append(await request.json())
        return web.json_response(OLLAMA_OVER_CONTEXT, status=400)

    app = web.Application()
    app.router.add_post("/api/chat", too_long)
    small = str((await aiohttp_server(app, host="127.0.0.1")).make_url("")).rstrip("/")
    proxy = await make_proxy(
        ollama_double[1],
        backends=[
            {"name": "small", "type": "ollama", "endpoint": small, "serves": ["llama3.2:1b"]},
            {"name": "big", "type": "ollama", "endpoint": ollama_double[1], "serves": ["llama3.2*"]},
        ],
        models={"fallback": {"llama3.2:1b": "llama3.2"}},
    )
    assert await chat(proxy, "llama3.2:1b") == "The sky is blue."
    assert [b["model"] for b in refused] == ["llama3.2:1b"]
    assert ollama_double[0].requests[-1][1]["model"] == "llama3.2"  # type: ignore[index]
    (row,) = await proxy.wait_rows(1)
    assert (row["model"], row["backend_model"], row["backend_name"]) == ("llama3.2:1b", "llama3.2", "big")
    assert [(a["backend"], a["status"], a.get("model")) for a in json.loads(row["attempts"])] == [
        ("small", 400, None), ("big", 200, "llama3.2"),
    ]  # fmt: skip


async def test_each_backend_has_its_own_endpoint_and_api_key(
    make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str], aiohttp_server: Any
) -> None:
    home, home_url = ollama_double
    office = OllamaDouble()
    office_url = str((await aiohttp_server(office.app(), host="127.0.0.1")).make_url("")).rstrip("/")
    proxy = await make_proxy(
        home_url,
        backends=[
            {
                "name": "home",
                "type": "ollama",
                "endpoint": home_url,
                "api_key": "home-key",
                "serves": ["llama3.2"],
            },
            {"name": "office", "type": "ollama", "endpoint": office_url, "api_key": "office-key"},
        ],
    )
    assert await chat(proxy, "llama3.2") == "The sky is blue."
    embedded = await ollama.AsyncClient(host=proxy.url).embed(model="nomic-embed-text", input="a")
    assert len(embedded.embeddings) == 1
    assert home.authorizations == ["Bearer home-key"]  # the chat
    assert office.authorizations == ["Bearer office-key"]  # the embedding: only office lists it unpatterned
    rows = await proxy.wait_rows(2)
    assert [(r["endpoint"], r["backend_name"]) for r in rows] == [
        ("/api/chat", "home"),
        ("/api/embed", "office"),
    ]


async def test_every_backend_down_is_a_502_naming_the_last_and_health_says_why(make_proxy: MakeProxy) -> None:
    one, two = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    proxy = await make_proxy(
        one,
        backends=[
            {"name": "one", **llama(one, serves=["smollm2"])},
            {"name": "two", **llama(two, serves=["smol*"])},
        ],
    )
    with pytest.raises(ollama.ResponseError) as caught:
        await chat(proxy, "smollm2")
    assert caught.value.status_code == 502 and two.removeprefix("http://") in str(caught.value.error)
    (row,) = await proxy.wait_rows(1)
    assert (row["status_code"], row["backend_name"]) == (502, "two")
    assert tries(row) == [("one", 502), ("two", 502)]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxy.url}/health") as resp:
            health = await resp.json()
        assert resp.status == 503 and health["status"] == "unavailable"
        assert health["error"].startswith("one: ") and "; two: " in health["error"]
        async with http.get(f"{proxy.url}/health/ready") as resp:
            ready = await resp.json()
        assert resp.status == 503 and set(ready["backends"]) == {"one", "two"}
        assert all("unreachable" in why for why in ready["backends"].values())
