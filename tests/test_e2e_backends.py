"""End to end, many backends: two real llama-servers and the Ollama double behind one ``llm-proxy serve``.

``gpu`` is SmolLM2 with a 4096-token context, ``cpu`` the same model with a tiny
one (``-c 256``); both serve ``smollm2``, and the client-side names ``roomy`` and
``tiny`` pick one of them (``serves``), with ``models.fallback: {tiny: roomy}``.
The Ollama double (``laptop``) serves llama3.2. Through the real ``ollama``
client and the ``openai`` SDK: one merged list, each model on its backend;
``gpu`` killed in the middle of a stream (the stream ends with an error line,
not retried), the next requests fail over to ``cpu`` and their rows say so; the
breaker skips ``gpu`` until, restarted on its port, it answers the probe; and a
request too long for ``tiny`` lands on ``roomy``. One test, tiny answers: two
llama-servers are heavy on a shared two-core machine.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import pytest
from openai import AsyncOpenAI

from llm_proxy.backends.llamacpp import LlamaCppBackend
from llm_proxy.cli.main import main
from llm_proxy.server import state

from .conftest import MakeProxy, read_rows
from .llama_server import LlamaServer, NotInstalled, ServerFailed, find_binary, find_model
from .ollama_double import OllamaDouble
from .process import serve

SHORT = {"num_predict": 4, "temperature": 0}
USER: Any = [{"role": "user", "content": "Say hello."}]
# Over cpu's context (256 tokens, 128 per slot) but well within gpu's 4096.
LONG = [{"role": "user", "content": "Repeat after me: " + "word " * 400}]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LlamaServer, LlamaServer]]:
    """gpu (the usual 4096-token context) and cpu (a 256-token one), both serving smollm2."""
    started: list[LlamaServer] = []
    try:
        for name, extra in (("gpu", ()), ("cpu", ("-c", "256"))):
            started.append(LlamaServer(*extra, log_dir=tmp_path_factory.mktemp(name)).start())
    except (NotInstalled, ServerFailed) as exc:
        for server in started:
            server.stop()
        pytest.fail(str(exc), pytrace=False)
    yield started[0], started[1]
    for server in started:
        server.stop()


def tries(row: dict[str, Any]) -> list[tuple[str, int | None]]:
    return [(a["backend"], a["status"]) for a in json.loads(row["attempts"])]


async def rows_after(db: Path, count: int) -> list[dict[str, Any]]:
    """The rows once there are ``count`` (bounded wait, off the event loop)."""
    return await asyncio.to_thread(read_rows, db, count, 15.0)


async def ready(url: str, backend: str, state: str) -> dict[str, Any]:
    """/health/ready once ``backend`` is in ``state`` (bounded: 20 s)."""
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            async with http.get(f"{url}/health/ready") as resp:
                body: dict[str, Any] = await resp.json()
            if body["backends"].get(backend) == state:
                return body
            await asyncio.sleep(0.1)
    raise AssertionError(f"{backend} never became {state}: {body}")


async def test_two_llama_servers_and_ollama_behind_one_proxy(
    tmp_path: Path,
    servers: tuple[LlamaServer, LlamaServer],
    aiohttp_server: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gpu, cpu = servers
    double = OllamaDouble()
    laptop = str((await aiohttp_server(double.app(), host="127.0.0.1")).make_url("")).rstrip("/")
    backends = [  # a list: the order is the order requests try them in
        {"name": "gpu", "type": "openai", "endpoint": gpu.url, "serves": ["smollm2", "roomy"]},
        {"name": "cpu", "type": "openai", "endpoint": cpu.url, "serves": ["smollm2", "tiny"]},
        {"name": "laptop", "type": "ollama", "endpoint": laptop},
    ]
    async with serve(
        tmp_path,
        laptop,
        backend={"timeout": 60},
        backends=backends,
        routing={"breaker_failures": 2, "probe_interval": 0.5},
        models={"mappings": {"tiny": "smollm2", "roomy": "smollm2"}, "fallback": {"tiny": "roomy"}},
    ) as proxy:
        client = ollama.AsyncClient(host=proxy.url, timeout=60)
        sdk = AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0, timeout=60)
        # One catalog: every backend's models, each name once.
        names = [m.model or "" for m in (await client.list()).models]
        assert len(names) == len(set(names))
        assert {"llama3.2:latest", "nomic-embed-text:latest", "tiny:latest", "roomy:latest"} <= set(names)
        ids = [m.id async for m in sdk.models.list()]
        assert len(ids) == len(set(ids)) and {"llama3.2:latest", "tiny", "roomy"} <= set(ids)

        # Each model answered by its backend.
        answer = await client.chat(model="smollm2", messages=USER, options=SHORT)
        assert answer.message.content
        assert (await client.chat(model="llama3.2", messages=USER)).message.content == "The sky is blue."
        completion = await sdk.chat.completions.create(model="tiny", messages=USER, max_tokens=4)
        assert completion.choices[0].message.content is not None
        rows = await rows_after(proxy.db, 5)
        chats = [(r["model"], r["backend_name"]) for r in rows if "chat" in r["endpoint"]]
        assert chats == [("smollm2", "gpu"), ("llama3.2", "laptop"), ("tiny", "cpu")]

        # gpu dies while it streams: the stream ends with an error line, and is not retried.
        stream = await client.chat(
            model="smollm2",
            messages=[{"role": "user", "content": "Count from one to two hundred."}],
            stream=True,
            options={"num_predict": 400, "temperature": 0},
        )
        first = await anext(stream)
        assert first.done is False
        gpu.kill()
        with pytest.raises(ollama.ResponseError):
            async for _ in stream:
                pass
        broken = (await rows_after(proxy.db, 6))[5]
        assert broken["backend_name"] == "gpu" and broken["status_code"] >= 500
        assert tries(broken) == [("gpu", 200)]  # one try: nothing was retried

        # The next request for smollm2 fails over to cpu (that opens gpu's breaker:
        # two failures in a row), and the one after that skips gpu altogether.
        assert (await client.chat(model="smollm2", messages=USER, options=SHORT)).message.content
        completion = await sdk.chat.completions.create(model="smollm2", messages=USER, max_tokens=4)
        assert completion.choices[0].message.content is not None
        rows = await rows_after(proxy.db, 8)
        assert [(r["backend_name"], r["status_code"]) for r in rows[6:8]] == [("cpu", 200), ("cpu", 200)]
        assert tries(rows[6]) == [("gpu", 502), ("cpu", 200)]
        assert "unreachable" in json.loads(rows[6]["attempts"])[0]["error"]
        assert tries(rows[7]) == [("cpu", 200)]
        async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/health") as resp:
            health = await resp.json()
        assert resp.status == 200
        assert {b["name"]: b["state"] for b in health["backends"]} == {"gpu": "open", "cpu": "closed",
                                                                       "laptop": "closed"}  # fmt: skip
        assert main(["logs", "show", str(rows[6]["id"]), "--db", str(proxy.db)]) == 0
        assert "backend:    cpu  (tried: gpu 502" in capsys.readouterr().out

        # Restarted on its port, gpu answers the probe and gets smollm2 again.
        await asyncio.to_thread(gpu.restart)
        await ready(proxy.url, "gpu", "closed")
        assert (await client.chat(model="smollm2", messages=USER, options=SHORT)).message.content
        row = (await rows_after(proxy.db, 9))[8]
        assert (row["backend_name"], tries(row)) == ("gpu", [("gpu", 200)])

        # Over tiny's context (cpu): retried once on roomy (gpu), and the row says so.
        answer = await client.chat(model="tiny", messages=LONG, options=SHORT)
        assert answer.message.content is not None
        row = (await rows_after(proxy.db, 10))[9]
        assert (row["status_code"], row["model"], row["backend_name"]) == (200, "tiny", "gpu")
        attempts = json.loads(row["attempts"])
        assert [(a["backend"], a["status"], a.get("model")) for a in attempts] == [
            ("cpu", 400, None), ("gpu", 200, "roomy"),
        ]  # fmt: skip
        assert "context" in attempts[0]["error"]
        await sdk.close()
        await client.close()


async def test_the_managed_llamacpp_backend_is_one_backend_among_the_others(
    make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str]
) -> None:
    """Its models are listed without starting anything; its llama-server starts on the first request."""
    try:
        binary, gguf = find_binary(), find_model()
    except NotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)
    spare = {
        "name": "spare", "type": "llamacpp", "server_binary": str(binary), "timeout": 60,
        "models": {"smollm2": {"path": str(gguf), "ctx": 512, "args": ["-t", "1"]}},
    }  # fmt: skip
    proxy = await make_proxy(
        ollama_double[1], backends=[{"name": "laptop", "type": "ollama", "endpoint": ollama_double[1]}, spare]
    )
    client = ollama.AsyncClient(host=proxy.url, timeout=60)
    listed = {m.model for m in (await client.list()).models}
    assert {"llama3.2:latest", "smollm2:latest"} <= listed
    managed = proxy.app[state.ROUTER].by_name["spare"].backend
    assert isinstance(managed, LlamaCppBackend) and managed.pool.running() == []  # nothing started yet
    answer = await client.chat(model="smollm2", messages=USER, options=SHORT)
    assert answer.message.content is not None and len(managed.pool.running()) == 1
    assert (await client.chat(model="llama3.2", messages=USER)).message.content == "The sky is blue."
    rows = await proxy.wait_rows(3, within=15)
    chats = [(r["model"], r["backend_name"], r["backend_type"]) for r in rows if r["endpoint"] == "/api/chat"]
    assert chats == [("smollm2", "spare", "llamacpp"), ("llama3.2", "laptop", "ollama")]
    await client.close()
