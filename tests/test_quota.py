"""Per-key quotas (auth.keys[].quota) through the real clients, and across a real restart.

The llama-server double's recorded stream reports 38 prompt and 12 answer
tokens: 50 per chat, which the quotas below are sized by.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import openai
import pytest
from openai import AsyncOpenAI

from llm_proxy import config as config_mod
from llm_proxy.audit.exchange import Exchange
from llm_proxy.errors import TooManyRequests
from llm_proxy.server.quota import Quotas

from .conftest import MakeProxy
from .llama_double import LlamaServerDouble
from .process import serve
from .test_audit_cli import run
from .trail import Trail

USER: Any = [{"role": "user", "content": "Say hello in five words."}]
PER_CHAT = 50  # tokens the double reports for one chat
RESETS = re.compile(r"it resets at \d{4}-\d\d-\d\dT00:00:00Z \(in (\d+h \d+m|\d+m|\d+s)\)$")


def keys(**quotas: dict[str, Any]) -> dict[str, Any]:
    """auth.keys: one per name, its key the name reversed, with the given quota."""
    return {"keys": [{"name": n, "key": n[::-1], "quota": q} for n, q in quotas.items()]}


def client(proxy_url: str, name: str) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=proxy_url, headers={"Authorization": f"Bearer {name[::-1]}"})


def sdk(proxy_url: str, name: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{proxy_url}/v1", api_key=name[::-1], max_retries=0)


def chats(double: LlamaServerDouble) -> int:
    return sum(1 for path, _ in double.requests if path == "/v1/chat/completions")


async def test_a_key_out_of_tokens_gets_429_in_both_shapes_and_other_keys_go_on(
    make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    auth = keys(home={"tokens_per_day": PER_CHAT + 10}, laptop={})
    proxy = await make_proxy(llama_double[1], backend_type="openai", auth=auth)
    home = client(proxy.url, "home")
    await home.chat("smollm2", USER)  # 50 of 60
    await home.chat("smollm2", USER)  # admitted under the limit: 100 of 60 now
    with pytest.raises(ollama.ResponseError) as caught:
        await home.chat("smollm2", USER)
    assert caught.value.status_code == 429
    message = caught.value.error
    assert message.startswith(
        "API key 'home' is over its quota of 60 tokens per day (tokens_per_day: 100 used); "
    )
    assert RESETS.search(message), message
    async with sdk(proxy.url, "home") as oa:
        with pytest.raises(openai.RateLimitError) as refused:
            await oa.chat.completions.create(model="smollm2", messages=USER)
    assert refused.value.status_code == 429
    error = refused.value.body
    assert isinstance(error, dict) and error["message"] == message and error["code"] == 429
    assert 0 < int(refused.value.response.headers["Retry-After"]) <= 86400
    # Another key is unaffected, in both APIs.
    await client(proxy.url, "laptop").chat("smollm2", USER)
    async with sdk(proxy.url, "laptop") as oa:
        await oa.chat.completions.create(model="smollm2", messages=USER)
    assert chats(llama_double[0]) == 4
    rows = await proxy.wait_rows(6)
    assert [(r["key_name"], r["status_code"]) for r in rows] == [
        ("home", 200), ("home", 200), ("home", 429), ("home", 429), ("laptop", 200), ("laptop", 200),
    ]  # fmt: skip
    assert rows[2]["error"] == message


async def test_requests_per_day_counts_answers_and_those_in_flight(
    make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    proxy = await make_proxy(llama_double[1], backend_type="openai", auth=keys(home={"requests_per_day": 2}))
    home = client(proxy.url, "home")
    llama_double[0].scenario = "error-context-exceeded"  # an error is not charged
    with pytest.raises(ollama.ResponseError):
        await home.chat("smollm2", USER)
    await home.chat("smollm2", USER)
    await home.list()  # listing models makes the backend do no work: not counted
    await home.chat("smollm2", USER)
    with pytest.raises(ollama.ResponseError) as caught:
        await home.chat("smollm2", USER)
    assert caught.value.status_code == 429
    assert "quota of 2 requests per day (requests_per_day: 2 used)" in caught.value.error


async def test_a_model_the_key_may_not_use_is_403_with_a_row(
    make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    proxy = await make_proxy(
        llama_double[1], backend_type="openai", auth=keys(home={"models": ["assist*"]}),
        models={"mappings": {"assistant": "smollm2"}},
    )  # fmt: skip
    home = client(proxy.url, "home")
    reply = await home.chat("assistant", USER)  # allowed by the glob
    assert reply.message.content
    with pytest.raises(ollama.ResponseError) as caught:
        await home.chat("smollm2", USER)
    assert caught.value.status_code == 403
    assert caught.value.error == "API key 'home' may not use model 'smollm2': its quota allows assist*"
    async with sdk(proxy.url, "home") as oa:
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await oa.chat.completions.create(model="smollm2", messages=USER)
    assert isinstance(refused.value.body, dict) and refused.value.body["type"] == "permission_error"
    assert chats(llama_double[0]) == 1  # nothing refused reached the backend
    rows = await proxy.wait_rows(3)
    assert [(r["endpoint"], r["model"], r["key_name"], r["status_code"]) for r in rows] == [
        ("/api/chat", "assistant", "home", 200),
        ("/api/chat", "smollm2", "home", 403),
        ("/v1/chat/completions", "smollm2", "home", 403),
    ]
    assert rows[1]["error"] == caught.value.error


async def test_answers_from_the_cache_cost_no_tokens(
    make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    proxy = await make_proxy(
        llama_double[1], backend_type="openai", auth=keys(home={"tokens_per_day": PER_CHAT + 1}),
        cache={"enabled": True},
    )  # fmt: skip
    home = client(proxy.url, "home")
    for _ in range(4):  # one miss, three hits: 50 tokens
        await home.chat("smollm2", USER, options={"temperature": 0})
    await home.chat("smollm2", [{"role": "user", "content": "again"}], options={"temperature": 0})
    with pytest.raises(ollama.ResponseError) as caught:
        await home.chat("smollm2", USER, options={"temperature": 0})
    assert caught.value.status_code == 429 and "(tokens_per_day: 100 used)" in caught.value.error


async def test_a_restart_keeps_the_count(
    tmp_path: Path, llama_double: tuple[LlamaServerDouble, str], trail: Trail
) -> None:
    """On either store: the count is read back from the trail at start-up."""
    backend = {"type": "openai", "endpoint": llama_double[1]}
    auth = keys(home={"tokens_per_day": PER_CHAT, "requests_per_day": 5}, laptop={"requests_per_day": 1})
    database = trail.database()
    async with serve(tmp_path, llama_double[1], backend=backend, auth=auth, database=database) as served:
        await client(served.url, "home").chat("smollm2", USER)
        with pytest.raises(ollama.ResponseError) as before:
            await client(served.url, "home").chat("smollm2", USER)
        assert before.value.status_code == 429
        assert await served.stop() == 0
    async with serve(tmp_path, llama_double[1], backend=backend, auth=auth, database=database) as served:
        with pytest.raises(ollama.ResponseError) as after:
            await client(served.url, "home").chat("smollm2", USER)
        assert after.value.status_code == 429 and "(tokens_per_day: 50 used)" in after.value.error
        await client(served.url, "laptop").chat("smollm2", USER)  # its own count: it had none
        auth_header = {"Authorization": "Bearer emoh"}
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{served.url}/metrics", headers=auth_header) as resp,
        ):
            text = await resp.text()
        assert 'llm_proxy_quota_tokens_used{key="home"} 50.0' in text
        assert 'llm_proxy_quota_requests_used{key="laptop"} 1.0' in text
        assert 'llm_proxy_quota_refused_total{key="home",limit="tokens_per_day"} 1.0' in text
        assert await served.stop() == 0
    assert chats(llama_double[0]) == 2
    rows = trail.rows(4)
    assert [(r["key_name"], r["status_code"]) for r in rows] == [
        ("home", 200), ("home", 429), ("home", 429), ("laptop", 200),
    ]  # fmt: skip


async def test_quota_settings_are_checked() -> None:
    with pytest.raises(config_mod.ConfigError, match=r"'auth\.keys\[0\]\.quota\.tokens_per_day' must be 0"):
        config_mod.from_dict({"auth": keys(home={"tokens_per_day": -1})})
    with pytest.raises(config_mod.ConfigError, match=r"unknown key 'auth\.keys\[0\]\.quota\.tokens'"):
        config_mod.from_dict({"auth": keys(home={"tokens": 5})})
    with pytest.raises(config_mod.ConfigError, match=r"'auth\.keys\[0\]\.quota\.models' must be a list"):
        config_mod.from_dict({"auth": keys(home={"models": "qwen*"})})


async def test_stats_by_key_and_the_cache_hit_rate(
    make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str], capsys: pytest.CaptureFixture[str]
) -> None:
    proxy = await make_proxy(
        llama_double[1], backend_type="openai", auth=keys(home={"requests_per_day": 3}, laptop={}),
        cache={"enabled": True},
    )  # fmt: skip
    home, laptop = client(proxy.url, "home"), client(proxy.url, "laptop")
    for _ in range(3):  # a miss and two hits
        await home.chat("smollm2", USER, options={"temperature": 0})
    with pytest.raises(ollama.ResponseError):
        await home.chat("smollm2", USER)  # over requests_per_day
    await laptop.chat("smollm2", USER, options={"temperature": 0})  # a hit: the cache is shared
    await laptop.chat("smollm2", USER)  # sampled: not considered
    rows = await proxy.wait_rows(6)
    hits = [r for r in rows if r["cache_hit"] == 1]
    code, out, _ = run(capsys, "stats", "--db", str(proxy.db), "--json")
    assert code == 0
    result = json.loads(out)
    assert result["cache"] == {
        "qualified": 4, "hits": 3, "hit_rate": 0.75,
        "saved_ms": sum(r["cache_saved_ms"] for r in hits), "saved_tokens": 3 * PER_CHAT,
    }  # fmt: skip
    by_key = {s["key"]: s for s in result["by_key"]}
    assert (by_key["home"]["requests"], by_key["home"]["errors"], by_key["home"]["cache_hits"]) == (4, 1, 2)
    assert by_key["home"]["cache_hit_rate"] == round(2 / 3, 3)
    assert (by_key["laptop"]["requests"], by_key["laptop"]["cache_hit_rate"]) == (2, 1.0)
    code, out, _ = run(capsys, "logs", "show", str(hits[0]["id"]), "--db", str(proxy.db))
    assert code == 0
    assert f"cache:      hit, sparing the backend {hits[0]['cache_saved_ms']} ms and {PER_CHAT} tokens" in out
    code, out, _ = run(capsys, "stats", "--db", str(proxy.db), "--by", "key")
    assert code == 0
    assert "answer cache: 3 hits of 4 requests that qualified (75.0%)" in out
    table = out.split("by key:", 1)[1]
    assert "by model" not in out and re.search(r"\n  home +4 +1 .* 67\n", table), table
    assert re.search(r"\n  laptop +2 +0 .* 100\n", table), table


async def test_a_key_limited_to_some_models_is_shown_only_those(
    make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    proxy = await make_proxy(
        llama_double[1], backend_type="openai", auth=keys(home={"models": ["assist*"]}, laptop={}),
        models={"mappings": {"assistant": "smollm2", "small": "smollm2"}},  # one model, two names
    )  # fmt: skip
    everything = {m.model for m in (await client(proxy.url, "laptop").list()).models}
    assert everything == {"small:latest", "assistant:latest"}
    shown = [m.model for m in (await client(proxy.url, "home").list()).models]
    assert shown == ["assistant:latest"]
    assert [m.model for m in (await client(proxy.url, "home").ps()).models] == ["assistant:latest"]
    async with sdk(proxy.url, "home") as oa:
        assert [m.id async for m in oa.models.list()] == ["assistant"]
    async with sdk(proxy.url, "laptop") as oa:
        assert {m.id async for m in oa.models.list()} == {"assistant", "small"}
    rows = await proxy.wait_rows(5)
    assert '"assistant:latest"' in rows[1]["response_body"] and "small" not in rows[1]["response_body"]


def test_the_count_starts_again_at_midnight_utc() -> None:
    now = [86400 * 20000 + 86400 - 90.0]  # 23:58:30 UTC
    auth = config_mod.from_dict({"auth": keys(home={"requests_per_day": 1})}).auth
    quotas = Quotas(auth, {"/api/chat"}, clock=lambda: now[0])
    answered = Exchange("/api/chat", "POST", "openai", status_code=200)
    ticket = quotas.admit("home", "/api/chat", "m", "m")
    assert ticket is not None
    quotas.settle(ticket, answered, None, False)
    with pytest.raises(TooManyRequests) as caught:
        quotas.admit("home", "/api/chat", "m", "m")
    assert caught.value.headers["Retry-After"] == "90" and "(in 1m)" in caught.value.message
    assert quotas.admit("home", "/api/tags", None, None) is None  # a route that does not count
    now[0] += 91
    assert quotas.admit("home", "/api/chat", "m", "m") is not None  # a new day
