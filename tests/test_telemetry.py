"""OpenTelemetry: each exchange arrives at a real OTLP receiver as a GenAI span.

Spans go to Arize Phoenix (tests/otlp.py), started once for the module, and
are read back through its REST API by the trace id the audit row stores.
Metrics and resource attributes are read by the protobuf-decoding Collector.
Set-up and failures (the extra, settings, collectors down) are in test_telemetry_setup.py.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import openai
import orjson
import pytest
import yaml

from llm_proxy.cli.main import main
from llm_proxy.server import state

from .conftest import MakeProxy, Proxy
from .llama_double import LlamaServerDouble
from .otlp import Collector, Phoenix, attributes
from .process import free_port

USER = [{"role": "user", "content": "Say hello in five words."}]
TOOLS = [{"type": "function", "function": {"name": "HassTurnOn", "parameters": {"type": "object"}}}]
HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    receiver = Phoenix(tmp_path_factory.mktemp("phoenix"))
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture(autouse=True)
def quick_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK's batch delay (OTEL_BSP_SCHEDULE_DELAY, 5 s by default): the
    # standard variable is honoured, and the tests need not wait 5 s a span.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")


async def traced(
    make_proxy: MakeProxy, endpoint: str, receiver: str, backend: str = "openai", **telemetry: Any
) -> Proxy:
    settings = {"enabled": True, "endpoint": receiver, "metrics": False, **telemetry}
    return await make_proxy(endpoint, backend_type=backend, telemetry=settings)


def by_name(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in spans}


def sampled(traceparent: str) -> bool:
    """The W3C trace-flags' sampled bit (the SDK also sets 0x02, "random trace id")."""
    return bool(int(traceparent.rsplit("-", 1)[1], 16) & 1)


def loaded(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str) else value


async def test_chat_is_a_genai_span_with_a_backend_try_whose_traceparent_the_backend_got(
    phoenix: Phoenix, make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    double, url = llama_double
    proxy = await traced(make_proxy, url, phoenix.endpoint)
    client = ollama.AsyncClient(host=proxy.url)
    await client.chat(
        model="smollm2", messages=USER, stream=False, options={"temperature": 0.2, "num_predict": 12}
    )
    [row] = await proxy.wait_rows(1)
    assert HEX32.fullmatch(row["trace_id"])
    spans = by_name(await phoenix.spans(row["trace_id"], 2))
    assert set(spans) == {"chat smollm2", "openai smollm2"}
    exchange, attempt = spans["chat smollm2"], spans["openai smollm2"]
    assert exchange["parent_id"] is None and exchange["status_code"] == "OK"
    assert attempt["parent_id"] == exchange["context"]["span_id"]
    a = exchange["attributes"]
    assert (a["gen_ai.operation.name"], a["gen_ai.provider.name"], a["gen_ai.request.model"]) == (
        "chat", "openai", "smollm2",
    )  # fmt: skip
    assert (a["gen_ai.request.temperature"], a["gen_ai.request.max_tokens"]) == (0.2, 12)
    assert a["gen_ai.usage.input_tokens"] == row["prompt_tokens"] > 0
    assert a["gen_ai.usage.output_tokens"] == row["completion_tokens"] > 0
    assert a["gen_ai.response.finish_reasons"] == [row["done_reason"]]
    assert a["gen_ai.response.model"] == "smollm2"
    assert (a["http.response.status_code"], a["http.route"], a["llm_proxy.api"]) == (
        200,
        "/api/chat",
        "ollama",
    )
    assert a["llm_proxy.request_id"] == row["request_id"]
    # The span ends once the row is stored: it names the row, and the row's turn as the conversation.
    assert a["llm_proxy.row_id"] == row["id"]
    assert a["gen_ai.conversation.id"] == str(row["turn_id"]) == str(row["id"])
    # capture_content is off by default: no prompt, no answer.
    assert not any(k in a for k in ("gen_ai.input.messages", "gen_ai.output.messages"))
    assert attempt["attributes"]["http.response.status_code"] == 200
    assert attempt["attributes"]["server.address"] == "127.0.0.1"
    # The backend was asked within the try's span, and was told so.
    [sent] = double.traceparents
    assert sent is not None and sent.startswith(f"00-{row['trace_id']}-{attempt['context']['span_id']}-")
    assert sampled(sent)


async def test_each_backend_tried_is_a_child_span_and_only_the_one_that_answered_got_its_traceparent(
    phoenix: Phoenix, make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    double, live = llama_double
    dead = f"http://127.0.0.1:{free_port()}"
    backends = {
        "dead": {"type": "openai", "endpoint": dead, "serves": ["smollm2"]},
        "live": {"type": "openai", "endpoint": live, "serves": ["smollm2"]},
    }
    telemetry = {"enabled": True, "endpoint": phoenix.endpoint, "metrics": False}
    proxy = await make_proxy(live, backend_type="openai", backends=backends, telemetry=telemetry)
    chunks = await ollama.AsyncClient(host=proxy.url).chat(model="smollm2", messages=USER, stream=True)
    assert [c async for c in chunks][-1].done
    [row] = await proxy.wait_rows(1)
    assert row["backend_name"] == "live"
    spans = await phoenix.spans(row["trace_id"], 3)
    [exchange] = [s for s in spans if s["name"] == "chat smollm2"]
    tries = [s for s in spans if s["name"] == "openai smollm2"]
    assert [t["attributes"]["llm_proxy.backend"] for t in tries] == ["dead", "live"]
    assert all(t["parent_id"] == exchange["context"]["span_id"] for t in tries)
    failed, answered = tries
    assert failed["status_code"] == "ERROR" and "unreachable" in failed["status_message"]
    assert answered["status_code"] == "UNSET" and answered["attributes"]["http.response.status_code"] == 200
    assert exchange["status_code"] == "OK"
    [sent] = double.traceparents
    assert sent is not None and sent.split("-")[2] == answered["context"]["span_id"]


async def test_an_answer_from_the_cache_is_a_span_without_a_backend_try(
    phoenix: Phoenix, make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    telemetry = {"enabled": True, "endpoint": phoenix.endpoint, "metrics": False}
    proxy = await make_proxy(
        llama_double[1], backend_type="openai", telemetry=telemetry, cache={"enabled": True}
    )
    client = ollama.AsyncClient(host=proxy.url)
    for _ in range(2):  # temperature 0: the second is answered from the cache
        await client.chat(model="smollm2", messages=USER, stream=False, options={"temperature": 0})
    first, second = await proxy.wait_rows(2)
    assert (first["cache_hit"], second["cache_hit"]) == (0, 1)
    [miss_exchange] = [s for s in await phoenix.spans(first["trace_id"], 2) if s["name"] == "chat smollm2"]
    assert miss_exchange["attributes"]["llm_proxy.cache_hit"] is False
    await asyncio.sleep(1)  # a try span, were there one, would have arrived with it
    [hit] = await phoenix.spans(second["trace_id"], 1)
    assert hit["name"] == "chat smollm2" and hit["attributes"]["llm_proxy.cache_hit"] is True
    assert len(llama_double[0].traceparents) == 1


async def test_streamed_generate_has_its_operation_name_and_a_first_token_event(
    phoenix: Phoenix, make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    proxy = await traced(make_proxy, llama_double[1], phoenix.endpoint)
    parts = [
        p
        async for p in await ollama.AsyncClient(host=proxy.url).generate(
            model="smollm2", prompt="Hi", stream=True
        )
    ]
    assert parts[-1].done
    [row] = await proxy.wait_rows(1)
    spans = by_name(await phoenix.spans(row["trace_id"], 2))
    exchange = spans["text_completion smollm2"]
    assert exchange["attributes"]["gen_ai.operation.name"] == "text_completion"
    assert exchange["attributes"]["llm_proxy.stream"] is True
    assert [e["name"] for e in exchange["events"]] == ["gen_ai.first_token"]
    assert row["ttft_ms"] is not None and exchange["attributes"]["llm_proxy.ttft_ms"] == row["ttft_ms"]


async def test_streamed_tool_call_carries_content_only_when_captured(
    phoenix: Phoenix, make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    proxy = await traced(make_proxy, llama_double[1], phoenix.endpoint, capture_content=True)
    client = ollama.AsyncClient(host=proxy.url)
    chunks = [c async for c in await client.chat(model="smollm2", messages=USER, tools=TOOLS, stream=True)]
    assert any(c.message.tool_calls for c in chunks)
    [row] = await proxy.wait_rows(1)
    [exchange] = [s for s in await phoenix.spans(row["trace_id"], 2) if s["name"] == "chat smollm2"]
    a = exchange["attributes"]
    inputs = loaded(a["gen_ai.input.messages"])
    assert inputs == [{"role": "user", "parts": [{"type": "text", "content": USER[0]["content"]}]}]
    [output] = loaded(a["gen_ai.output.messages"])
    calls = [p for p in output["parts"] if p["type"] == "tool_call"]
    assert [c["name"] for c in calls] == ["HassTurnOn"]
    assert output["role"] == "assistant" and output["finish_reason"] == row["done_reason"]
    assert a["gen_ai.response.finish_reasons"] == [row["done_reason"]]


async def test_captured_content_is_redacted_as_the_row_is(
    phoenix: Phoenix, make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    """database.redact covers what capture_content exports: a trace store is a copy too."""
    settings = {"enabled": True, "endpoint": phoenix.endpoint, "metrics": False, "capture_content": True}
    redact = {"redact": {"detectors": ["email"]}}
    proxy = await make_proxy(llama_double[1], backend_type="openai", telemetry=settings, database=redact)
    secret = "anna.berg@example.org"
    asked = [{"role": "user", "content": f"Mail the shopping list to {secret}"}]
    await ollama.AsyncClient(host=proxy.url).chat(model="smollm2", messages=asked, stream=False)
    [row] = await proxy.wait_rows(1)
    [exchange] = [s for s in await phoenix.spans(row["trace_id"], 2) if s["name"] == "chat smollm2"]
    exported = orjson.dumps(exchange["attributes"]).decode()
    assert secret not in exported and "[redacted:email]" in exported
    assert "[redacted:email]" in row["prompt"]
    # The backend still got it.
    assert secret in orjson.dumps(llama_double[0].requests).decode()


async def test_errors_are_error_spans(
    phoenix: Phoenix, make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    double, url = llama_double
    proxy = await traced(make_proxy, url, phoenix.endpoint)
    double.scenario = "mid-stream-error"  # a 200, then the backend's error frame
    chunks = await ollama.AsyncClient(host=proxy.url).chat(model="smollm2", messages=USER, stream=True)
    with pytest.raises(ollama.ResponseError):
        async for _ in chunks:
            pass
    down = await traced(make_proxy, f"http://127.0.0.1:{free_port()}", phoenix.endpoint)
    with pytest.raises(ollama.ResponseError) as refused:
        await ollama.AsyncClient(host=down.url).chat(model="smollm2", messages=USER, stream=False)
    assert refused.value.status_code == 502
    rows = {r["status_code"]: r for r in await proxy.wait_rows(2)}  # both proxies share the file
    broken, unreachable = rows[500], rows[502]
    spans = by_name(await phoenix.spans(broken["trace_id"], 2))
    exchange = spans["chat smollm2"]
    assert (exchange["status_code"], broken["status_code"]) == ("ERROR", 500)
    assert "out of memory" in exchange["status_message"]
    assert exchange["attributes"]["error.type"] == "500"
    spans = by_name(await phoenix.spans(unreachable["trace_id"], 2))
    exchange, attempt = spans["chat smollm2"], spans["openai smollm2"]
    assert exchange["status_code"] == attempt["status_code"] == "ERROR"
    assert "unreachable" in exchange["status_message"] and "unreachable" in attempt["status_message"]
    assert exchange["attributes"]["http.response.status_code"] == 502


async def test_a_clients_traceparent_becomes_the_parent(
    phoenix: Phoenix, make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    double, url = llama_double
    proxy = await traced(make_proxy, url, phoenix.endpoint)
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    body = {"model": "smollm2", "messages": USER, "stream": False}
    headers = {"traceparent": f"00-{trace_id}-{parent}-01"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{proxy.url}/api/chat", json=body, headers=headers) as r,
    ):
        assert r.status == 200
    [row] = await proxy.wait_rows(1)
    assert row["trace_id"] == trace_id
    exchange = by_name(await phoenix.spans(trace_id, 2))["chat smollm2"]
    assert exchange["parent_id"] == parent
    [sent] = double.traceparents
    assert sent is not None and sent.startswith(f"00-{trace_id}-") and parent not in sent


async def test_the_api_keys_name_is_on_the_span_never_the_key(
    phoenix: Phoenix, make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    settings = {"enabled": True, "endpoint": phoenix.endpoint, "metrics": False}
    keys = {"keys": [{"name": "home-assistant", "key": "kitchen-secret-0123456789"}]}
    proxy = await make_proxy(llama_double[1], backend_type="openai", telemetry=settings, auth=keys)
    client = ollama.AsyncClient(host=proxy.url, headers={"Authorization": "Bearer kitchen-secret-0123456789"})
    await client.chat(model="smollm2", messages=USER, stream=False)
    [row] = await proxy.wait_rows(1)
    exchange = by_name(await phoenix.spans(row["trace_id"], 2))["chat smollm2"]
    assert exchange["attributes"]["llm_proxy.key_name"] == "home-assistant" == row["key_name"]
    assert "kitchen-secret" not in orjson.dumps(exchange).decode()


async def test_a_failing_telemetry_sdk_never_fails_a_request(
    phoenix: Phoenix,
    make_proxy: MakeProxy,
    llama_double: tuple[LlamaServerDouble, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = await traced(make_proxy, llama_double[1], phoenix.endpoint)
    telemetry: Any = proxy.app[state.TELEMETRY]

    def broken(*args: Any) -> Any:
        raise RuntimeError("the SDK broke")

    real_begin = telemetry.begin
    telemetry.begin = broken  # the exchange's span cannot start
    client = ollama.AsyncClient(host=proxy.url)
    assert (await client.chat(model="smollm2", messages=USER, stream=False)).done
    telemetry.begin = lambda headers, exchange: _breaking_tries(real_begin(headers, exchange), broken)
    assert (await client.chat(model="smollm2", messages=USER, stream=False)).done
    rows = await proxy.wait_rows(2)
    assert [r["status_code"] for r in rows] == [200, 200]
    assert rows[0]["trace_id"] is None and rows[1]["trace_id"] is not None
    assert "the span of request" in caplog.text and "backend try's span could not be started" in caplog.text


def _breaking_tries(trace: Any, broken: Any) -> Any:
    trace.attempt = broken  # its backend try cannot start either
    return trace


async def test_unsampled_exchanges_store_no_trace_id(
    phoenix: Phoenix, make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    double, url = llama_double
    proxy = await traced(make_proxy, url, phoenix.endpoint, sampling=0.0)
    await ollama.AsyncClient(host=proxy.url).chat(model="smollm2", messages=USER, stream=False)
    [row] = await proxy.wait_rows(1)
    assert row["trace_id"] is None and row["status_code"] == 200
    # The decision travels on: the backend is told the trace is not sampled (flags 00).
    [sent] = double.traceparents
    assert sent is not None and not sampled(sent)


async def test_logs_show_prints_the_trace_and_its_link(
    phoenix: Phoenix,
    make_proxy: MakeProxy,
    llama_double: tuple[LlamaServerDouble, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    proxy = await traced(make_proxy, llama_double[1], phoenix.endpoint)
    await ollama.AsyncClient(host=proxy.url).chat(model="smollm2", messages=USER, stream=False)
    [row] = await proxy.wait_rows(1)
    config = tmp_path / "config.yaml"
    url = "https://grafana.example/explore?left={%22query%22:%22{trace_id}%22}"
    config.write_text(yaml.safe_dump({"database": {"path": str(proxy.db)}, "telemetry": {"trace_url": url}}))
    assert main(["logs", "show", str(row["id"]), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    link = url.replace("{trace_id}", row["trace_id"])
    assert f"trace:      {row['trace_id']}  {link}\n" in out
    assert main(["logs", "show", str(row["id"]), "--json", "--config", str(config)]) == 0
    assert orjson.loads(capsys.readouterr().out)["trace_id"] == row["trace_id"]


async def test_the_web_ui_links_the_exchange_to_its_trace(
    phoenix: Phoenix, make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    url = "https://tempo.example/trace/{trace_id}"
    proxy = await traced(make_proxy, llama_double[1], phoenix.endpoint, trace_url=url)
    await ollama.AsyncClient(host=proxy.url).chat(model="smollm2", messages=USER, stream=False)
    [row] = await proxy.wait_rows(1)
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/ui/api/exchanges/{row['id']}") as resp:
        assert resp.status == 200
        shown = await resp.json()
    assert shown["exchange"]["trace_id"] == row["trace_id"]
    assert shown["trace_url"] == f"https://tempo.example/trace/{row['trace_id']}"


async def test_a_receiver_that_stops_during_load_costs_a_counter_not_requests(
    make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str], tmp_path: Path
) -> None:
    receiver = Phoenix(tmp_path / "phoenix")
    await asyncio.to_thread(receiver.start)
    try:
        proxy = await traced(make_proxy, llama_double[1], receiver.endpoint, timeout=1.0, max_queue=64)
        total, stop_after = 240, 60
        statuses: list[int] = []
        sem = asyncio.Semaphore(8)
        body = {"model": "smollm2", "prompt": "Hi", "stream": False}

        async with aiohttp.ClientSession() as http:

            async def one() -> None:
                async with sem, http.post(f"{proxy.url}/api/generate", json=body) as resp:
                    await resp.read()
                    statuses.append(resp.status)

            await asyncio.gather(*(one() for _ in range(stop_after)))
            for _ in range(100):  # bounded: 20 s for the first spans to land
                if await receiver.count() > 0:
                    break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError(f"no span reached Phoenix:\n{receiver.tail()}")
            await asyncio.to_thread(receiver.stop)
            await asyncio.gather(*(one() for _ in range(total - stop_after)))
            assert statuses == [200] * total
            rows = await proxy.wait_rows(total)
            assert len(rows) == total and all(r["status_code"] == 200 for r in rows)
            counters: dict[str, float] = {}
            for _ in range(100):  # bounded: 20 s for the failed exports to be counted
                async with http.get(f"{proxy.url}/metrics") as resp:
                    text = await resp.text()
                counters = {
                    m[2]: float(m[3])
                    for m in re.finditer(r"^(llm_proxy_telemetry_spans_(\w+)_total) (\S+)$", text, re.M)
                }
                if counters.get("dropped", 0) > 0:
                    break
                await asyncio.sleep(0.2)
        assert counters["exported"] > 0 and counters["dropped"] > 0
    finally:
        await asyncio.to_thread(receiver.stop)


async def test_metrics_and_otel_environment_variables(
    make_proxy: MakeProxy,
    llama_double: tuple[LlamaServerDouble, str],
    aiohttp_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    collector = Collector()
    server = await aiohttp_server(collector.app(), host="127.0.0.1")
    # No endpoint, service name or headers in the config: the standard variables say them.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", str(server.make_url("")).rstrip("/"))
    monkeypatch.setenv("OTEL_SERVICE_NAME", "kitchen-proxy")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-team=home")
    proxy = await make_proxy(llama_double[1], backend_type="openai", telemetry={"enabled": True})
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="none")
    stream = await client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Say hello in five words."}],
        stream=True,
        temperature=0.5,
        max_tokens=20,
    )
    async for _ in stream:
        pass
    # A made-up model name must not become a metric series of its own.
    with pytest.raises(ollama.ResponseError):
        await ollama.AsyncClient(host=proxy.url).chat(model="no-such-model-42", messages=USER, stream=False)
    [row, made_up] = await proxy.wait_rows(2)
    assert made_up["status_code"] == 404
    await proxy.server.close()  # the last spans and metrics are sent as the proxy stops
    spans = [(resource, span) for resource, span in collector.spans() if span["name"] == "chat smollm2"]
    [(resource, span)] = spans
    assert resource["service.name"] == "kitchen-proxy"
    assert all(h.get("x-team") == "home" for h in collector.headers)
    a = attributes(span["attributes"])
    assert (a["llm_proxy.api"], a["http.route"]) == ("openai", "/v1/chat/completions")
    assert (a["gen_ai.request.temperature"], a["gen_ai.request.max_tokens"]) == (0.5, 20)
    durations = {
        attributes(p["attributes"])["gen_ai.request.model"]: (attributes(p["attributes"]), p)
        for p in collector.points("gen_ai.client.operation.duration")
    }
    assert set(durations) == {"smollm2", "other"}
    labels, duration = durations["smollm2"]
    assert labels == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "smollm2",
    }
    assert durations["other"][0]["error.type"] == "404"
    assert int(duration["count"]) == 1 and 0 < duration["sum"] <= row["latency_ms"] / 1000 + 0.001
    tokens = {
        attributes(p["attributes"])["gen_ai.token.type"]: int(p["sum"])
        for p in collector.points("gen_ai.client.token.usage")
        if attributes(p["attributes"])["gen_ai.request.model"] == "smollm2"
    }
    assert tokens == {"input": row["prompt_tokens"], "output": row["completion_tokens"]}
    [ttft] = collector.points("gen_ai.server.time_to_first_token")
    assert int(ttft["count"]) == 1


async def test_spans_go_over_grpc_when_the_protocol_says_so(
    phoenix: Phoenix,
    make_proxy: MakeProxy,
    llama_double: tuple[LlamaServerDouble, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    grpc = f"http://127.0.0.1:{phoenix.grpc_port}"
    by_config = await traced(make_proxy, llama_double[1], grpc, protocol="grpc")
    await ollama.AsyncClient(host=by_config.url).chat(model="smollm2", messages=USER, stream=False)
    await by_config.wait_rows(1)
    # Left at its default, the protocol is the standard variable's.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    by_env = await traced(make_proxy, llama_double[1], grpc)
    await ollama.AsyncClient(host=by_env.url).chat(model="smollm2", messages=USER, stream=False)
    rows = await by_config.wait_rows(2)  # both proxies share the file
    for row in rows:
        spans = by_name(await phoenix.spans(row["trace_id"], 2))
        assert set(spans) == {"chat smollm2", "openai smollm2"}
