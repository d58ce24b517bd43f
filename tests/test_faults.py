"""The fault suite: the real ``llm-proxy serve`` against hostile clients and cruel backends.

Every test starts the real process in front of a raw-socket backend
(:mod:`tests.raw_backend`), does something a hostile peer would, and checks
three things: what the client saw, that the process is still up, and that the
database holds one row for every request sent. :data:`TALLY` adds those up
over the whole suite, and the last test checks the sums.
"""

from __future__ import annotations

import asyncio
import gzip
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from . import raw
from .process import Served, serve
from .raw_backend import RawRequest, chunk, head, raw_backend, whole

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
TAGS = orjson.dumps({"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest", "size": 1}]})
# Requests sent and rows found, over every test of this module.
TALLY = {"sent": 0, "rows": 0}


def done_line(counts: bool = True, **extra: Any) -> bytes:
    """Ollama's final chat object (``counts``: with its token counts)."""
    obj = {
        "model": "llama3.2", "created_at": "2026-12-01T00:00:00Z",
        "message": {"role": "assistant", "content": "hello"}, "done": True, "done_reason": "stop",
        **({"prompt_eval_count": 3, "eval_count": 2} if counts else {}), **extra,
    }  # fmt: skip
    return orjson.dumps(obj)


async def ollama_like(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    """A well-behaved Ollama: tags, version and whole chat answers, kept alive."""
    if request.path == "/api/tags":
        writer.write(whole(TAGS))
    elif request.path == "/api/version":
        writer.write(whole(b'{"version":"0.12.6"}'))
    else:
        writer.write(whole(done_line()))
    await writer.drain()
    return True


def rows(db: Path) -> list[dict[str, Any]]:
    """Every row of ``logs``, read with sqlite3 as a user would."""
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM logs ORDER BY id")]
    finally:
        conn.close()


async def rows_when(db: Path, count: int, within: float = 10.0) -> list[dict[str, Any]]:
    """The rows once ``count`` are there (or what is there after ``within`` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            found = rows(db)
        except sqlite3.OperationalError:
            found = []
        if len(found) >= count or loop.time() > deadline:
            return found
        await asyncio.sleep(0.05)


async def settle(served: Served, sent: int) -> list[dict[str, Any]]:
    """The process is alive and the database holds one row per request sent."""
    async with aiohttp.ClientSession() as http, http.get(f"{served.url}/health/live") as resp:
        # Any answer will do (behind keys it is 401, after a brute force 429): it answers.
        assert resp.status in (200, 401, 429), "the proxy stopped answering"
    assert served.proc.returncode is None
    found = await rows_when(served.db, sent)
    TALLY["sent"] += sent
    TALLY["rows"] += len(found)
    assert len(found) == sent, f"{sent} requests sent, {len(found)} rows: {found}"
    return found


# -- hostile clients -----------------------------------------------------------------------

HOSTILE_VALUES = [bytes(range(0x80, 0x100)), b"x\xff", b"\xc3", b"ok\xed\xa0\x80end"]


@pytest.mark.parametrize("header", ["User-Agent", "X-Request-Id"])
@pytest.mark.parametrize("keys", [False, True], ids=["open", "behind-keys"])
async def test_bytes_that_are_not_utf8_in_stored_headers_never_stop_the_trail(
    tmp_path: Path, header: str, keys: bool
) -> None:
    sections: dict[str, Any] = {}
    if keys:  # answered 401 before the backend: the row is made all the same
        sections["auth"] = {"keys": [{"name": "home", "key": "sk-right"}]}
    async with raw_backend(ollama_like) as backend, serve(tmp_path, backend.url, **sections) as served:
        sent = 0
        for value in HOSTILE_VALUES:
            answer = await raw.send(served.url, raw.request("GET", b"/api/tags", {header.encode(): value}))
            assert answer.status == (401 if keys else 200)
            sent += 1
        plain = {b"User-Agent": b"plain", b"Authorization": b"Bearer sk-right"}
        answer = await raw.send(served.url, raw.request("GET", b"/api/tags", plain))
        sent += 1
        assert answer.status == 200 and orjson.loads(answer.body)["models"]
        found = await settle(served, sent)
    column = {"User-Agent": "user_agent", "X-Request-Id": "request_id"}[header]
    stored = [r[column] for r in found[: len(HOSTILE_VALUES)]]
    assert all(isinstance(v, str) and v for v in stored), stored
    assert "\ufffd" in stored[1] or "\\xff" in stored[1], stored[1]  # the bad byte, shown as replaced
    assert found[-1]["user_agent"] == "plain" and found[-1]["status_code"] == 200


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_control_characters_in_model_names_and_paths_forge_no_access_line(
    tmp_path: Path, log_format: str
) -> None:
    forged = "x\n2026-12-01 00:00:00,000 INFO llm_proxy.access: GET /api/tags 200 id=FORGED\r\x1b[2J"
    async with (
        raw_backend(ollama_like) as backend,
        serve(tmp_path, backend.url, server={"log_format": log_format}) as served,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(f"{served.url}/api/chat", json={**CHAT, "model": forged}) as resp:
            await resp.read()
        answer = await raw.send(served.url, raw.request("GET", b"/api/tags%0aFORGED%0d%0a", {}))
        assert answer.status == 404
        hostile_id = {b"X-Request-Id": b"a\xc2\x9bb\xff"}  # C1 CSI, then a bad byte
        answer = await raw.send(served.url, raw.request("GET", b"/api/tags", hostile_id))
        assert answer.status == 200
        # aiohttp's parser refuses other control characters in a header: 400, no row,
        # as README.md lists; no line of it may be forged either.
        escape = {b"X-Request-Id": b"a\x1b[31mb"}
        answer = await raw.send(served.url, raw.request("GET", b"/api/tags", escape))
        assert answer.status == 400
        found = await settle(served, 3)
        await asyncio.sleep(0.2)  # access lines are written by a thread every 20 ms
        access = [line for line in served.stderr if "llm_proxy.access" in line and "/health/" not in line]
    assert len(access) == 3, access  # one line a request: chat, the 404, the hostile id
    assert not any(line.startswith("2026-12-01 00:00:00") for line in served.stderr)
    assert not any("\x1b" in line for line in served.stderr)
    assert found[0]["model"] == forged  # the trail keeps what was sent, exactly


async def test_idle_connection_flood_does_not_keep_a_new_client_out(tmp_path: Path) -> None:
    cap = 40
    async with (
        raw_backend(ollama_like) as backend,
        serve(tmp_path, backend.url, server={"max_connections": cap}) as served,
    ):
        host, port = served.url.removeprefix("http://").split(":")
        idle = []
        try:
            for _ in range(cap * 5):  # bounded: five times the cap, never sending a byte
                idle.append(await asyncio.open_connection(host, int(port)))
            async with (
                aiohttp.ClientSession() as http,
                asyncio.timeout(15),
                http.get(f"{served.url}/api/tags") as resp,
            ):
                assert resp.status == 200
                assert orjson.loads(await resp.read())["models"]
        finally:
            for _, writer in idle:
                writer.close()
        await settle(served, 1)


# -- cruel backends ------------------------------------------------------------------------


async def test_gzip_answer_reaches_the_client_decoded(tmp_path: Path) -> None:
    async def gzipped(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(whole(gzip.compress(TAGS), Content_Encoding="gzip"))
        await writer.drain()
        return True

    async with (
        raw_backend(gzipped) as backend,
        serve(tmp_path, backend.url) as served,
        aiohttp.ClientSession(auto_decompress=False) as http,
        http.get(f"{served.url}/api/tags") as resp,
    ):
        body = await resp.read()
        assert resp.status == 200
        assert "Content-Encoding" not in resp.headers
        assert orjson.loads(body)["models"][0]["name"] == "llama3.2:latest"
        [row] = await settle(served, 1)
    assert orjson.loads(row["response_body"])["models"][0]["name"] == "llama3.2:latest"


async def test_a_pull_is_never_sent_twice_when_its_kept_alive_connection_drops(tmp_path: Path) -> None:
    async def drops_posts(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        if request.method == "POST":
            return False  # read it, then close without a byte of answer
        return await ollama_like(request, writer)

    async with (
        raw_backend(drops_posts) as backend,
        serve(tmp_path, backend.url) as served,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{served.url}/api/version") as resp:
            assert resp.status == 200  # the proxy now holds a kept-alive connection
        async with http.post(f"{served.url}/api/pull", json={"model": "llama3.2", "stream": False}) as resp:
            assert resp.status == 502
            assert "error" in orjson.loads(await resp.read())
        found = await settle(served, 2)
    assert backend.seen("POST", "/api/pull") == 1, backend.requests
    assert found[1]["status_code"] == 502 and found[1]["error"]


@pytest.mark.parametrize("stream", [False, True])
async def test_malformed_chunking_ends_in_an_error_the_client_and_the_row_see(
    tmp_path: Path, stream: bool
) -> None:
    async def bad_chunks(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        ndjson = "application/x-ndjson" if stream else "application/json"
        writer.write(head(content_type=ndjson, Transfer_Encoding="chunked"))
        writer.write(
            chunk(b'{"model":"llama3.2","message":{"role":"assistant","content":"he"},"done":false}\n')
        )
        await writer.drain()
        writer.write(b"zz\r\nnot a chunk\r\n")
        await writer.drain()
        return False

    async with (
        raw_backend(bad_chunks) as backend,
        serve(tmp_path, backend.url) as served,
        aiohttp.ClientSession() as http,
        http.post(f"{served.url}/api/chat", json={**CHAT, "stream": stream}) as resp,
    ):
        body = await resp.read()
        [row] = await settle(served, 1)
    last = orjson.loads(body.splitlines()[-1])
    assert "error" in last, body
    if not stream:
        assert resp.status == 502
    assert row["error"] and row["status_code"] >= 500


async def test_an_endless_answer_ends_when_its_client_leaves(tmp_path: Path) -> None:
    backend_done = asyncio.Event()

    async def endless(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(head(content_type="application/x-ndjson", Transfer_Encoding="chunked"))
        line = b'{"model":"llama3.2","message":{"role":"assistant","content":"la "},"done":false}\n'
        try:
            for _ in range(200_000):  # bounded; the proxy must stop reading long before
                writer.write(chunk(line))
                await writer.drain()
                await asyncio.sleep(0.001)
        except ConnectionError:
            pass
        finally:
            backend_done.set()
        return False

    async with raw_backend(endless) as backend, serve(tmp_path, backend.url) as served:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{served.url}/api/chat", json={**CHAT, "stream": True}) as resp,
        ):
            for _ in range(20):
                assert b"la" in await resp.content.readline()
            # Leaving the block closes the connection mid-stream.
        async with asyncio.timeout(10):
            await backend_done.wait()  # the proxy let go of the backend
        [row] = await settle(served, 1)
    assert row["status_code"] == 499 and row["error"] == "client disconnected"
    assert row["response"].startswith("la la ")


async def test_a_huge_whole_answer_reaches_the_client_and_a_capped_copy_the_row(tmp_path: Path) -> None:
    content = b"A" * (48 * 1024 * 1024)

    async def huge(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        body = done_line(message={"role": "assistant", "content": content.decode()})
        writer.write(whole(body))
        await writer.drain()
        return True

    async with (
        raw_backend(huge) as backend,
        serve(tmp_path, backend.url, database={"max_body_kb": 256}) as served,
        aiohttp.ClientSession() as http,
        http.post(f"{served.url}/api/chat", json=CHAT) as resp,
    ):
        body = await resp.read()
        assert resp.status == 200
        assert orjson.loads(body)["message"]["content"] == content.decode()
        [row] = await settle(served, 1)
    stored = sum(len(row[c] or "") for c in ("response", "response_body"))
    assert stored <= 2 * (256 * 1024 + 1024), stored
    assert row["status_code"] == 200
    assert orjson.loads(row["truncated"])  # the row says its copy was cut


@pytest.mark.parametrize(
    "usage",
    [
        {"eval_count": 2**63, "prompt_eval_count": 3},
        {"eval_count": 2**64 - 1, "prompt_eval_count": -5},
        {"eval_count": -(2**63) - 1, "prompt_eval_count": 1e300},
    ],
    ids=["2**63", "u64-max-and-negative", "below-i64-and-float"],
)
async def test_absurd_usage_numbers_break_no_row_metric_or_access_line(
    tmp_path: Path, usage: dict[str, Any]
) -> None:
    # Written as text: orjson itself cannot write numbers below -2**63.
    numbers = b"".join(b',"%s":%s' % (k.encode(), repr(v).encode()) for k, v in usage.items())
    body = done_line(counts=False)[:-1] + numbers + b"}"

    async def absurd(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(whole(body))
        await writer.drain()
        return True

    async with (
        raw_backend(absurd) as backend,
        serve(tmp_path, backend.url) as served,
        aiohttp.ClientSession() as http,
    ):
        for _ in range(2):
            async with http.post(f"{served.url}/api/chat", json=CHAT) as resp:
                assert resp.status == 200
                assert orjson.loads(await resp.read())["message"]["content"] == "hello"
        async with http.get(f"{served.url}/metrics") as resp:
            assert resp.status == 200
            assert "llm_proxy_requests_total" in await resp.text()
        found = await settle(served, 2)
        await asyncio.sleep(0.2)
        access = [line for line in served.stderr if "llm_proxy.access" in line and "/api/chat" in line]
    assert len(access) == 2, served.stderr
    for row in found:
        assert row["status_code"] == 200 and row["response"] == "hello"
        for column in ("prompt_tokens", "completion_tokens"):
            value = row[column]
            assert value is None or 0 <= value < 2**63


async def test_a_50_mib_sse_frame_on_v1_is_relayed_whole(tmp_path: Path) -> None:
    text = "B" * (50 * 1024 * 1024)
    event = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    frame = b"data: " + orjson.dumps(event) + b"\n\n"
    end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}

    async def one_big_frame(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(head(content_type="text/event-stream", Transfer_Encoding="chunked"))
        for start in range(0, len(frame), 65536):
            writer.write(chunk(frame[start : start + 65536]))
            await writer.drain()
        writer.write(chunk(b"data: " + orjson.dumps(end) + b"\n\ndata: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
        return True

    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with (
        raw_backend(one_big_frame) as backend,
        serve(tmp_path, backend.url) as served,
        aiohttp.ClientSession() as http,
        http.post(f"{served.url}/v1/chat/completions", json=body) as resp,
    ):
        received = await resp.read()
        assert resp.status == 200
        [row] = await settle(served, 1)
    assert received.startswith(frame) and received.endswith(b"data: [DONE]\n\n")
    assert row["status_code"] == 200 and row["api"] == "openai"


async def test_a_client_that_leaves_a_whole_answer_is_recorded_as_499(tmp_path: Path) -> None:
    async def slow(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(1.5)
        writer.write(whole(done_line()))
        await writer.drain()
        return True

    async with raw_backend(slow) as backend, serve(tmp_path, backend.url) as served:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as http:
            with pytest.raises(TimeoutError):
                async with http.post(f"{served.url}/api/chat", json=CHAT) as resp:
                    await resp.read()
        await asyncio.sleep(2)  # the answer comes, and has nobody to go to
        [row] = await settle(served, 1)
    assert row["status_code"] == 499 and row["error"] == "client disconnected"


# -- the database ---------------------------------------------------------------------------


async def test_a_deleted_database_is_recreated_and_loses_no_row(tmp_path: Path) -> None:
    async with (
        raw_backend(ollama_like) as backend,
        serve(tmp_path, backend.url) as served,
        aiohttp.ClientSession() as http,
    ):
        for _ in range(3):
            async with http.get(f"{served.url}/api/tags") as resp:
                assert resp.status == 200
        assert len(await rows_when(served.db, 3)) == 3
        for suffix in ("", "-wal", "-shm"):  # as `rm llm_proxy.db*` would
            Path(f"{served.db}{suffix}").unlink(missing_ok=True)  # noqa: ASYNC240
        for _ in range(4):
            async with http.get(f"{served.url}/api/tags") as resp:
                assert resp.status == 200
        found = await rows_when(served.db, 4)
        async with http.get(f"{served.url}/health/ready") as resp:
            ready = await resp.json()
        TALLY["sent"] += 3  # the three rows in the deleted file were written: the user deleted them
        TALLY["rows"] += 3
        await settle(served, 4)
        code = await served.stop()
    assert code == 0
    assert [r["endpoint"] for r in found] == ["/api/tags"] * 4
    assert ready["checks"]["database"] == "ok", ready
    assert any("database" in line and ("deleted" in line or "gone" in line) for line in served.stderr)


# -- requests that must not reach the backend as sent ----------------------------------------


async def test_path_parameters_cannot_climb_out_of_their_route(tmp_path: Path) -> None:
    async with raw_backend(ollama_like) as backend, serve(tmp_path, backend.url) as served:
        sent = 0
        for path in ("/v1/models/../../api/delete", "/v1/models/..%2F..%2Fapi%2Fdelete", "/v1/models/a/../b"):
            answer = await raw.send(served.url, raw.request("GET", path.encode(), {}))
            assert answer.status in (400, 404), (path, answer.status)
            sent += 1
        await settle(served, sent)
    climbed = [r.path for r in backend.requests if not r.path.startswith("/v1/models/")]
    assert climbed == [], climbed
    assert not any(".." in r.path for r in backend.requests)


@pytest.mark.parametrize(
    ("options", "field"),
    [({"num_predict": 1e30}, "num_predict"), ({"top_k": 2**64}, "top_k"), ({"seed": 2**70}, "seed")],
)
async def test_numeric_options_out_of_range_are_a_400_naming_the_field(
    tmp_path: Path, options: dict[str, Any], field: str
) -> None:
    async def llama(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        if request.path == "/v1/models":
            writer.write(whole(b'{"object":"list","data":[{"id":"llama3.2","object":"model"}]}'))
        else:
            writer.write(whole(b'{"error":{"code":404,"message":"no"}}', status=404))
        await writer.drain()
        return True

    async with (
        raw_backend(llama) as backend,
        serve(tmp_path, backend.url, backend={"type": "openai", "endpoint": backend.url}) as served,
        aiohttp.ClientSession() as http,
        http.post(f"{served.url}/api/chat", json={**CHAT, "options": options}) as resp,
    ):
        answer = await resp.json()
        [row] = await settle(served, 1)
    assert resp.status == 400, answer
    assert field in answer["error"]
    assert row["status_code"] == 400
    assert not any(r.path.startswith("/v1/chat") for r in backend.requests)


async def test_wrong_key_guesses_are_slowed_down_per_address(tmp_path: Path) -> None:
    auth = {"keys": [{"name": "home", "key": "sk-right"}]}
    async with (
        raw_backend(ollama_like) as backend,
        serve(tmp_path, backend.url, auth=auth) as served,
        aiohttp.ClientSession() as http,
    ):
        statuses = []
        for n in range(40):  # bounded: a brute force of forty guesses
            headers = {"Authorization": f"Bearer sk-guess-{n}"}
            async with http.get(f"{served.url}/api/tags", headers=headers) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    retry_after = resp.headers.get("Retry-After")
                    assert "error" in await resp.json()
        found = await settle(served, len(statuses))
    assert statuses[0] == 401 and 429 in statuses, statuses
    assert retry_after is not None and int(retry_after) >= 1
    assert [r["status_code"] for r in found] == statuses
    assert backend.requests == []


def test_zz_rows_written_equal_requests_sent_over_the_whole_suite() -> None:
    """Runs last (file order): the sums of every test above."""
    assert TALLY["sent"] > 0
    assert TALLY["rows"] == TALLY["sent"], TALLY
