"""The real ``llm-proxy`` process as systemd runs it: readiness, reload, logs, metrics."""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from llm_proxy import config as config_mod
from llm_proxy.server.metrics import ModelLabels, token_count

from . import raw
from .conftest import read_rows
from .ollama_double import OllamaDouble
from .process import free_port, serve
from .test_lifecycle import USER, backend_has


async def chat(
    url: str, model: str = "llama3.2", stream: bool = True, headers: Mapping[str, str] | None = None
) -> aiohttp.ClientResponse:
    """One /api/chat, read to the end; the response keeps its headers."""
    async with aiohttp.ClientSession() as http:
        body = {"model": model, "messages": USER, "stream": stream}
        async with http.post(f"{url}/api/chat", json=body, headers=headers) as resp:
            await resp.read()
            return resp


# -- sd_notify ---------------------------------------------------------------------------


async def test_ready_then_watchdog_then_stopping_arrive_on_the_notify_socket(
    tmp_path: Path, ollama_double: tuple[OllamaDouble, str]
) -> None:
    sock_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    messages: list[str] = []

    async def receive_until(state: str) -> None:
        for _ in range(100):  # bounded
            data = await asyncio.wait_for(loop.sock_recv(listener, 4096), 15)
            messages.append(data.decode())
            if state in data.decode().split("\n"):
                return
        raise AssertionError(f"{state} never came: {messages}")

    env = {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "200000"}  # pings every 0.1 s
    try:
        async with serve(tmp_path, ollama_double[1], env=env) as served:
            await receive_until("READY=1")
            # READY=1 means the port is bound and the database migrated.
            async with aiohttp.ClientSession() as http, http.get(f"{served.url}/health") as resp:
                assert resp.status == 200
            assert read_rows(served.db, 0) == []  # the logs table exists
            await receive_until("WATCHDOG=1")
            served.proc.send_signal(signal.SIGTERM)
            await receive_until("STOPPING=1")
            assert await served.stop(signalled=True) == 0
    finally:
        listener.close()
    states = [line for m in messages for line in m.split("\n") if line in ("READY=1", "STOPPING=1")]
    assert states == ["READY=1", "STOPPING=1"]
    ready = next(m for m in messages if "READY=1" in m.split("\n"))
    assert f"STATUS=listening on 127.0.0.1:{served.url.rsplit(':', 1)[1]}" in ready.split("\n")


# -- SIGHUP reload -------------------------------------------------------------------------


async def test_sighup_applies_a_changed_mapping_to_the_next_request(
    tmp_path: Path, ollama_double: tuple[OllamaDouble, str]
) -> None:
    double, backend = ollama_double
    async with serve(tmp_path, backend, models={"mappings": {"assistant": "llama3.2"}}) as served:
        double.hold = asyncio.Event()
        # A stream in flight across the reload: it must not be dropped.
        held = asyncio.create_task(chat(served.url, "assistant"))
        await backend_has(double, 1)

        served.rewrite(lambda c: c["models"].update(mappings={"assistant": "nomic-embed-text"}))
        mark = len(served.stderr)
        served.proc.send_signal(signal.SIGHUP)
        await served.wait_log("config reloaded", after=mark)
        double.hold.set()
        assert (await held).status == 200

        resp = await chat(served.url, "assistant", stream=False)
        assert resp.status == 200
        assert double.requests[-1][1] is not None
        assert double.requests[-1][1]["model"] == "nomic-embed-text"
        assert served.proc.returncode is None
        assert await served.stop() == 0
    rows = read_rows(served.db, 2)
    assert [(r["model"], r["backend_model"], r["status_code"]) for r in rows] == [
        ("assistant", "llama3.2", 200),
        ("assistant", "nomic-embed-text", 200),
    ]
    assert rows[0]["response"] == "The sky is blue."


async def test_sighup_with_a_broken_file_keeps_the_old_config_and_says_why(
    tmp_path: Path, ollama_double: tuple[OllamaDouble, str]
) -> None:
    double, backend = ollama_double
    async with serve(tmp_path, backend, models={"mappings": {"assistant": "llama3.2"}}) as served:
        served.config_path.write_text("models:\n  mappings: {assistant: [not, a, name]}\n")
        mark = len(served.stderr)
        served.proc.send_signal(signal.SIGHUP)
        line = await served.wait_log("config reload failed", after=mark)
        assert "keeping the running config" in line and "models.mappings.assistant" in line

        served.config_path.write_text("models: {mappings: {assistant: llama3.2\n")  # not YAML at all
        mark = len(served.stderr)
        served.proc.send_signal(signal.SIGHUP)
        assert "not valid YAML" in await served.wait_log("config reload failed", after=mark)

        resp = await chat(served.url, "assistant", stream=False)
        assert resp.status == 200
        assert double.requests[-1][1] is not None and double.requests[-1][1]["model"] == "llama3.2"
        async with aiohttp.ClientSession() as http, http.get(f"{served.url}/health/live") as live:
            assert live.status == 200
        assert served.proc.returncode is None
        assert await served.stop() == 0


async def test_sighup_switches_logging_and_names_what_needs_a_restart(
    tmp_path: Path, ollama_double: tuple[OllamaDouble, str]
) -> None:
    async with serve(tmp_path, ollama_double[1]) as served:
        before = await chat(served.url, stream=False)
        text_line = await served.wait_log(f"id={before.headers['X-Request-Id']}")
        assert "llm_proxy.access: POST /api/chat 200" in text_line  # text to begin with

        def change(config: dict[str, Any]) -> None:
            config["server"].update(log_format="json", port=1)
            config["backend"].update(timeout=5)

        served.rewrite(change)
        mark = len(served.stderr)
        served.proc.send_signal(signal.SIGHUP)
        warning = await served.wait_log("restart to apply", after=mark)
        assert orjson.loads(warning)["level"] == "WARNING"  # already in the new format
        assert "server.port, backend.timeout" in warning
        resp = await chat(served.url, stream=False)
        assert resp.status == 200  # still on the old port: the port did not change
        access = orjson.loads(await served.wait_log('"logger":"llm_proxy.access"', after=mark))
        assert access["request_id"] == resp.headers["X-Request-Id"]
        assert await served.stop() == 0


# -- structured logs ---------------------------------------------------------------------------


async def test_json_log_lines_carry_the_request_id_the_client_saw(
    tmp_path: Path, ollama_double: tuple[OllamaDouble, str]
) -> None:
    async with serve(tmp_path, ollama_double[1], server={"log_format": "json"}) as served:
        given = await chat(served.url, headers={"X-Request-Id": "ha-conversation-42"})
        generated = await chat(served.url, model="no-such-model", stream=False)
        assert await served.stop() == 0
    assert given.headers["X-Request-Id"] == "ha-conversation-42"
    new_id = generated.headers["X-Request-Id"]
    assert len(new_id) == 16 and int(new_id, 16) >= 0  # generated: hex, process prefix + counter

    lines = [orjson.loads(line) for line in served.stderr]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    access = {line["request_id"]: line for line in lines if line["logger"] == "llm_proxy.access"}
    assert access["ha-conversation-42"] | {"latency_ms": 0} == {
        **access["ha-conversation-42"], "method": "POST", "path": "/api/chat", "status": 200,
        "model": "llama3.2", "backend": "ollama", "latency_ms": 0,
    }  # fmt: skip
    assert access[new_id]["status"] == 404 and access[new_id]["model"] == "no-such-model"
    rows = read_rows(served.db, 2)
    assert [r["request_id"] for r in rows] == ["ha-conversation-42", new_id]


async def test_text_log_has_one_access_line_per_request(
    tmp_path: Path, ollama_double: tuple[OllamaDouble, str]
) -> None:
    async with serve(tmp_path, ollama_double[1]) as served:
        resp = await chat(served.url, stream=False)
        rid = resp.headers["X-Request-Id"]
        line = await served.wait_log(f"id={rid}")
        assert await served.stop() == 0
    assert "llm_proxy.access: POST /api/chat 200 " in line
    assert "model=llama3.2 backend=ollama" in line
    assert sum(f"id={rid}" in entry for entry in served.stderr) == 1


# What aiohttp's parser answers itself, before the proxy sees the request: the README lists these
# as the requests that leave no audit row. If aiohttp starts passing one on, this test says so.
POST = b"POST /api/chat HTTP/1.1\r\nHost: x\r\n"
REFUSED_BY_THE_PARSER = {
    "request line over 8190 bytes": b"GET /" + b"a" * 8200 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "header over 8190 bytes": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 8200 + b"\r\n\r\n",
    "more than 128 headers": b"GET / HTTP/1.1\r\n"
    + b"".join(b"X-%d: 1\r\n" % i for i in range(130))
    + b"\r\n",
    "Content-Length and Transfer-Encoding": (
        POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "two Content-Lengths": POST + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "a Content-Length that is not a number": POST + b"Content-Length: -1\r\n\r\n",
    "a Transfer-Encoding other than chunked": POST + b"Transfer-Encoding: gzip\r\n\r\n",
    "a malformed chunk size with the headers": POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
    "an invalid method": b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n",
    "an unknown HTTP version": b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    "a byte over 0x7f in the target": b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    "a control character in a header": b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: a\x1bb\r\n\r\n",
    "a bare CR in a header": b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\rb\r\n\r\n",
    "bare LF line ends": b"GET / HTTP/1.1\nHost: x\n\n",
    "an HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}


async def test_requests_the_parser_refuses_get_400_and_a_warning_but_no_row(
    tmp_path: Path, ollama_double: tuple[OllamaDouble, str]
) -> None:
    async with serve(tmp_path, ollama_double[1]) as served:
        for why, data in REFUSED_BY_THE_PARSER.items():
            answer = await raw.send(served.url, data)
            assert answer.status == 400, why
        assert (await chat(served.url, stream=False)).status == 200
        assert await served.stop() == 0
    [row] = read_rows(served.db, 1)
    assert row["endpoint"] == "/api/chat"  # the one request that reached the proxy
    warnings = [line for line in served.stderr if "refused a malformed request from 127.0.0.1: 400" in line]
    # All but the invalid method: aiohttp takes that for non-HTTP traffic and says nothing.
    assert len(warnings) == len(REFUSED_BY_THE_PARSER) - 1
    assert not [line for line in served.stderr if "Traceback" in line]


# -- metrics -------------------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus exposition, keyed by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_count_exactly_the_traffic_sent(
    tmp_path: Path, ollama_double: tuple[OllamaDouble, str]
) -> None:
    async with serve(tmp_path, ollama_double[1]) as served, aiohttp.ClientSession() as http:
        for _ in range(3):
            await chat(served.url)  # streams
        for _ in range(2):
            await chat(served.url, stream=False)
        await chat(served.url, model="no-such-model", stream=False)  # the backend's 404
        async with http.post(f"{served.url}/api/chat", data=b"{not json") as resp:
            assert resp.status == 400
        async with http.get(f"{served.url}/api/tags") as resp:
            assert resp.status == 200
        async with http.get(f"{served.url}/nowhere") as resp:
            assert resp.status == 404
        await asyncio.to_thread(read_rows, served.db, 9)  # every row written, /nowhere's 404 too
        async with http.get(f"{served.url}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            first = samples(await resp.text())
        async with http.get(f"{served.url}/metrics") as resp:
            second = samples(await resp.text())
        assert await served.stop() == 0

    req = "llm_proxy_requests_total"
    assert value(first, req, endpoint="/api/chat", model="llama3.2", status="200") == 5
    # A client's mistake is not labelled with the model it named (unbounded series).
    assert value(first, req, endpoint="/api/chat", model="", status="404") == 1
    assert value(first, req, endpoint="/api/chat", model="", status="400") == 1
    assert value(first, req, endpoint="/api/tags", model="", status="200") == 1
    assert value(first, req, endpoint="unmatched", model="", status="404") == 1
    # /health/live from start-up, then nothing else: scrapes are not counted.
    assert sum(v for (name, _), v in first.items() if name == req) == 10
    assert second == first  # a scrape changes nothing

    assert value(first, "llm_proxy_tokens_total", model="llama3.2", direction="in") == 5 * 26
    assert value(first, "llm_proxy_tokens_total", model="llama3.2", direction="out") == 5 * 5
    duration = "llm_proxy_request_duration_seconds_count"
    assert value(first, duration, endpoint="/api/chat", model="llama3.2") == 5
    ttft = "llm_proxy_time_to_first_token_seconds_count"
    assert value(first, ttft, endpoint="/api/chat", model="llama3.2") == 5
    assert value(first, "llm_proxy_requests_in_flight") == 0
    assert value(first, "llm_proxy_audit_rows_written_total") == 9  # 8 /api/* rows and /nowhere
    assert value(first, "llm_proxy_audit_write_failures_total") == 0
    assert value(first, "llm_proxy_audit_queue_depth") == 0
    assert value(first, "llm_proxy_audit_queue_peak") >= 1
    assert value(first, "llm_proxy_backend_errors_total", kind="unreachable") == 0


@pytest.mark.parametrize("kind", ["unreachable", "error"])
async def test_metrics_count_backend_errors_by_kind(
    kind: str, make_proxy: Any, ollama_double: tuple[OllamaDouble, str]
) -> None:
    double, backend = ollama_double
    if kind == "unreachable":
        backend = f"http://127.0.0.1:{free_port()}"
    else:
        double.die_mid_stream = True  # the backend breaks off its stream after one chunk
    # A model the config names keeps its label when the backend fails it.
    proxy = await make_proxy(backend, models={"default": "llama3.2"})
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            await chat(proxy.url)
        async with http.get(f"{proxy.url}/metrics") as resp:
            found = samples(await resp.text())
    assert value(found, "llm_proxy_backend_errors_total", kind=kind) == 2
    assert sum(v for (n, _), v in found.items() if n == "llm_proxy_backend_errors_total") == 2
    assert value(found, "llm_proxy_requests_total", endpoint="/api/chat", model="llama3.2", status="502") == 2
    rows = await proxy.wait_rows(2)
    assert [r["status_code"] for r in rows] == [502, 502]


async def test_made_up_models_that_fail_share_one_series(tmp_path: Path) -> None:
    """A 502 for each of many made-up names (backend down) must not grow /metrics."""
    down = f"http://127.0.0.1:{free_port()}"
    async with serve(tmp_path, down, models={"mappings": {"assistant": "llama3.2"}}) as served:
        sizes = []
        async with aiohttp.ClientSession() as http:
            for batch in range(3):
                for i in range(100):  # bounded: 300 requests, each refused at once by the closed port
                    body = {"model": f"made-up-{batch}-{i}", "messages": USER, "stream": False}
                    async with http.post(f"{served.url}/api/chat", json=body) as resp:
                        assert resp.status == 502
                async with http.get(f"{served.url}/metrics") as resp:
                    text = await resp.text()
                    sizes.append(len(text))
            assert (await chat(served.url, "assistant", stream=False)).status == 502
            async with http.get(f"{served.url}/metrics") as resp:
                found = samples(await resp.text())
        assert await served.stop() == 0
    assert max(sizes) - min(sizes) < 100  # the counts' digits grow; no series does
    req = "llm_proxy_requests_total"
    assert value(found, req, endpoint="/api/chat", model="other", status="502") == 300
    assert value(found, req, endpoint="/api/chat", model="assistant", status="502") == 1  # configured
    models = {dict(labels).get("model") for (name, labels) in found if name == req}
    assert models == {"", "other", "assistant"}  # "": /health/live at start-up


async def test_absurd_token_counts_are_not_counted_and_the_request_still_logged(
    tmp_path: Path, ollama_double: tuple[OllamaDouble, str]
) -> None:
    double, backend = ollama_double
    double.counts = (-5, -1)  # Counter.inc refuses negative amounts
    async with serve(tmp_path, backend) as served, aiohttp.ClientSession() as http:
        resp = await chat(served.url, stream=False)
        assert resp.status == 200
        line = await served.wait_log(f"id={resp.headers['X-Request-Id']}")
        async with http.get(f"{served.url}/metrics") as scrape:
            found = samples(await scrape.text())
        assert await served.stop() == 0
    assert "POST /api/chat 200" in line
    assert value(found, "llm_proxy_requests_total", endpoint="/api/chat", model="llama3.2", status="200") == 1
    assert not [k for k in found if k[0] == "llm_proxy_tokens_total"]


def test_model_labels_follow_what_the_backend_served() -> None:
    config = config_mod.from_dict({"models": {"mappings": {"assistant": "qwen:latest"}, "default": "tiny"}})
    labels = ModelLabels(limit=2)
    assert [labels.label(config, name, 502, "down") for name in ("assistant", "qwen", "tiny", "x")] == [
        "assistant", "qwen", "tiny", "other",
    ]  # fmt: skip
    assert labels.label(config, "llama3.2", 200, None) == "llama3.2"  # answered: served
    assert labels.label(config, "llama3.2:latest", 502, "down") == "llama3.2:latest"
    assert labels.label(config, "pulled", 200, "pull model manifest: file does not exist") == "other"
    assert labels.label(config, "second", 200, None) == "second"
    assert labels.label(config, "third", 200, None) == "other"  # the limit: no more names remembered
    assert [token_count(n) for n in (None, 0, -5, 12, 2**63 - 1, 2**63, 2**64)] == [
        None, None, None, 12, 2**63 - 1, None, None,
    ]  # fmt: skip


async def test_metrics_can_be_switched_off(make_proxy: Any, ollama_double: tuple[OllamaDouble, str]) -> None:
    proxy = await make_proxy(ollama_double[1], server={"metrics": False})
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/metrics") as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": "not found"}


# -- health probes ---------------------------------------------------------------------------


async def test_ready_and_live_probes(make_proxy: Any, ollama_double: tuple[OllamaDouble, str]) -> None:
    proxy = await make_proxy(ollama_double[1])
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxy.url}/health/ready") as resp:
            assert resp.status == 200
            assert await resp.json() == {
                "status": "ready",
                "checks": {"backend": "ok", "database": "ok"},
                "backends": {"default": "closed"},
            }
        async with http.get(f"{proxy.url}/health/live") as resp:
            assert (resp.status, await resp.json()) == (200, {"status": "alive"})


async def test_ready_is_503_without_a_backend(make_proxy: Any) -> None:
    proxy = await make_proxy(f"http://127.0.0.1:{free_port()}")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxy.url}/health/ready") as resp:
            assert resp.status == 503
            body = await resp.json()
        async with http.get(f"{proxy.url}/health/live") as live:
            assert live.status == 200
    assert body["status"] == "unavailable" and body["checks"]["database"] == "ok"
    assert "unreachable" in body["checks"]["backend"]


async def test_ready_is_503_while_the_database_takes_no_writes(
    make_proxy: Any, ollama_double: tuple[OllamaDouble, str]
) -> None:
    proxy = await make_proxy(ollama_double[1])
    blocker = sqlite3.connect(proxy.db, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # someone holds the write lock
        async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/health/ready") as resp:
            assert resp.status == 503
            body = await resp.json()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert body["checks"]["backend"] == "ok"
    assert "not writable: database is locked" in body["checks"]["database"]
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/health/ready") as resp:
        assert resp.status == 200


async def test_reload_reaches_the_openai_backend_names_and_params(
    aiohttp_server: Any, tmp_path: Path, llama_double: Any
) -> None:
    """What SIGHUP runs, in-process: the backend's model list and params follow the new file."""
    import ollama

    from llm_proxy import config as config_mod
    from llm_proxy.server import reload
    from llm_proxy.server.app import create_app

    double, url = llama_double
    path = tmp_path / "config.yaml"
    config = {
        "backend": {"type": "openai", "endpoint": url},
        "database": {"path": str(tmp_path / "audit.db")},
        "models": {"mappings": {"assistant": "smollm2"}},
    }
    path.write_text(yaml.safe_dump(config))
    app = create_app(config_mod.load(str(path)))
    server = await aiohttp_server(app, host="127.0.0.1")
    client = ollama.AsyncClient(host=str(server.make_url("")).rstrip("/"))
    assert [m.model for m in (await client.list()).models] == ["assistant:latest"]

    config["models"] = {"mappings": {"helper": "smollm2"}, "params": {"helper": {"cache_prompt": False}}}
    path.write_text(yaml.safe_dump(config))
    assert reload.reload(app) is True
    assert [m.model for m in (await client.list()).models] == ["helper:latest"]
    await client.chat(model="helper", messages=USER)
    [(_, sent)] = double.requests
    assert sent["model"] == "smollm2" and sent["cache_prompt"] is False


async def test_a_backend_that_appears_later_is_picked_up_without_a_restart(tmp_path: Path) -> None:
    from aiohttp.test_utils import TestServer

    port = free_port()
    async with serve(tmp_path, f"http://127.0.0.1:{port}") as served, aiohttp.ClientSession() as http:
        async with http.get(f"{served.url}/health/ready") as resp:
            assert resp.status == 503
        assert (await chat(served.url, stream=False)).status == 502
        late = TestServer(OllamaDouble().app(), host="127.0.0.1", port=port)
        await late.start_server()
        try:
            async with http.get(f"{served.url}/health/ready") as resp:
                assert resp.status == 200
            assert (await chat(served.url, stream=False)).status == 200
        finally:
            await late.close()
        assert await served.stop() == 0
    assert [r["status_code"] for r in read_rows(served.db, 2)] == [502, 200]
