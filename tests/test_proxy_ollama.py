"""The proxy in front of an Ollama, driven by the real ``ollama`` client."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import orjson
import pytest

from . import raw, raw_backend
from .conftest import MakeProxy, Proxy, present, read_rows
from .ollama_double import ANSWER, OllamaDouble

USER = [{"role": "user", "content": "Why is the sky blue?"}]


def client(proxy: Proxy) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=proxy.url)


async def test_list_shows_client_side_names(proxy: Proxy) -> None:
    listed = await client(proxy).list()
    names = [m.model for m in listed.models]
    assert names == ["llama2:latest", "nomic-embed-text:latest"]
    [row] = await proxy.wait_rows(1)
    assert (row["endpoint"], row["method"], row["status_code"], row["error"]) == (
        "/api/tags",
        "GET",
        200,
        None,
    )
    assert "llama2:latest" in row["response_body"]


async def test_chat_stream_is_relayed_and_recorded(
    proxy: Proxy, ollama_double: tuple[OllamaDouble, str]
) -> None:
    double, _ = ollama_double
    pieces = []
    async for chunk in await client(proxy).chat(model="llama2", messages=USER, stream=True):
        pieces.append(present(chunk.message.content))
        assert chunk.model == "llama2"  # the name the client asked for, not the backend's
    assert "".join(pieces) == "".join(ANSWER)
    assert double.requests[-1][1] is not None
    assert double.requests[-1][1]["model"] == "llama3.2"  # the mapping reached the backend
    [row] = await proxy.wait_rows(1)
    assert row["endpoint"] == "/api/chat"
    assert row["model"] == "llama2" and row["backend_model"] == "llama3.2"
    assert row["prompt"] == "Why is the sky blue?"
    assert row["response"] == "The sky is blue."
    assert row["stream"] == 1 and row["status_code"] == 200 and row["error"] is None
    assert (row["done_reason"], row["prompt_tokens"], row["completion_tokens"]) == ("stop", 26, 5)
    assert row["latency_ms"] >= 0 and row["ttft_ms"] is not None and row["ttfb_ms"] is not None
    assert orjson.loads(row["request_body"])["messages"] == USER
    assert orjson.loads(row["response_body"])["message"]["content"] == "The sky is blue."
    assert row["client_addr"] == "127.0.0.1" and row["user_agent"].startswith("ollama-python")


async def test_chat_and_generate_without_streaming(proxy: Proxy) -> None:
    chat = await client(proxy).chat(model="llama3.2", messages=USER, stream=False)
    assert chat.message.content == "The sky is blue." and chat.done
    gen = await client(proxy).generate(model="llama3.2", prompt="Say it", stream=False)
    assert gen.response == "The sky is blue."
    rows = await proxy.wait_rows(2)
    assert [(r["endpoint"], r["stream"], r["response"], r["prompt"]) for r in rows] == [
        ("/api/chat", 0, "The sky is blue.", "Why is the sky blue?"),
        ("/api/generate", 0, "The sky is blue.", "Say it"),
    ]


async def test_generate_stream(proxy: Proxy) -> None:
    text = "".join(
        [
            present(c.response)
            async for c in await client(proxy).generate(model="llama2", prompt="p", stream=True)
        ]
    )
    assert text == "The sky is blue."
    [row] = await proxy.wait_rows(1)
    assert (row["endpoint"], row["response"], row["stream"], row["completion_tokens"]) == (
        "/api/generate",
        "The sky is blue.",
        1,
        5,
    )


async def test_show_ps_embed_pull_version(proxy: Proxy) -> None:
    c = client(proxy)
    shown = await c.show("llama2")
    assert shown.capabilities == ["completion", "tools"] and shown.modelinfo is not None
    running = await c.ps()
    assert [m.model for m in running.models] == ["llama2:latest"]
    embedded = await c.embed(model="nomic-embed-text", input=["a", "b"])
    assert len(embedded.embeddings) == 2
    legacy = await c.embeddings(model="nomic-embed-text", prompt="a")
    assert list(legacy.embedding) == [0.5, 0.25, 0.125]
    progress = [p.status async for p in await c.pull("llama2", stream=True)]
    assert progress[-1] == "success"
    pulled = await c.pull("llama2", stream=False)
    assert pulled.status == "success"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxy.url}/api/version") as resp:
            assert (await resp.json())["version"] == "0.12.3"
        async with http.get(f"{proxy.url}/") as resp:
            assert await resp.text() == "Ollama is running"
        async with http.head(f"{proxy.url}/") as resp:  # the ollama CLI's server check
            assert resp.status == 200
    rows = await proxy.wait_rows(9)
    assert [r["endpoint"] for r in rows] == [
        "/api/show", "/api/ps", "/api/embed", "/api/embeddings", "/api/pull", "/api/pull",
        "/api/version", "/", "/",
    ]  # fmt: skip
    by_endpoint = {r["endpoint"]: r for r in rows}
    assert by_endpoint["/api/embed"]["prompt"] == "a\nb"
    assert by_endpoint["/api/pull"]["response"] == "success"
    assert all(r["status_code"] == 200 and r["error"] is None for r in rows)


async def test_backend_errors_pass_through_with_their_status(proxy: Proxy) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await client(proxy).chat(model="missing", messages=USER)
    assert caught.value.status_code == 404
    assert caught.value.error == "model 'missing' not found"
    [row] = await proxy.wait_rows(1)
    assert (row["status_code"], row["error"], row["model"]) == (404, "model 'missing' not found", "missing")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"model": "llama2", "messages": [', "invalid JSON in request body"),
        (b"[1, 2]", "request body must be a JSON object"),
        (b"", "missing request body"),
        (b'{"messages": []}', "model is required"),
        (b'{"model": 7}', "'model' must be a string"),
        (b'{"model": "llama2", "stream": "yes"}', "'stream' must be true or false"),
        (b'\xff\xfe{"model"}', "invalid JSON in request body"),
    ],
)
async def test_bad_requests_get_400_and_a_row(proxy: Proxy, body: bytes, message: str) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{proxy.url}/api/chat", data=body) as resp:
        assert resp.status == 400
        assert resp.content_type == "application/json"
        assert (await resp.json())["error"].startswith(message)
    [row] = await proxy.wait_rows(1)
    assert row["status_code"] == 400 and row["error"].startswith(message)
    assert row["request_body"] == (body.decode("utf-8", "replace") or None)


async def test_models_default_fills_a_missing_model(
    make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str]
) -> None:
    double, url = ollama_double
    proxy = await make_proxy(url, models={"default": "llama3.2"})
    body = {"messages": USER, "stream": False}
    async with aiohttp.ClientSession() as http, http.post(f"{proxy.url}/api/chat", json=body) as resp:
        assert resp.status == 200
        assert (await resp.json())["message"]["content"] == "The sky is blue."
    assert double.requests[-1][1] is not None
    assert double.requests[-1][1]["model"] == "llama3.2"
    [row] = await proxy.wait_rows(1)
    assert row["model"] == "llama3.2"


async def test_unknown_route_and_method_are_json_errors(proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxy.url}/api/nope") as resp:
            assert resp.status == 404 and "error" in await resp.json()
        async with http.get(f"{proxy.url}/api/chat") as resp:
            assert resp.status == 405 and "error" in await resp.json()


async def test_stream_is_not_buffered(proxy: Proxy, ollama_double: tuple[OllamaDouble, str]) -> None:
    double, _ = ollama_double
    double.hold = asyncio.Event()
    stream = await client(proxy).chat(model="llama2", messages=USER, stream=True)
    first = await asyncio.wait_for(anext(aiter(stream)), timeout=5)
    # The backend has sent one line and is waiting: the client already has it.
    assert first.message.content == "The" and not double.hold.is_set()
    double.hold.set()
    rest = [present(c.message.content) async for c in stream]
    assert "".join(["The", *rest]) == "The sky is blue."


async def test_client_gone_before_the_first_byte_frees_the_backend(make_proxy: MakeProxy) -> None:
    """The user hangs up while the model loads: once the answer starts, the proxy drops it."""
    cut = asyncio.Event()

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        await asyncio.sleep(0.5)  # loading the model; the client leaves meanwhile
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        line = b'{"model":"m","message":{"role":"assistant","content":"token "},"done":false}\n'
        try:
            for _ in range(200_000):  # bounded: 16 MB, a long generation
                writer.write(b"%x\r\n%s\r\n" % (len(line), line))
                await writer.drain()
        except ConnectionError:
            cut.set()  # the proxy let go of the answer
        finally:
            writer.close()

    server = await asyncio.start_server(backend, "127.0.0.1", 0)
    proxy = await make_proxy(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", int(proxy.url.rsplit(":", 1)[1]))
        body = orjson.dumps({"model": "m", "messages": USER})
        writer.write(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()  # gone before the first byte of the answer
        await asyncio.wait_for(cut.wait(), 10)
        [row] = await proxy.wait_rows(1)
        assert row["status_code"] == 499 and row["error"] == "client disconnected"
    finally:
        server.close()


async def test_client_disconnect_mid_stream_is_recorded(
    proxy: Proxy, ollama_double: tuple[OllamaDouble, str]
) -> None:
    double, _ = ollama_double
    double.hold = asyncio.Event()
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{proxy.url}/api/chat", json={"model": "llama2", "messages": USER})
        first = await resp.content.readline()
        assert orjson.loads(first)["message"]["content"] == "The"
        resp.close()  # the user hangs up
    await asyncio.sleep(0.1)
    double.hold.set()
    [row] = await proxy.wait_rows(1)
    assert row["error"] == "client disconnected" and row["status_code"] == 499
    assert row["response"].startswith("The") and row["response"] != "The sky is blue."


@pytest.mark.parametrize("endpoint", ["/api/chat", "/api/generate"])
async def test_client_that_leaves_before_a_whole_answer_is_recorded_as_499(
    endpoint: str, proxy: Proxy, ollama_double: tuple[OllamaDouble, str]
) -> None:
    double, _ = ollama_double
    double.hold_whole = asyncio.Event()
    body = orjson.dumps({"model": "llama2", "messages": USER, "prompt": "Hi", "stream": False})
    _, writer = await asyncio.open_connection(*raw.address(proxy.url))
    writer.write(raw.request("POST", endpoint.encode(), {b"Content-Type": b"application/json"}, body))
    await writer.drain()
    for _ in range(500):  # bounded: 5 s for the request to reach the backend
        if double.requests:
            break
        await asyncio.sleep(0.01)
    writer.close()  # the user gives up while the model thinks
    await writer.wait_closed()
    # The proxy reads the hang-up before a request sent after it: once that is
    # answered, the proxy knows its first client is gone.
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/health/live") as resp:
        assert resp.status == 200
    double.hold_whole.set()
    [row] = await proxy.wait_rows(1)
    assert (row["endpoint"], row["status_code"], row["error"]) == (endpoint, 499, "client disconnected")
    assert row["response"] == "The sky is blue."  # what the backend answered, though nobody got it


async def test_client_that_leaves_while_sending_its_body_is_recorded_as_499(proxy: Proxy) -> None:
    head = raw.request("POST", b"/api/chat", {b"Content-Length": b"1000"})  # 1000 bytes announced
    _, writer = await asyncio.open_connection(*raw.address(proxy.url))
    writer.write(head + b'{"model": "llama2", "messages": [')  # and then no more
    await writer.drain()
    async with aiohttp.ClientSession() as http:
        for _ in range(250):  # bounded: 5 s for the proxy to start on the request
            async with http.get(f"{proxy.url}/metrics") as resp:
                if "llm_proxy_requests_in_flight 1.0" in await resp.text():
                    break
            await asyncio.sleep(0.02)
    writer.close()
    await writer.wait_closed()
    [row] = await proxy.wait_rows(1)
    assert (row["endpoint"], row["status_code"], row["error"]) == ("/api/chat", 499, "client disconnected")


async def test_backend_dying_mid_stream_ends_with_an_error_line(
    proxy: Proxy, ollama_double: tuple[OllamaDouble, str]
) -> None:
    double, _ = ollama_double
    double.die_mid_stream = True
    got = []
    with pytest.raises(ollama.ResponseError) as caught:
        async for chunk in await client(proxy).chat(model="llama2", messages=USER, stream=True):
            got.append(chunk.message.content)
    assert got == ["The"]
    assert "broke off" in caught.value.error
    [row] = await proxy.wait_rows(1)
    assert row["response"] == "The" and "broke off" in row["error"] and row["status_code"] == 502


async def test_backend_down_is_502_naming_the_backend(make_proxy: MakeProxy, unused_tcp_port: int) -> None:
    dead = f"http://127.0.0.1:{unused_tcp_port}"
    proxy = await make_proxy(dead)
    with pytest.raises(ollama.ResponseError) as caught:
        await client(proxy).chat(model="llama2", messages=USER)
    assert caught.value.status_code == 502 and dead in caught.value.error
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/health") as resp:
        assert resp.status == 503
        health = await resp.json()
        assert health["backend"] == {"type": "ollama", "endpoint": dead, "reachable": False}
        assert dead in health["error"]
    [row] = await proxy.wait_rows(1)
    assert row["status_code"] == 502 and dead in row["error"]


async def test_backend_timeout_is_504(make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str]) -> None:
    double, url = ollama_double
    double.hold = asyncio.Event()  # the backend goes silent after its first line
    proxy = await make_proxy(url, backend={"timeout": 0.3})
    body = {"model": "llama3.2", "messages": USER}
    async with aiohttp.ClientSession() as http, http.post(f"{proxy.url}/api/chat", json=body) as resp:
        lines = [orjson.loads(line) async for line in resp.content]
    double.hold.set()
    assert lines[0]["message"]["content"] == "The"
    assert "error" in lines[-1] and "stopped answering" in lines[-1]["error"]
    [row] = await proxy.wait_rows(1)
    assert row["status_code"] == 504


async def test_health_ok(proxy: Proxy, ollama_double: tuple[OllamaDouble, str]) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/health") as resp:
        assert resp.status == 200
        assert await resp.json() == {
            "status": "ok",
            "backend": {"type": "ollama", "endpoint": ollama_double[1], "reachable": True},
            "backends": [
                {"name": "default", "type": "ollama", "endpoint": ollama_double[1], "state": "closed",
                 "reachable": True},
            ],
        }  # fmt: skip


async def test_request_id_is_honoured_and_recorded(proxy: Proxy) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{proxy.url}/api/chat",
            json={"model": "llama2", "messages": USER},
            headers={"X-Request-Id": "abc-1"},
        ) as resp,
    ):
        await resp.read()
        assert resp.headers["X-Request-Id"] == "abc-1"
    [row] = await proxy.wait_rows(1)
    assert row["request_id"] == "abc-1"


async def test_cors(make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str]) -> None:
    proxy = await make_proxy(ollama_double[1], server={"enable_cors": True})
    async with aiohttp.ClientSession() as http:
        preflight = {"Origin": "http://x", "Access-Control-Request-Method": "POST"}
        async with http.options(f"{proxy.url}/api/chat", headers=preflight) as resp:
            assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == "*"
        async with http.post(f"{proxy.url}/api/chat", json={"model": "llama2", "messages": USER}) as resp:
            await resp.read()
            assert resp.headers["Access-Control-Allow-Origin"] == "*"


async def test_log_flags_print_to_stdout(
    make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str], capsys: pytest.CaptureFixture[str]
) -> None:
    flags = {"log_messages": True, "log_raw_requests": True, "log_raw_responses": True}
    proxy = await make_proxy(ollama_double[1], server=flags, models={"mappings": {"llama2": "llama3.2"}})
    async for _ in await client(proxy).chat(model="llama2", messages=USER, stream=True):
        pass
    await proxy.wait_rows(1)
    out = capsys.readouterr().out
    assert "status=200" in out
    assert "Model: llama2, Prompt: Why is the sky blue?, Response: The sky is blue." in out
    assert '"content": "Why is the sky blue?"' in out  # the raw request, pretty-printed
    assert out.count('"done": false') == len(ANSWER)  # every streamed chunk


async def test_go_readme_queries_run_unchanged(proxy: Proxy) -> None:
    await client(proxy).chat(model="llama2", messages=USER)
    await client(proxy).generate(model="llama3.2", prompt="x")
    await proxy.wait_rows(2)
    conn = sqlite3.connect(proxy.db)
    recent = conn.execute(
        "SELECT timestamp, endpoint, model, latency_ms FROM logs ORDER BY timestamp DESC LIMIT 10;"
    ).fetchall()
    assert [(r[1], r[2]) for r in recent] == [("/api/generate", "llama3.2"), ("/api/chat", "llama2")]
    by_model = conn.execute(
        "SELECT model, AVG(latency_ms) as avg_latency_ms, COUNT(*) as request_count FROM logs "
        "WHERE error IS NULL GROUP BY model;"
    ).fetchall()
    assert sorted((m, n) for m, _, n in by_model) == [("llama2", 1), ("llama3.2", 1)]
    issue_example = "SELECT model, AVG(latency_ms), COUNT(*) FROM logs WHERE error IS NULL GROUP BY model;"
    assert len(conn.execute(issue_example).fetchall()) == 2
    conn.close()


async def test_reader_process_while_200_requests_run(proxy: Proxy) -> None:
    """sqlite3 readers (and a brief writer) while the proxy writes: nobody fails, no row lost."""
    await client(proxy).list()  # the database exists before the reader starts
    await proxy.wait_rows(1)
    stop = threading.Event()
    reader_errors: list[BaseException] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        conn = sqlite3.connect(proxy.db, timeout=10)
        try:
            while not stop.is_set():
                conn.execute("SELECT COUNT(*), MAX(id) FROM logs").fetchone()
                reads += 1
                if reads % 50 == 0:  # a user's brief write, as `sqlite3 llm_proxy.db "..."` does it
                    # BEGIN IMMEDIATE takes the write lock up front, waiting out the
                    # proxy's writer; a deferred one can be refused at once in WAL mode.
                    writer = sqlite3.connect(proxy.db, timeout=10, isolation_level=None)
                    writer.execute("BEGIN IMMEDIATE")
                    writer.execute("CREATE TABLE IF NOT EXISTS notes (t TEXT)")
                    writer.execute("INSERT INTO notes VALUES ('x')")
                    writer.execute("COMMIT")
                    writer.close()
        except BaseException as exc:
            reader_errors.append(exc)
        finally:
            conn.close()

    thread = threading.Thread(target=reader)
    thread.start()
    c = client(proxy)
    try:
        for start in range(0, 200, 20):  # bounded: 200 requests, 20 at a time
            results = await asyncio.gather(
                *(c.chat(model="llama2", messages=USER) for _ in range(20)), return_exceptions=True
            )
            assert not [r for r in results if isinstance(r, BaseException)], start
    finally:
        stop.set()
        thread.join()
    assert reader_errors == [] and reads > 0
    rows = await proxy.wait_rows(201)
    assert len(rows) == 201
    assert sum(1 for r in rows if r["endpoint"] == "/api/chat" and r["response"] == "The sky is blue.") == 200
    assert read_rows(proxy.db, 201)[-1]["id"] == 201


async def test_model_management_passes_through(
    proxy: Proxy, ollama_double: tuple[OllamaDouble, str], tmp_path: Path
) -> None:
    double, _ = ollama_double
    c = client(proxy)
    data = b"GGUF model bytes"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob = tmp_path / "model.gguf"
    blob.write_bytes(data)
    assert await c.create_blob(blob) == digest  # uploads with POST
    assert double.blobs == {digest: data}
    async with aiohttp.ClientSession() as http:
        for known in (digest, "sha256:" + "0" * 64):  # "do you have it?" as clients ask before uploading
            async with http.head(f"{proxy.url}/api/blobs/{known}") as resp:
                assert resp.status == (200 if known == digest else 404)
    assert [p for p in await collect(c.create(model="mine", from_="llama3.2", stream=True))][-1] == "success"
    assert [p for p in await collect(c.push("llama2", stream=True))][-1] == "success"
    assert (await c.copy("llama2", "backup")).status == "success"
    assert (await c.delete("llama2")).status == "success"  # mapped: llama3.2 is deleted
    with pytest.raises(ollama.ResponseError) as caught:
        await c.delete("nothing")
    assert caught.value.status_code == 404
    wrong = f"{proxy.url}/api/blobs/sha256:{'0' * 64}"  # well-formed, but not the data's digest
    async with aiohttp.ClientSession() as http, http.post(wrong, data=b"x") as resp:
        assert resp.status == 400 and (await resp.json())["error"] == "digest mismatch"
    rows = await proxy.wait_rows(9)
    assert [(r["endpoint"], r["method"], r["status_code"]) for r in rows] == [
        ("/api/blobs/{digest}", "POST", 201), ("/api/blobs/{digest}", "HEAD", 200),
        ("/api/blobs/{digest}", "HEAD", 404), ("/api/create", "POST", 200), ("/api/push", "POST", 200),
        ("/api/copy", "POST", 200), ("/api/delete", "DELETE", 200), ("/api/delete", "DELETE", 404),
        ("/api/blobs/{digest}", "POST", 400),
    ]  # fmt: skip
    assert double.requests[-3] == ("/api/delete", {"model": "llama3.2"})


async def collect(stream: Any) -> list[str]:
    return [p.status async for p in await stream]


async def test_an_error_line_mid_stream_is_recorded_as_the_translating_backend_records_it(
    make_proxy: MakeProxy,
) -> None:
    # Ollama reports a failure after the 200 header as an {"error"} line. The row
    # follows the one rule: the error, with status 500 as no other is named.
    async def breaks(request: raw_backend.RawRequest, writer: asyncio.StreamWriter) -> bool:
        first = b'{"model":"llama3.2","created_at":"2026-12-01T00:00:00Z",'
        first += b'"message":{"role":"assistant","content":"The"},"done":false}\n'
        error = b'{"error":"llama runner process has terminated"}\n'
        writer.write(raw_backend.head(content_type="application/x-ndjson", Transfer_Encoding="chunked"))
        writer.write(raw_backend.chunk(first) + raw_backend.chunk(error) + b"0\r\n\r\n")
        await writer.drain()
        return False

    async with raw_backend.raw_backend(breaks) as backend:
        proxy = await make_proxy(backend.url)
        stream = await ollama.AsyncClient(host=proxy.url).chat(model="llama3.2", messages=USER, stream=True)
        with pytest.raises(ollama.ResponseError) as caught:
            async for _ in stream:
                pass
        assert "terminated" in caught.value.error
        [row] = await proxy.wait_rows(1)
    assert row["status_code"] == 500 and row["error"] == "llama runner process has terminated"
    assert row["response"] == "The"


async def test_newer_probe_routes_pass_through(proxy: Proxy) -> None:
    """HEAD /api/tags, HEAD /api/version and GET /api/status reach Ollama as they are."""
    http = client(proxy)._client  # ollama-python has no call for these
    for path in ("/api/tags", "/api/version"):
        resp = await http.head(path)
        assert resp.status_code == 200 and resp.content == b""
    resp = await http.get("/api/status")
    assert resp.json() == {"cloud": {"disabled": False, "source": "default"}}
    rows = await proxy.wait_rows(3)
    assert [(r["method"], r["endpoint"], r["status_code"]) for r in rows] == [
        ("HEAD", "/api/tags", 200), ("HEAD", "/api/version", 200), ("GET", "/api/status", 200),
    ]  # fmt: skip


async def test_newer_fields_pass_through_unchanged(
    proxy: Proxy, ollama_double: tuple[OllamaDouble, str]
) -> None:
    """dimensions, truncate, shift and think levels reach Ollama as the client sent them."""
    c = client(proxy)
    await c.embed(model="nomic-embed-text", input="a", dimensions=2, truncate=False)
    await c.chat(model="llama2", messages=USER, think="max", stream=False)
    generate = {"model": "llama2", "prompt": "x", "stream": False, "truncate": True, "shift": False}
    assert (await c._client.post("/api/generate", json=generate)).status_code == 200
    sent = [body for _, body in ollama_double[0].requests if body is not None]
    assert (sent[0]["dimensions"], sent[0]["truncate"]) == (2, False)
    assert sent[1]["think"] == "max"
    assert (sent[2]["truncate"], sent[2]["shift"]) == (True, False)
