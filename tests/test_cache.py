"""The answer cache: a repeated deterministic request is answered as the miss was, without the backend.

Through the real ``ollama`` client and the real ``openai`` SDK in front of the
llama-server double (and the Ollama double for the pass-through backend): the
double counts what reached it, and each hit is compared with its miss byte for
byte, HTTP chunk by HTTP chunk.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import orjson
import pytest
from openai import AsyncOpenAI
from yarl import URL

from llm_proxy import config as config_mod
from llm_proxy.backends.base import Whole
from llm_proxy.cache.answers import AnswerCache
from llm_proxy.server import reload

from .conftest import MakeProxy, Proxy
from .llama_double import LlamaServerDouble
from .ollama_double import OllamaDouble
from .process import serve

USER: Any = [{"role": "user", "content": "Say hello in five words."}]
CACHE = {"enabled": True}


def chats(double: LlamaServerDouble | OllamaDouble) -> int:
    """How many generating requests reached the double."""
    return sum(1 for path, _ in double.requests if path in ("/v1/chat/completions", "/api/chat"))


async def raw_chunks(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], list[bytes]]:
    """Status, headers and the body's HTTP chunks (one per write the proxy made), read off the socket.

    The chunked encoding keeps each write's bounds whatever TCP does with
    them, so two answers with the same chunks were written the same way.
    """
    target = URL(url)
    reader, writer = await asyncio.open_connection(target.host, target.port)
    payload = orjson.dumps(body)
    writer.write(
        f"POST {target.path} HTTP/1.1\r\nHost: {target.host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
        + payload
    )
    raw = await reader.read(-1)
    writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    if headers.get("Transfer-Encoding") != "chunked":
        return int(status_line.split()[1]), headers, [rest]
    chunks = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        chunks.append(rest[:size])
        rest = rest[size + 2 :]
    return int(status_line.split()[1]), headers, chunks


@pytest.fixture
async def cproxy(make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]) -> Proxy:
    """The openai backend in front of the llama-server double, with the cache on."""
    return await make_proxy(llama_double[1], backend_type="openai", cache=CACHE)


async def test_repeated_temperature_0_chat_through_ollama_is_answered_from_the_cache(
    cproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    client = ollama.AsyncClient(host=cproxy.url)
    options = {"temperature": 0}
    first = [c.model_dump() async for c in await client.chat("smollm2", USER, stream=True, options=options)]
    second = [c.model_dump() async for c in await client.chat("smollm2", USER, stream=True, options=options)]
    assert chats(llama_double[0]) == 1  # the backend saw one request
    assert second == first and len(first) > 3  # timestamps and durations included: the miss's
    whole = await client.chat("smollm2", USER, stream=False, options=options)
    again = await client.chat("smollm2", USER, stream=False, options=options)
    assert again.model_dump() == whole.model_dump() and chats(llama_double[0]) == 2
    rows = await cproxy.wait_rows(4)
    assert [r["cache_hit"] for r in rows] == [0, 1, 0, 1]
    miss, hit = rows[0], rows[1]
    assert hit["response"] == miss["response"] and hit["status_code"] == 200
    for tokens in ("prompt_tokens", "completion_tokens"):
        assert hit[tokens] == miss[tokens]
    assert hit["cache_saved_tokens"] == miss["prompt_tokens"] + miss["completion_tokens"]
    assert hit["cache_saved_ms"] is not None and hit["cache_saved_ms"] <= miss["latency_ms"]
    assert hit["backend_request"] is None and miss["backend_request"] is not None  # nothing was sent
    assert miss["cache_saved_ms"] is None


async def test_a_hit_is_byte_identical_chunk_for_chunk_in_both_apis(
    cproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        (f"{cproxy.url}/api/chat", {"model": "smollm2", "messages": USER, "options": {"seed": 7}}),
        (f"{cproxy.url}/api/chat", {"model": "smollm2", "messages": USER, "stream": False,
                                    "options": {"temperature": 0}}),
        (f"{cproxy.url}/v1/chat/completions", {"model": "smollm2", "messages": USER, "stream": True,
                                               "temperature": 0}),
        (f"{cproxy.url}/v1/chat/completions", {"model": "smollm2", "messages": USER, "seed": 1}),
    ]  # fmt: skip
    llama_double[0].pace = 0.005  # a model generating token by token: the miss comes in many writes
    for n, (url, body) in enumerate(cases, 1):
        status, headers, miss = await raw_chunks(url, body)
        assert status == 200 and headers["X-Cache"] == "miss"
        status, headers, hit = await raw_chunks(url, body)
        assert status == 200 and headers["X-Cache"] == "hit", url
        assert hit == miss, url
        assert chats(llama_double[0]) == n
    # The streams were streamed: many chunks, replayed as many.
    assert len((await raw_chunks(*cases[0]))[2]) > 3


async def test_openai_sdk_gets_the_same_answer_from_the_cache(
    cproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    async with AsyncOpenAI(base_url=f"{cproxy.url}/v1", api_key="unused", max_retries=0) as client:
        streams = []
        for _ in range(2):
            stream = await client.chat.completions.create(
                model="smollm2", messages=USER, stream=True, temperature=0
            )
            streams.append([chunk.model_dump() async for chunk in stream])
        assert streams[0] == streams[1] and all(c["usage"] is None for c in streams[1])  # usage kept back
        # A client that asks for usage shares the kept answer and gets its usage chunk.
        stream = await client.chat.completions.create(
            model="smollm2", messages=USER, stream=True, temperature=0,
            stream_options={"include_usage": True},
        )  # fmt: skip
        with_usage = [chunk.model_dump() async for chunk in stream]
        assert with_usage[:-1] == streams[0] and with_usage[-1]["usage"]["completion_tokens"] > 0
        raw = await client.chat.completions.with_raw_response.create(
            model="smollm2", messages=USER, temperature=0
        )
        again = await client.chat.completions.with_raw_response.create(
            model="smollm2", messages=USER, temperature=0
        )
        assert (raw.headers["x-cache"], again.headers["x-cache"]) == ("miss", "hit")
        assert again.parse().model_dump() == raw.parse().model_dump()
    assert chats(llama_double[0]) == 2
    rows = await cproxy.wait_rows(5)
    assert [(r["api"], r["cache_hit"]) for r in rows] == [("openai", v) for v in (0, 1, 1, 0, 1)]


async def test_sampled_requests_are_not_cached(
    cproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    client = ollama.AsyncClient(host=cproxy.url)
    for _ in range(2):
        await client.chat("smollm2", USER, stream=False, options={"temperature": 0.8})
        await client.chat("smollm2", USER, stream=False)  # Ollama's default temperature samples too
    assert chats(llama_double[0]) == 4
    status, headers, _ = await raw_chunks(f"{cproxy.url}/api/chat", {"model": "smollm2", "messages": USER})
    assert status == 200 and "X-Cache" not in headers  # not considered at all
    rows = await cproxy.wait_rows(5)
    assert all(r["cache_hit"] is None for r in rows)


async def test_errors_are_never_cached(cproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]) -> None:
    double = llama_double[0]
    client = ollama.AsyncClient(host=cproxy.url)
    options = {"temperature": 0}
    for scenario in ("mid-stream-error", "error-context-exceeded", "eof"):
        double.scenario = scenario
        with pytest.raises(ollama.ResponseError):
            async for _ in await client.chat("smollm2", USER, stream=True, options=options):
                pass
    # An answer that did not end as an answer ends (no done line) was not kept either.
    assert chats(double) == 3
    chunks = [c async for c in await client.chat("smollm2", USER, stream=True, options=options)]
    assert chunks[-1].done and chats(double) == 4  # the backend answered: nothing bad was kept
    [c async for c in await client.chat("smollm2", USER, stream=True, options=options)]
    assert chats(double) == 4  # and the good answer was
    rows = await cproxy.wait_rows(5)
    assert [(r["status_code"] >= 400, r["cache_hit"]) for r in rows] == [
        (True, 0), (True, 0), (True, 0), (False, 0), (False, 1),
    ]  # fmt: skip


async def test_least_recently_used_answer_is_evicted_at_max_entries(
    make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    proxy = await make_proxy(llama_double[1], backend_type="openai", cache={**CACHE, "max_entries": 2})
    client = ollama.AsyncClient(host=proxy.url)

    async def ask(word: str) -> None:
        messages = [{"role": "user", "content": word}]
        await client.chat("smollm2", messages, stream=False, options={"temperature": 0})

    for word in ("one", "two", "one", "three"):  # "one" used again: "two" is the least recent
        await ask(word)
    assert chats(llama_double[0]) == 3
    await ask("one")
    assert chats(llama_double[0]) == 3  # still kept
    await ask("two")
    assert chats(llama_double[0]) == 4  # evicted, asked again
    assert len(proxy.app[reload.state.CACHE]) == 2


async def test_answers_are_bounded_by_bytes_too() -> None:
    config = config_mod.from_dict({"cache": {"enabled": True, "max_mb": 0.001}})  # 1048 bytes
    cache = AnswerCache(config.cache)
    for n in range(3):
        body = orjson.dumps({"n": n, "text": "x" * 300})
        assert cache.finish(bytes([n]), cache.record(Whole(200, "application/json", body)), True, 5, None)
    assert len(cache) == 2 and cache.bytes <= 1048 and cache.evictions == 1
    assert cache.get(bytes([0])) is None and cache.get(bytes([2])) is not None
    big = Whole(200, "application/json", b"x" * 2000)  # larger than the whole cache: relayed, not kept
    assert not cache.finish(b"big", cache.record(big), True, 5, None) and len(cache) == 2
    assert cache.recording.used == 0  # what was being recorded is given back
    # Answers being recorded at once share one budget of max_mb, however many there are.
    first, second = (cache.record(Whole(200, "application/json", b"y" * 600)) for _ in range(2))
    assert cache.recording.used == 664 and second.full and not first.full
    assert cache.finish(b"first", first, True, 5, None) and not cache.finish(b"second", second, True, 5, None)
    assert cache.recording.used == 0


async def test_a_stale_answer_is_not_served() -> None:
    now = [1000.0]
    cache = AnswerCache(config_mod.from_dict({"cache": {"enabled": True, "ttl": 60}}).cache, lambda: now[0])
    cache.finish(b"k", cache.record(Whole(200, "application/json", b"{}")), True, 5, None)
    now[0] += 59
    assert cache.get(b"k") is not None
    now[0] += 2
    assert cache.get(b"k") is None and len(cache) == 0


async def test_reload_that_changes_models_empties_the_cache(
    cproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    client = ollama.AsyncClient(host=cproxy.url)
    options = {"temperature": 0}
    await client.chat("smollm2", USER, stream=False, options=options)
    await client.chat("smollm2", USER, stream=False, options=options)
    assert chats(llama_double[0]) == 1
    running = cproxy.app[reload.state.LIVE].config
    reload.apply(cproxy.app, reload.merge(running, running)[0])  # nothing changed: answers stay
    await client.chat("smollm2", USER, stream=False, options=options)
    assert chats(llama_double[0]) == 1
    changed = config_mod.from_dict(
        {"backend": {"type": "openai", "endpoint": llama_double[1]}, "database": {"path": str(cproxy.db)},
         "cache": CACHE, "models": {"mappings": {"assistant": "smollm2"}}}
    )  # fmt: skip
    reload.apply(cproxy.app, reload.merge(running, changed)[0])
    await client.chat("smollm2", USER, stream=False, options=options)
    assert chats(llama_double[0]) == 2


async def test_always_cacheable_model_and_models_kept_out(
    make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    cache = {**CACHE, "models": {"smollm2": {"always_cacheable": True}}}
    proxy = await make_proxy(llama_double[1], backend_type="openai", cache=cache)
    client = ollama.AsyncClient(host=proxy.url)
    for _ in range(2):
        await client.chat("smollm2", USER, stream=False, options={"temperature": 0.8})
        await client.embed("smollm2", "kitchen light")
    assert chats(llama_double[0]) == 1
    assert sum(1 for path, _ in llama_double[0].requests if path == "/v1/embeddings") == 1
    other = await make_proxy(
        llama_double[1], backend_type="openai", cache={**CACHE, "models": {"smollm2": {"enabled": False}}}
    )
    for _ in range(2):
        await ollama.AsyncClient(host=other.url).chat("smollm2", USER, options={"temperature": 0})
    assert chats(llama_double[0]) == 3


async def test_pass_through_ollama_backend_hits_are_identical(
    make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str]
) -> None:
    proxy = await make_proxy(ollama_double[1], cache=CACHE, models={"mappings": {"llama2": "llama3.2"}})
    body = {"model": "llama2", "messages": USER, "options": {"temperature": 0}}
    _, first_headers, miss = await raw_chunks(f"{proxy.url}/api/chat", body)
    _, headers, hit = await raw_chunks(f"{proxy.url}/api/chat", body)
    assert (first_headers["X-Cache"], headers["X-Cache"]) == ("miss", "hit") and hit == miss
    # "stream": true said or left to Ollama's default is the same request.
    assert (await raw_chunks(f"{proxy.url}/api/chat", {**body, "stream": True}))[2] == miss
    assert chats(ollama_double[0]) == 1
    assert b'"model":"llama2"' in b"".join(hit)  # the client-side name, as the miss showed it


async def test_cache_is_off_by_default(oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]) -> None:
    client = ollama.AsyncClient(host=oproxy.url)
    for _ in range(2):
        await client.chat("smollm2", USER, stream=False, options={"temperature": 0})
    assert chats(llama_double[0]) == 2
    status, headers, _ = await raw_chunks(
        f"{oproxy.url}/api/chat", {"model": "smollm2", "messages": USER, "options": {"temperature": 0}}
    )
    assert status == 200 and "X-Cache" not in headers


def test_cache_settings_are_checked() -> None:
    with pytest.raises(config_mod.ConfigError, match=r"'cache\.max_entries' must be at least 1"):
        config_mod.from_dict({"cache": {"max_entries": 0}})
    with pytest.raises(config_mod.ConfigError, match=r"'cache\.models\.m\.always_cacheable' must be"):
        config_mod.from_dict({"cache": {"models": {"m": {"always_cacheable": "yes"}}}})
    with pytest.raises(config_mod.ConfigError, match=r"unknown key 'cache\.models\.m\.always'"):
        config_mod.from_dict({"cache": {"models": {"m": {"always": True}}}})


async def test_sighup_that_changes_models_empties_the_cache_of_a_running_proxy(
    tmp_path: Path, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    backend = {"type": "openai", "endpoint": llama_double[1]}
    body = {"model": "smollm2", "messages": USER, "stream": False, "options": {"temperature": 0}}
    async with serve(tmp_path, llama_double[1], backend=backend, cache=CACHE) as served:
        url = f"{served.url}/api/chat"
        assert [(await raw_chunks(url, body))[1]["X-Cache"] for _ in range(2)] == ["miss", "hit"]
        served.rewrite(lambda c: c.update(server={**c["server"], "log_messages": True}))
        served.proc.send_signal(signal.SIGHUP)
        await served.wait_log("config reloaded")
        assert (await raw_chunks(url, body))[1]["X-Cache"] == "hit"  # models unchanged: kept
        seen = len(served.stderr)
        served.rewrite(lambda c: c.update(models={"mappings": {"assistant": "smollm2"}}))
        served.proc.send_signal(signal.SIGHUP)
        assert "(dropped: 1)" in await served.wait_log("answer cache emptied", after=seen)
        assert (await raw_chunks(url, body))[1]["X-Cache"] == "miss"
        assert await served.stop() == 0
    assert chats(llama_double[0]) == 2


async def test_a_hit_takes_no_backend_slot(
    make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    proxy = await make_proxy(
        llama_double[1], backend_type="openai", cache=CACHE, backend={"max_concurrency": 1, "max_queue": 0}
    )
    client = ollama.AsyncClient(host=proxy.url)
    await client.chat("smollm2", USER, stream=False, options={"temperature": 0})
    double = llama_double[0]
    double.hold = asyncio.Event()
    busy = asyncio.create_task(client.chat("smollm2", [{"role": "user", "content": "long"}], stream=False))
    for _ in range(500):  # bounded: 5 s for the slot to be taken, its stream held open
        if chats(double) == 2:
            break
        await asyncio.sleep(0.01)
    with pytest.raises(ollama.ResponseError) as refused:  # a miss finds the backend busy...
        await client.chat("smollm2", [{"role": "user", "content": "other"}], options={"temperature": 0})
    assert refused.value.status_code == 503
    hit = await client.chat("smollm2", USER, stream=False, options={"temperature": 0})  # ...a hit does not
    assert hit.done
    double.hold.set()
    assert (await busy).done


async def test_cache_metrics(cproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]) -> None:
    client = ollama.AsyncClient(host=cproxy.url)
    for prompt in ("a", "a", "b", "a"):
        await client.chat("smollm2", [{"role": "user", "content": prompt}], options={"temperature": 0})
    await client.chat("smollm2", USER, stream=False)  # not considered: counted nowhere
    async with aiohttp.ClientSession() as http, http.get(f"{cproxy.url}/metrics") as resp:
        text = await resp.text()
    cache = cproxy.app[reload.state.CACHE]
    assert "llm_proxy_cache_hits_total 2.0" in text and "llm_proxy_cache_misses_total 2.0" in text
    assert "llm_proxy_cache_stored_total 2.0" in text and "llm_proxy_cache_entries 2.0" in text
    assert f"llm_proxy_cache_bytes {float(cache.bytes)}" in text and cache.bytes > 0
    assert "llm_proxy_cache_evictions_total 0.0" in text
