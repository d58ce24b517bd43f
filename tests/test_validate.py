"""Edge validation: wrong types get 400 naming the field, before the backend; unknown fields pass."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import ollama
import orjson
import pytest
from yarl import URL

from llm_proxy.api import validate
from llm_proxy.api.body import MAX_DEPTH
from llm_proxy.audit.exchange import COLUMNS, Exchange
from llm_proxy.errors import BadRequest

from .conftest import Proxy
from .llama_double import LlamaServerDouble
from .ollama_double import OllamaDouble

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
M = "llama3.2"
USER = [{"role": "user", "content": "hi"}]

BAD = [
    ("/api/generate", {"model": M, "prompt": "a cat", "width": 0}, "'width' must be an integer above 0"),
    ("/api/generate", {"model": M, "prompt": "a cat", "steps": "20"}, "'steps' must be an integer"),
    ("/api/chat", {"model": M, "messages": USER, "top_logprobs": 30},
     "'top_logprobs' must be between 0 and 20"),
    ("/api/chat", {"model": M, "messages": "hi"}, "'messages' must be a list, got a string"),
    ("/api/chat", {"model": M, "messages": ["hi"]}, "'messages[0]' must be an object, got a string"),
    ("/api/chat", {"model": M, "messages": [{"content": "x"}]},
     "'messages[0].role' must be a string, got null"),
    ("/api/chat", {"model": M, "messages": [*USER, {"role": 1}]}, "'messages[1].role' must be a string"),
    ("/api/chat", {"model": M, "messages": [{"role": "user", "content": ["x"]}]},
     "'messages[0].content' must be a string, got a list"),
    ("/api/chat", {"model": M, "messages": [{"role": "user", "images": "abc"}]},
     "'messages[0].images' must be a list"),
    ("/api/chat", {"model": M, "messages": [{"role": "user", "images": ["not base64!"]}]},
     "'messages[0].images[0]' must be base64 image data"),
    ("/api/chat", {"model": M, "messages": [{"role": "user", "images": [7]}]},
     "'messages[0].images[0]' must be a base64 string, got a number"),
    ("/api/chat", {"model": M, "messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]},
     "'messages[0].tool_calls[0].function.name' must be a string"),
    ("/api/chat", {"model": M, "messages": [{"role": "assistant", "tool_calls": [{"function":
     {"name": "f", "arguments": [1]}}]}]},
     "'messages[0].tool_calls[0].function.arguments' must be an object"),
    ("/api/chat", {"model": M, "tools": {"type": "function"}}, "'tools' must be a list, got an object"),
    ("/api/chat", {"model": M, "tools": [1]}, "'tools[0]' must be an object"),
    ("/api/chat", {"model": M, "options": [1]}, "'options' must be an object, got a list"),
    ("/api/chat", {"model": M, "options": {"temperature": "hot"}}, "'options.temperature' must be a number"),
    ("/api/chat", {"model": M, "options": {"num_ctx": True}}, "'options.num_ctx' must be a number, got true"),
    ("/api/chat", {"model": M, "options": {"use_mmap": 1}}, "'options.use_mmap' must be true or false"),
    ("/api/chat", {"model": M, "options": {"num_predict": 1e30}},
     "'options.num_predict' must be a number from -2^63 to 2^63-1"),
    ("/api/generate", {"model": M, "options": {"top_k": float(2**64)}},
     "'options.top_k' must be a number from -2^63 to 2^63-1"),
    ("/api/embed", {"model": M, "options": {"seed": -1e19}}, "'options.seed' must be a number from -2^63"),
    ("/api/chat", {"model": M, "options": {"stop": [1]}},
     "'options.stop' must be a string or a list of strings"),
    ("/api/chat", {"model": M, "format": 5}, "'format' must be \"json\" or a JSON schema object"),
    ("/api/chat", {"model": M, "think": "very"}, "'think' must be true, false"),
    ("/api/chat", {"model": M, "keep_alive": [5]}, "'keep_alive' must be a number of seconds or a duration"),
    ("/api/chat", {"model": M, "stream": "yes"}, "'stream' must be true or false, got a string"),
    ("/api/chat", {"model": {"name": "x"}}, "'model' must be a string, got an object"),
    ("/api/generate", {"model": M, "prompt": 5}, "'prompt' must be a string, got a number"),
    ("/api/generate", {"model": M, "system": False}, "'system' must be a string, got false"),
    ("/api/generate", {"model": M, "images": ["%%%"]}, "'images[0]' must be base64 image data"),
    ("/api/generate", {"model": M, "images": [""]}, "'images[0]' must not be empty"),
    ("/api/generate", {"model": M, "context": [1, "2"]}, "'context[1]' must be an integer"),
    ("/api/generate", {"model": M, "raw": "true"}, "'raw' must be true or false"),
    ("/api/embed", {"model": M, "input": [1, 2]}, "'input' must be a string or a list of strings"),
    ("/api/embed", {"model": M, "dimensions": 1.5}, "'dimensions' must be an integer"),
    ("/api/embed", {"model": M, "truncate": "no"}, "'truncate' must be true or false"),
    ("/api/embed", {"model": M, "dimensions": 0}, "'dimensions' must be an integer above 0"),
    ("/api/chat", {"model": M, "messages": [{"role": "assistant", "tool_calls": [
        {"id": 7, "function": {"name": "f"}}]}]}, "'messages[0].tool_calls[0].id' must be a string"),
    ("/api/chat", {"model": M, "messages": [{"role": "assistant", "tool_calls": [
        {"function": {"name": "f", "index": "0"}}]}]},
     "'messages[0].tool_calls[0].function.index' must be an integer"),
    ("/api/embed", {"model": M, "dimensions": -8}, "'dimensions' must be an integer above 0"),
    ("/api/chat", {"model": M, "truncate": 1}, "'truncate' must be true or false, got a number"),
    ("/api/generate", {"model": M, "shift": "no"}, "'shift' must be true or false, got a string"),
    ("/api/embeddings", {"model": M, "prompt": ["a"]}, "'prompt' must be a string, got a list"),
    ("/api/show", {"model": M, "verbose": "yes"}, "'verbose' must be true or false"),
    ("/api/pull", {"model": M, "insecure": 1}, "'insecure' must be true or false"),
    ("/api/push", {"name": 5}, "'name' must be a string"),
    ("/api/create", {"model": M, "files": {"a.gguf": 1}}, "'files.a.gguf' must be a string"),
    ("/api/create", {"model": M, "parameters": []}, "'parameters' must be an object"),
    ("/api/copy", {"source": M, "destination": 1}, "'destination' must be a string"),
]  # fmt: skip

GOOD = [
    ("/api/chat", {"model": M, "messages": [{"role": "user", "content": "x", "images": [PNG]}]}),
    ("/api/chat", {"model": M, "messages": [{"role": "user", "images": [f"data:image/png;base64,{PNG}"]}]}),
    ("/api/chat", {"model": M, "messages": [{"role": "user", "images": [PNG[:20] + "\n" + PNG[20:]]}]}),
    ("/api/chat", {"model": M, "messages": [{"role": "assistant", "tool_calls": [
        {"function": {"name": "f", "arguments": {"a": 1}}}]}], "tools": [], "think": False,
        "keep_alive": "-1s", "options": {"num_ctx": 8192.0, "stop": "\n", "new_option": [1]},
        "format": {"type": "object"}, "stream": None}),
    ("/api/chat", {"model": M, "messages": USER, "think": "high", "keep_alive": 300, "brand_new": {"x": 1}}),
    ("/api/generate", {"model": M, "prompt": "x", "think": "max"}),
    ("/api/chat", {"model": M, "messages": USER, "truncate": False, "shift": True}),
    ("/api/chat", {"model": M, "options": {"seed": 2**63 - 1, "top_k": 2**40, "num_predict": -1}}),
    ("/api/generate", {"model": M, "prompt": "p", "context": [1, 2], "raw": True, "format": "json"}),
    ("/api/embed", {"model": M, "input": ["a", "b"], "dimensions": 3, "truncate": True}),
    ("/api/create", {"model": M, "from": M, "license": ["MIT"], "parameters": {"temperature": 1}}),
]  # fmt: skip


@pytest.mark.parametrize(("endpoint", "body", "message"), BAD)
def test_wrong_types_name_the_field(endpoint: str, body: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        validate.request(endpoint, body)
    assert caught.value.message.startswith(message), caught.value.message
    assert caught.value.status == 400


@pytest.mark.parametrize(("endpoint", "body"), GOOD)
def test_what_clients_send_passes(endpoint: str, body: dict[str, Any]) -> None:
    validate.request(endpoint, body)


@pytest.mark.parametrize(
    ("digest", "ok"),
    [("sha256:" + "a" * 64, True), ("sha256-" + "B" * 64, True), ("sha256:abc", False),
     ("..%2F..%2Fapi%2Fdelete", False), ("sha256:" + "g" * 64, False)],
)  # fmt: skip
def test_blob_digests(digest: str, ok: bool) -> None:
    if ok:
        validate.digest(digest)
    else:
        with pytest.raises(BadRequest, match="'digest' must be"):
            validate.digest(digest)


async def test_bad_fields_are_stopped_at_the_edge(
    proxy: Proxy, ollama_double: tuple[OllamaDouble, str]
) -> None:
    double, _ = ollama_double
    async with aiohttp.ClientSession() as http:
        for endpoint, body, message in BAD:
            async with http.post(f"{proxy.url}{endpoint}", data=orjson.dumps(body)) as resp:
                assert resp.status == 400, endpoint
                assert (await resp.json())["error"].startswith(message)
    assert double.requests == []  # nothing reached the backend
    rows = await proxy.wait_rows(len(BAD))
    assert [(r["endpoint"], r["status_code"]) for r in rows] == [(e, 400) for e, _, _ in BAD]
    assert all(r["error"].startswith(m) for r, (_, _, m) in zip(rows, BAD, strict=True))


async def test_unknown_fields_reach_the_backend(
    proxy: Proxy, ollama_double: tuple[OllamaDouble, str]
) -> None:
    double, _ = ollama_double
    answer = await ollama.AsyncClient(host=proxy.url)._request_raw(
        "POST", "/api/chat", json={"model": M, "messages": USER, "stream": False, "future_field": {"a": [1]}}
    )
    assert answer.status_code == 200
    assert double.requests[-1][1] is not None
    assert double.requests[-1][1]["future_field"] == {"a": [1]}


async def test_the_openai_backend_gets_the_same_edge(oproxy: Proxy) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await ollama.AsyncClient(host=oproxy.url).chat(
            model="smollm2", messages=[{"role": "user", "content": "x", "images": ["???"]}]
        )
    assert caught.value.status_code == 400
    assert caught.value.error == "'messages[0].images[0]' must be base64 image data"


async def test_integer_options_out_of_llama_servers_range_are_400_not_500(
    oproxy: Proxy, llama_double: tuple[LlamaServerDouble, str]
) -> None:
    double, _ = llama_double
    # The options as JSON text: 2**64 is valid JSON, which orjson will not write.
    sent = [
        (
            "/api/chat",
            b'{"num_predict": 1e30}',
            "'options.num_predict' must be a number from -2^63 to 2^63-1",
        ),
        ("/api/generate", b'{"top_k": 18446744073709551616}', "'options.top_k' must be a number from -2^63"),
        (
            "/api/chat",
            b'{"top_k": 1099511627776}',
            "'options.top_k' must be a number from -2147483648 to 2147483647",
        ),
        ("/api/generate", b'{"num_predict": 3e9}', "'options.num_predict' must be a number from -2147483648"),
    ]
    async with aiohttp.ClientSession() as http:
        for endpoint, options, message in sent:
            data = b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "prompt": "hi", '
            async with http.post(
                f"{oproxy.url}{endpoint}", data=data + b'"options": ' + options + b"}"
            ) as resp:
                assert resp.status == 400, (endpoint, options)
                assert (await resp.json())["error"].startswith(message)
        body = {
            "model": "smollm2",
            "messages": USER,
            "stream": False,
            "options": {"seed": 2**40, "top_k": 40.0},
        }
        async with http.post(f"{oproxy.url}/api/chat", json=body) as resp:
            assert resp.status == 200  # a seed wraps to 32 bits there, as it does in Ollama
    assert [path for path, _ in double.requests] == ["/v1/chat/completions"]  # only the good one
    assert double.requests[0][1]["seed"] == 2**40 and double.requests[0][1]["top_k"] == 40
    rows = await oproxy.wait_rows(len(sent) + 1)
    assert [r["status_code"] for r in rows] == [400] * len(sent) + [200]


async def test_out_of_range_numbers_on_v1_never_make_a_500(oproxy: Proxy) -> None:
    """/v1 is a relay: numbers no int holds pass to the backend, whatever it makes of them."""
    big = b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e30, '
    big += b'"n": 18446744073709551616, "seed": -9223372036854775809, "top_k": 1e400000000}'
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{oproxy.url}/v1/chat/completions", data=big) as resp:
            assert resp.status == 400  # 1e400000000 is infinity: not JSON the parser takes
        fixed = big.replace(b"1e400000000", b"18446744073709551616")
        for stream in (b"false", b"true"):
            async with http.post(
                f"{oproxy.url}/v1/chat/completions", data=fixed[:-1] + b', "stream": ' + stream + b"}"
            ) as resp:
                assert resp.status == 200
                await resp.read()
    rows = await oproxy.wait_rows(3)
    assert [r["status_code"] for r in rows] == [400, 200, 200]


def nested(depth: int) -> bytes:
    return b'{"model": "llama2", "messages": [], "format": ' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"


async def test_nesting_beyond_what_can_be_rewritten_gets_400(proxy: Proxy) -> None:
    # The body itself is one level; "format" holds the rest. llama2 is mapped,
    # so an accepted body is re-encoded on its way to the backend.
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{proxy.url}/api/chat", data=nested(MAX_DEPTH - 1)) as resp:
            assert resp.status == 200
        for depth in (MAX_DEPTH, 600, 1023):
            async with http.post(f"{proxy.url}/api/chat", data=nested(depth)) as resp:
                assert resp.status == 400
                assert (await resp.json())[
                    "error"
                ] == f"request body is nested more than {MAX_DEPTH} levels deep"
        async with http.post(f"{proxy.url}/api/chat", data=nested(1100)) as resp:
            assert resp.status == 400  # past the parser's own limit
            assert (await resp.json())["error"].startswith("invalid JSON in request body")
    rows = await proxy.wait_rows(5)
    assert [r["status_code"] for r in rows] == [200, 400, 400, 400, 400]


def test_a_value_too_deep_to_write_still_leaves_a_row() -> None:
    deep: Any = 1
    for _ in range(300):
        deep = {"a": deep}
    exchange = Exchange(endpoint="/api/chat", method="POST", backend_type="openai", backend_request=deep)
    row = dict(zip(COLUMNS, exchange.row(), strict=True))
    assert orjson.loads(row["backend_request"])["unstored"].startswith("value could not be written as JSON")


def test_a_huge_key_is_not_echoed() -> None:
    with pytest.raises(BadRequest) as caught:
        validate.request("/api/create", {"model": M, "files": {"k" * 1_000_000: 1}})
    assert len(caught.value.message) < 200 and caught.value.message.startswith("'files.kkk")


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/v1/models/../../api/delete", 400),
        ("/v1/models/%2e%2e/%2E%2E/api/delete", 400),
        ("/v1/models/..%2F..%2Fapi%2Fdelete", 400),
        ("/v1/models/hf.co/./x", 400),
        ("/v1/models/a%09b", 400),
        ("/v1/models/a%00", 400),
        ("/v1/models/a%0D%0Ab", 404),  # the route's ".+" takes no line break: aiohttp's own 404
    ],
)
async def test_a_model_in_the_path_cannot_climb_out_of_its_route(
    proxy: Proxy, ollama_double: tuple[OllamaDouble, str], target: str, status: int
) -> None:
    """Sent exactly as written (encoded=True: the client resolves no dot segment either)."""
    double, _ = ollama_double
    async with aiohttp.ClientSession() as http, http.get(URL(proxy.url + target, encoded=True)) as resp:
        assert resp.status == status
        answer = await resp.json()
    assert double.requests == []  # nothing reached the backend, /api/delete least of all
    if status == 400:
        message = "'model' must not contain '.' or '..' path segments or control characters"
        assert answer["error"]["message"] == message
        [row] = await proxy.wait_rows(1)
        assert (row["endpoint"], row["status_code"]) == ("/v1/models/{model}", 400)


async def test_a_model_id_with_dots_and_spaces_inside_reaches_the_backend_as_it_is(
    proxy: Proxy, ollama_double: tuple[OllamaDouble, str]
) -> None:
    double, _ = ollama_double
    async with aiohttp.ClientSession() as http:
        for model in ("model.v2..q4", "my%20model"):
            async with http.get(URL(f"{proxy.url}/v1/models/{model}", encoded=True)) as resp:
                assert resp.status == 404  # unknown to the double: its own answer, relayed
    assert [path for path, _ in double.requests] == ["/v1/models/model.v2..q4", "/v1/models/my model"]
