"""Telemetry's set-up and its failures: the extra, the settings, reloads, collectors down or stuck.

The spans themselves are checked in tests/test_telemetry.py.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import ollama
import pytest
from aiohttp import web

from llm_proxy.config import from_dict
from llm_proxy.errors import ConfigError
from llm_proxy.server.reload import merge

from .conftest import read_rows
from .llama_double import LlamaServerDouble
from .process import free_port, serve

USER = [{"role": "user", "content": "Say hello in five words."}]
HEX32 = re.compile(r"[0-9a-f]{32}")


def test_without_telemetry_nothing_of_opentelemetry_is_imported() -> None:
    code = (
        "import sys\n"
        "from llm_proxy.config import from_dict\n"
        "from llm_proxy.server.app import create_app\n"
        "from llm_proxy.cli import main\n"
        "create_app(from_dict({'telemetry': {'enabled': False, 'endpoint': 'http://127.0.0.1:4318'}}))\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path.cwd()
    )
    assert out.stdout.strip() == "[]"


def test_enabled_without_the_extra_says_how_to_install_it() -> None:
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if the otel extra were not installed\n"
        "from llm_proxy.config import from_dict\n"
        "from llm_proxy.telemetry import load\n"
        "load(from_dict({'telemetry': {'enabled': True}}).telemetry)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 1
    assert "ConfigError: telemetry.enabled needs the OpenTelemetry SDK" in out.stderr
    assert "pip install 'llm-proxy[otel]'" in out.stderr


def test_grpc_without_its_exporter_says_how_to_install_it() -> None:
    code = (
        "import sys\n"
        "sys.modules['opentelemetry.exporter.otlp.proto.grpc'] = None  # the otel-grpc extra missing\n"
        "from llm_proxy.config import from_dict\n"
        "from llm_proxy.telemetry import load\n"
        "load(from_dict({'telemetry': {'enabled': True, 'protocol': 'grpc'}}).telemetry)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 1
    assert "telemetry.protocol grpc needs the gRPC exporter: pip install 'llm-proxy[otel-grpc]'" in out.stderr


@pytest.mark.parametrize(
    ("telemetry", "message"),
    [
        ({"sampling": 1.5}, "'telemetry.sampling' must be between 0 and 1, got 1.5"),
        ({"endpoint": "collector:4318"}, "'telemetry.endpoint' must be an http:// or https:// URL"),
        ({"protocol": "http/json"}, "'telemetry.protocol' must be one of 'http/protobuf', 'grpc'"),
        (
            {"trace_url": "https://tempo.example/trace"},
            "'telemetry.trace_url' must be an http:// or https://",
        ),
        (
            {"trace_url": "javascript:alert('{trace_id}')"},
            "'telemetry.trace_url' must be an http:// or https://",
        ),
        ({"headers": {"authorization": 5}}, "'telemetry.headers.authorization' must map a name to a string"),
        ({"max_queue": 0}, "'telemetry.max_queue' must be at least 1, got 0"),
        ({"timeout": 0}, "'telemetry.timeout' must be a positive number of seconds"),
    ],
)
def test_bad_telemetry_settings_name_the_key(telemetry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_dict({"telemetry": telemetry})
    assert message in str(caught.value)


def test_a_reload_keeps_the_running_telemetry_and_says_it_needs_a_restart() -> None:
    running = from_dict({"telemetry": {"enabled": True, "sampling": 1.0}})
    loaded = from_dict({"telemetry": {"enabled": True, "sampling": 0.1}})
    merged, ignored = merge(running, loaded)
    assert merged.telemetry.sampling == 1.0 and ignored == ["telemetry.sampling"]


async def test_serve_with_its_collector_down_answers_and_stops_within_the_timeout(
    llama_double: tuple[LlamaServerDouble, str], tmp_path: Path
) -> None:
    collector = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    telemetry = {"enabled": True, "endpoint": collector, "timeout": 1.0}
    async with serve(tmp_path, llama_double[1], backend={"type": "openai"}, telemetry=telemetry) as served:
        await served.wait_log(f"telemetry: exporting spans and metrics to {collector}/v1/traces")
        client = ollama.AsyncClient(host=served.url)
        for _ in range(3):
            answer = await client.chat(model="smollm2", messages=USER, stream=False)
            assert answer.done
        started = asyncio.get_running_loop().time()
        assert await served.stop() == 0
        # The last export is given telemetry.timeout, not the SDK's 30 s.
        assert asyncio.get_running_loop().time() - started < 15
        closed = await served.wait_log("telemetry closed:")
        assert "0 spans exported, 6 dropped" in closed
    rows = read_rows(served.db, 3)
    assert len(rows) == 3 and all(HEX32.fullmatch(r["trace_id"]) for r in rows)


async def test_a_collector_that_never_answers_delays_neither_answers_nor_the_stop(
    llama_double: tuple[LlamaServerDouble, str], tmp_path: Path, aiohttp_server: Any
) -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(60)
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/traces", hang)
    app.router.add_post("/v1/metrics", hang)
    collector = str((await aiohttp_server(app, host="127.0.0.1")).make_url("")).rstrip("/")
    telemetry = {"enabled": True, "endpoint": collector, "timeout": 1.0}
    env = {"OTEL_BSP_SCHEDULE_DELAY": "50"}  # exports start (and hang) while requests are answered
    async with serve(
        tmp_path, llama_double[1], env=env, backend={"type": "openai"}, telemetry=telemetry
    ) as served:
        client = ollama.AsyncClient(host=served.url)
        for _ in range(20):
            assert (await client.chat(model="smollm2", messages=USER, stream=False)).done
        started = asyncio.get_running_loop().time()
        assert await served.stop() == 0
        assert asyncio.get_running_loop().time() - started < 10  # timeout 1 s: one stuck export, then out
    assert len(read_rows(served.db, 20)) == 20
