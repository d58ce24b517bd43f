"""Hostile request bodies for every Ollama endpoint, and a live proxy stack to throw them at.

Used by ``tests/test_fuzz.py`` (bounded example counts) and ``bench/fuzz.py``
(a longer campaign). The stack is real: the test doubles and a proxy in front
of each, served on 127.0.0.1 from an event loop in a background thread, so a
plain synchronous client (``http.client``) can send any bytes at all.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web
from hypothesis import strategies as st

from llm_proxy import config as config_mod
from llm_proxy.api.ollama import ROUTES
from llm_proxy.server.app import create_app

from .llama_double import LlamaServerDouble
from .ollama_double import OllamaDouble

# "llama2" is mapped to llama3.2, so its bodies are re-encoded on the way to the backend.
MODELS = ("llama3.2", "llama3.2:latest", "llama2", "smollm2", "nomic-embed-text")
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
# Routes a client may send garbage to, with the path used to reach them.
TARGETS = [(method, path) for method, path in ROUTES]
MANAGEMENT = {"/api/push", "/api/create", "/api/copy", "/api/delete", "/api/blobs/{digest}"}
TEN_MB = 10 * 1024 * 1024

# -- strategies -------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),  # beyond 64 bits: orjson makes them floats
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=1e300, max_value=1.7e308),
    st.text(max_size=40),
    st.sampled_from(["", "json", "user", "assistant", "tool", "low", "-1s", "5m", *MODELS, PNG]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


def _fields(junk: bool) -> dict[str, dict[str, st.SearchStrategy[Any]]]:
    """Per route, a strategy for each field: plausible values, or (``junk``) sometimes anything."""

    def maybe(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(plausible, plausible, plausible, plausible, json_values) if junk else plausible

    def loose(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return json_values if junk else plausible

    text = st.text(max_size=30)
    image = st.sampled_from([PNG, f"data:image/png;base64,{PNG}"])
    images = maybe(st.lists(st.one_of(image, st.text(max_size=12)) if junk else image, max_size=2))
    tool_calls = maybe(
        st.lists(st.fixed_dictionaries({"function": maybe(st.fixed_dictionaries(
            {"name": maybe(st.text(min_size=1, max_size=8))},
            optional={"arguments": maybe(st.dictionaries(st.text(max_size=5), json_values, max_size=3))},
        ))}), max_size=2)
    )  # fmt: skip
    message = maybe(
        st.fixed_dictionaries(
            {"role": maybe(st.sampled_from(["system", "user", "assistant", "tool"]))},
            optional={
                "content": maybe(text),
                "images": images,
                "thinking": maybe(st.text(max_size=10)),
                "tool_calls": tool_calls,
                "tool_name": maybe(st.text(max_size=10)),
            },
        )
    )
    numbers = st.one_of(st.integers(0, 10**6), st.floats(0, 2, allow_nan=False))
    options = maybe(
        st.dictionaries(
            st.sampled_from(["temperature", "num_ctx", "top_k", "seed", "num_predict", "repeat_penalty"]),
            loose(numbers),
            max_size=4,
        )
    )
    model = maybe(st.sampled_from(MODELS))
    stream = maybe(st.booleans())
    common = {
        "model": model,
        "stream": stream,
        "options": options,
        "keep_alive": maybe(st.one_of(st.integers(-1, 3600), st.sampled_from(["-1s", "5m", "300.0s"]))),
        "format": maybe(st.one_of(st.sampled_from(["", "json"]), st.just({"type": "object"}))),
        "think": maybe(st.one_of(st.booleans(), st.sampled_from(["low", "medium", "high", "max"]))),
        "unknown_field": json_values,  # passed through whatever it holds
    }
    return {
        "/api/chat": {**common, "messages": maybe(st.lists(message, max_size=3)),
                      "tools": maybe(st.lists(st.dictionaries(st.text(max_size=5), text), max_size=2))},
        "/api/generate": {**common, "prompt": maybe(text), "system": maybe(st.text(max_size=10)),
                          "images": images, "raw": maybe(st.booleans()), "suffix": loose(text),
                          "context": maybe(st.lists(st.integers(0, 2**31), max_size=4))},
        "/api/embed": {**common, "input": maybe(st.one_of(text, st.lists(st.text(max_size=8)))),
                       "dimensions": loose(st.integers(1, 4096)), "truncate": loose(st.booleans())},
        "/api/embeddings": {**common, "prompt": maybe(text)},
        "/api/show": {"model": model, "verbose": loose(st.booleans())},
        "/api/pull": {"model": model, "stream": stream, "insecure": loose(st.booleans())},
        "/api/push": {"model": model, "stream": stream, "insecure": loose(st.booleans())},
        "/api/create": {"model": model, "from": loose(st.sampled_from(MODELS)), "stream": stream,
                        "parameters": loose(st.dictionaries(st.text(max_size=5), numbers, max_size=2))},
        "/api/copy": {"source": maybe(st.sampled_from(MODELS)), "destination": loose(text)},
        "/api/delete": {"model": model},
    }  # fmt: skip


PLAUSIBLE = _fields(junk=False)
FIELDS = _fields(junk=True)


def _encode(value: Any) -> bytes:
    # The stdlib encoder writes integers of any size (orjson stops at 64 bits).
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def bodies(draw: st.DrawFn, route: str) -> bytes:
    """One request body for ``route``: plausible, wrong-typed, or broken at the byte level."""
    fields = FIELDS.get(route, {"unknown_field": json_values})
    shape = st.fixed_dictionaries({}, optional=fields)
    kind = draw(st.sampled_from([
        "plausible", "plausible", "object", "object", "object", "value", "bytes", "truncated",
        "literal", "utf8", "nested", "nested", "empty",
    ]))  # fmt: skip
    if kind == "plausible":  # well-formed: these reach the backend and exercise the relay
        optional = dict(PLAUSIBLE.get(route, {}))
        required = {"model": optional.pop("model")} if "model" in optional else {}
        return _encode(draw(st.fixed_dictionaries(required, optional=optional)))
    if kind == "object":
        return _encode(draw(shape))
    if kind == "value":
        return _encode(draw(json_values))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "empty":
        return draw(st.sampled_from([b"", b" ", b"\n", b"{}", b"null", b"[]", b'""']))
    encoded = _encode(draw(shape))
    if kind == "truncated":
        return encoded[: draw(st.integers(0, max(0, len(encoded) - 1)))]
    if kind == "literal":  # what Python's json writes for non-finite floats, and overflowing ones
        literal = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400", b"1" * 400]))
        key = draw(st.sampled_from([b"model", b"options", b"temperature", b"keep_alive", b"x"]))
        return encoded[:-1] + (b", " if len(encoded) > 2 else b"") + b'"' + key + b'": ' + literal + b"}"
    if kind == "utf8":
        junk = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00"]))
        at = draw(st.integers(0, len(encoded)))
        return encoded[:at] + junk + encoded[at:]
    # Nested: on both sides of the parser's limit (1024) and the writer's (254),
    # in a request that gets re-encoded (mapped model) or translated (openai).
    depth = draw(st.sampled_from([1, 100, 239, 240, 241, 253, 254, 255, 256, 500, 1022, 1023, 1024, 1500]))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    model = draw(st.sampled_from(["llama2", "llama3.2", "smollm2"])).encode()
    key = draw(st.sampled_from([b"options", b"format", b"tools", b"unknown_field"]))
    return (
        b'{"model": "'
        + model
        + b'", "messages": [{"role": "user", "content": "hi"}], "prompt": "hi", "'
        + key
        + b'": '
        + opener * depth
        + b"1"
        + closer * depth
        + b"}"
    )


digests = st.one_of(
    st.just("sha256:" + "a" * 64),
    st.text(min_size=1, max_size=80),
    st.sampled_from(["..%2F..%2Fapi%2Fdelete", "sha256:", "%00", "sha256-" + "F" * 64]),
)


def path_for(route: str, digest: str | None = None) -> str:
    """The request path for ``route``, with a (possibly hostile) digest filled in."""
    if "{digest}" in route:
        value = digest if digest is not None else "sha256:" + "a" * 64
        return route.replace("{digest}", quote(value, safe="%:"))
    return route


# -- the live stack ---------------------------------------------------------------


@dataclass
class Answer:
    """What came back for one request."""

    status: int
    content_type: str
    body: bytes


@dataclass
class Stack:
    """A proxy in front of a double, running in a background thread's event loop."""

    url: str
    db: Path
    backend_type: str
    host: str = "127.0.0.1"
    port: int = 0
    sent: dict[str, int] = field(default_factory=dict)  # request id → status answered
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def send(self, method: str, path: str, body: bytes) -> Answer:
        """Send one request with raw bytes and read the whole answer."""
        request_id = f"fuzz-{self.backend_type}-{next(self._ids)}"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.sent[request_id] = resp.status
        return Answer(resp.status, resp.getheader("Content-Type") or "", data)

    def rows(self) -> dict[str, int]:
        """request id → status_code of every row written so far."""
        conn = sqlite3.connect(self.db, timeout=10)
        try:
            return dict(
                conn.execute("SELECT request_id, status_code FROM logs WHERE request_id LIKE 'fuzz-%'")
            )
        except sqlite3.OperationalError:
            return {}
        finally:
            conn.close()

    def wait_for_rows(self, within: float = 30.0) -> dict[str, int]:
        """The rows, once one exists for every request sent (or ``within`` seconds have passed)."""
        deadline = time.monotonic() + within
        while True:
            rows = self.rows()
            if set(self.sent) <= set(rows) or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)


def check(stack: Stack, method: str, route: str, answer: Answer) -> None:
    """The contract for client garbage: no 500, errors are ``{"error": ...}``, streams are NDJSON."""
    allowed_5xx = {501} if stack.backend_type == "openai" and route in MANAGEMENT else set()
    assert answer.status < 500 or answer.status in allowed_5xx, (answer.status, answer.body[:300])
    if method == "HEAD":
        assert answer.body == b""  # HTTP: a HEAD answer has headers only
    elif answer.status >= 400:
        assert answer.content_type.startswith("application/json"), answer.content_type
        error = orjson.loads(answer.body)
        assert isinstance(error, dict) and isinstance(error.get("error"), str) and error["error"], error
    elif answer.content_type.startswith("application/x-ndjson"):
        lines = answer.body.split(b"\n")
        assert lines[-1] == b"", "an NDJSON stream ends with a newline"
        for line in lines[:-1]:
            assert isinstance(orjson.loads(line), dict)


@contextmanager
def live_stacks(tmp: Path) -> Iterator[dict[str, Stack]]:
    """Both proxies (ollama and openai backends) in front of their doubles, for the ``with`` body."""
    loop = asyncio.new_event_loop()
    runners: list[web.AppRunner] = []
    thread = threading.Thread(target=loop.run_forever, name="fuzz-stack", daemon=True)
    thread.start()

    async def serve(app: web.Application) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return int(runner.addresses[0][1])

    async def start() -> dict[str, Stack]:
        stacks = {}
        for backend_type, double_app in (
            ("ollama", OllamaDouble().app()),
            ("openai", LlamaServerDouble().app()),
        ):
            double_port = await serve(double_app)
            db = tmp / f"fuzz-{backend_type}.db"
            endpoint = f"http://127.0.0.1:{double_port}"
            config = config_mod.from_dict({
                "backend": {"type": backend_type, "endpoint": endpoint, "timeout": 30},
                "database": {"path": str(db)},
                "models": {"mappings": {"llama2": "llama3.2"}},
            })  # fmt: skip
            port = await serve(create_app(config))
            stacks[backend_type] = Stack(f"http://127.0.0.1:{port}", db, backend_type, port=port)
        return stacks

    async def stop() -> None:
        for runner in reversed(runners):
            await runner.cleanup()

    try:
        stacks = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
        yield stacks
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
