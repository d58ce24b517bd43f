"""``llm-proxy replay``: recorded requests sent again through the running proxy, compared side by side."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import openai
import orjson
import pytest

from . import ha_turn
from .conftest import MakeProxy, Proxy, read_rows
from .llama_double import LlamaServerDouble, fixture
from .llama_server import ALIAS, LlamaServer, NotInstalled, ServerFailed, template_path
from .planted import rows_of

ROOT = Path(__file__).resolve().parent.parent


async def replay(proxy: Proxy, *args: str, code: int = 0) -> tuple[str, str]:
    """The real command as a process, while this test's event loop serves the proxy."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LLM_PROXY_CONFIG", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llm_proxy", "replay", "--db", str(proxy.db), "--url", proxy.url, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == code, (out, err)
    return out.decode(), err.decode()


@pytest.fixture
async def turn(make_proxy: MakeProxy, aiohttp_server: Any) -> tuple[Proxy, LlamaServerDouble, int]:
    """A Home Assistant turn of three rounds, recorded; the backend serves "smollm2" under two aliases."""
    double = LlamaServerDouble()
    backend = await aiohttp_server(double.app(), host="127.0.0.1")
    proxy = await make_proxy(
        str(backend.make_url("")).rstrip("/"), "openai", models={"mappings": {"candidate": "smollm2"}}
    )
    client = ha_turn.client(proxy.url, ha_turn.Capture())
    await ha_turn.spoken_request(client, double, ha_turn.start_messages(), "turn on the kitchen light", 3)
    rows = await rows_of(proxy.db, 3)
    return proxy, double, rows[0]["turn_id"]


async def test_a_turn_replayed_on_another_model(turn: tuple[Proxy, LlamaServerDouble, int]) -> None:
    proxy, double, turn_id = turn
    before = read_rows(proxy.db, 3)
    # The candidate answers the first round in words instead of calling the tool; the rest alike.
    double.queued = [fixture("chat-stream"), fixture("chat-tools-stream"), fixture("chat-tool-result")]
    out, _ = await replay(proxy, "--turn", str(turn_id), "--model", "candidate", "--json")
    report = orjson.loads(out)
    assert report["summary"] == {
        "replayed": 3, "answers_changed": 1, "tool_calls_differ": 1, "errors": 0, "not_replayed": 0
    }  # fmt: skip
    first = report["exchanges"][0]
    assert first["original"]["tool_calls"] == [{"name": "HassTurnOn", "arguments": {"name": "HassTurnOn"}}]
    assert first["replay"]["tool_calls"] == [] and first["replay"]["response"].startswith("I'm")
    assert (first["answer_changed"], first["tool_calls_differ"]) == (True, True)
    assert [e["tool_calls_differ"] for e in report["exchanges"][1:]] == [False, False]
    assert all(
        e["replay"]["model"] == "candidate" and e["replay"]["latency_ms"] >= 0 for e in report["exchanges"]
    )
    # The replays are rows of their own, pointing at what they replay, with the original's request.
    rows = read_rows(proxy.db, 6)
    new = rows[3:]
    assert [r["replay_of"] for r in new] == [r["id"] for r in before]
    assert all(r["replay_of"] is None for r in rows[:3])
    assert [r["model"] for r in new] == ["candidate"] * 3
    assert [r["status_code"] for r in new] == [200] * 3
    sent = [body for _, body in double.requests[3:]]
    assert [len(b["messages"]) for b in sent] == [2, 4, 6]  # each round's stored conversation, as it was
    assert all(r["user_agent"].startswith("llm-proxy-replay/") for r in new)
    # A search selects recorded traffic, not those replays.
    double.queued = [fixture("chat-tools-stream")]
    out, _ = await replay(proxy, "-q", "kitchen", "--endpoint", "chat", "-n", "1")
    assert "1 replayed: 0 answers changed, 0 with different tool calls, 0 answered with an error" in out
    assert read_rows(proxy.db, 7)[-1]["replay_of"] == before[0]["id"]


async def test_the_side_by_side_report(turn: tuple[Proxy, LlamaServerDouble, int]) -> None:
    proxy, double, _ = turn
    first = read_rows(proxy.db, 3)[0]
    double.queued = [fixture("chat-stream")]
    out, _ = await replay(proxy, str(first["id"]), "--model", "candidate")
    lines = out.splitlines()
    assert lines[0] == f"#{first['id']} → #{first['id'] + 3}  /api/chat  smollm2 → candidate"
    table = {line.split()[0]: line for line in lines[1:] if line.strip()}
    assert "│" in table["status"] and table["status"].split() == ["status", "200", "│", "200"]
    assert table["tool"].endswith("differ") and 'HassTurnOn({"name":"HassTurnOn"})' in table["tool"]
    assert table["answer"].endswith("changed")
    assert lines[-1].startswith("1 replayed: 1 answer changed, 1 with different tool calls")


async def test_what_cannot_be_replayed_says_why(
    make_proxy: MakeProxy, tmp_path: Path, aiohttp_server: Any
) -> None:
    double = LlamaServerDouble()
    backend = await aiohttp_server(double.app(), host="127.0.0.1")
    proxy = await make_proxy(str(backend.make_url("")).rstrip("/"), "openai")
    client = ollama.AsyncClient(host=proxy.url)
    await client.embed(model="smollm2", input="embed me")
    await client.generate(model="smollm2", prompt="hello", stream=False)
    row, generate = await rows_of(proxy.db, 2)
    out, _ = await replay(proxy, str(row["id"]), "--json")
    report = orjson.loads(out)
    assert report["summary"]["not_replayed"] == 1
    assert report["exchanges"][0]["problem"] == "/api/embed is not replayed (only chat and generate)"
    _, err = await replay(proxy, code=1)
    assert "say what to replay" in err
    _, err = await replay(proxy, str(generate["id"]), "--url", "http://127.0.0.1:9", code=1)
    assert err.startswith("llm-proxy: cannot reach the proxy at http://127.0.0.1:9: ")


@pytest.fixture
def llama(tmp_path: Path) -> Iterator[LlamaServer]:
    """A real llama-server with SmolLM2 and a template for tools (fails, never skips, when not installed)."""
    try:
        server = LlamaServer(
            "--jinja", "--chat-template-file", str(template_path()), log_dir=tmp_path
        ).start()
    except (NotInstalled, ServerFailed) as exc:
        problem = str(exc)
    else:
        yield server
        server.stop()
        return
    pytest.fail(problem, pytrace=False)


# Home Assistant's request reduced to one tool, and params that make SmolLM2 call it every time
# (as in tests/test_e2e_llama_server.py).
TURN_ON = {
    "type": "function",
    "function": {
        "name": "HassTurnOn",
        "description": "Turns on a device",
        "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
    },
}
TOOL_PARAMS = {"tool_choice": "required", "temperature": 0, "cache_prompt": False, "max_tokens": 256}


async def test_a_turn_replayed_on_the_real_llama_server(make_proxy: MakeProxy, llama: LlamaServer) -> None:
    # The same model under a second client-side name: what a user does to compare two of them.
    proxy = await make_proxy(
        llama.url, "openai", backend={"timeout": 120},
        models={"mappings": {"smollm2-b": ALIAS}, "params": {ALIAS: TOOL_PARAMS, "smollm2-b": TOOL_PARAMS}},
    )  # fmt: skip
    client = ollama.AsyncClient(host=proxy.url, timeout=120)
    messages: list[Any] = [{"role": "user", "content": "Turn on the kitchen light"}]
    first = await client.chat(model=ALIAS, messages=messages, tools=[TURN_ON])
    assert first.message.tool_calls
    messages += [first.message, {"role": "tool", "content": '{"success": true}'}]
    second = await client.chat(model=ALIAS, messages=messages, tools=[TURN_ON])  # a second round
    assert second.message.tool_calls
    rounds = await rows_of(proxy.db, 2)
    assert rounds[0]["turn_id"] == rounds[1]["turn_id"] == rounds[0]["id"]

    out, _ = await replay(proxy, "--turn", str(rounds[0]["turn_id"]), "--model", "smollm2-b", "--json")
    report = orjson.loads(out)
    summary = report["summary"]
    assert (summary["replayed"], summary["errors"], summary["not_replayed"]) == (2, 0, 0)
    assert summary["tool_calls_differ"] == sum(e["tool_calls_differ"] for e in report["exchanges"])
    for entry, original in zip(report["exchanges"], rounds, strict=True):
        before, after = entry["original"], entry["replay"]
        assert before["id"] == original["id"] and after["model"] == "smollm2-b"
        assert after["status_code"] == 200 and after["completion_tokens"] > 0
        assert [c["name"] for c in after["tool_calls"]] == ["HassTurnOn"]
    rows = read_rows(proxy.db, 4)
    assert [r["replay_of"] for r in rows] == [None, None, rounds[0]["id"], rounds[1]["id"]]
    assert [r["backend_model"] for r in rows[2:]] == [ALIAS, ALIAS]


async def test_only_a_plain_id_in_x_replay_of_is_kept(
    make_proxy: MakeProxy, ollama_double: tuple[Any, str]
) -> None:
    proxy = await make_proxy(ollama_double[1])
    async with aiohttp.ClientSession() as http:
        for header in ("12", "abc", "-3", "0", "99999999999999999999", "１２"):
            body = {"model": "llama3.2", "prompt": "hi", "stream": False}
            async with http.post(
                f"{proxy.url}/api/generate", json=body, headers={"X-Replay-Of": header}
            ) as r:
                assert r.status == 200  # never an error: at worst, no replay
    rows = await rows_of(proxy.db, 6)
    assert [r["replay_of"] for r in rows] == [12, None, None, None, None, None]


async def test_an_openai_api_exchange_is_replayed_on_its_own_endpoint(
    make_proxy: MakeProxy, aiohttp_server: Any
) -> None:
    double = LlamaServerDouble()
    backend = await aiohttp_server(double.app(), host="127.0.0.1")
    proxy = await make_proxy(
        str(backend.make_url("")).rstrip("/"), "openai", models={"mappings": {"candidate": "smollm2"}}
    )
    oai = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="unused")
    tool = {"type": "function", "function": ha_turn.TURN_ON["function"]}
    await oai.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "kitchen on"}],
        tools=[tool],  # type: ignore[list-item]
    )
    await oai.close()
    (original,) = await rows_of(proxy.db, 1)
    out, _ = await replay(proxy, str(original["id"]), "--model", "candidate", "--json")
    (entry,) = orjson.loads(out)["exchanges"]
    assert entry["endpoint"] == "/v1/chat/completions"
    assert entry["replay"]["tool_calls"] == entry["original"]["tool_calls"] != []  # ids aside, the same call
    assert (entry["tool_calls_differ"], entry["answer_changed"]) == (False, False)
    new = read_rows(proxy.db, 2)[1]
    assert (new["api"], new["endpoint"], new["model"], new["replay_of"]) == (
        "openai", "/v1/chat/completions", "candidate", original["id"]
    )  # fmt: skip
    assert orjson.loads(new["request_body"])["tools"] == [tool]
