"""Property-based: generated garbage at every endpoint never breaks the proxy or its audit trail.

Each (endpoint, backend) pair gets a bounded number of generated bodies (wrong
types, deep nesting, huge numbers, NaN and Infinity literals, invalid UTF-8,
truncated JSON, empty bodies), sent as raw bytes to a real proxy in front of a
test double. For every one: no 500, an error is ``{"error": "..."}`` with a 4xx
(or the backend's own answer when the body is valid), streams are clean NDJSON,
and the request has exactly its row, with the status the client saw.
``bench/fuzz.py`` runs the same campaign for longer.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from .fuzzing import TARGETS, TEN_MB, Stack, bodies, check, digests, live_stacks, path_for

EXAMPLES = 100  # per endpoint and backend: 3,200 requests in all


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Stack]]:
    with live_stacks(tmp_path_factory.mktemp("fuzz")) as running:
        yield running


def assert_every_request_has_its_row(stack: Stack, sent_before: set[str]) -> None:
    rows = stack.wait_for_rows()
    new = set(stack.sent) - sent_before
    missing = sorted(new - set(rows))
    assert not missing, f"{len(missing)} requests without a row, e.g. {missing[:3]}"
    wrong = {rid: (stack.sent[rid], rows[rid]) for rid in new if rows[rid] != stack.sent[rid]}
    assert not wrong, f"rows whose status differs from the answer: {wrong}"


@pytest.mark.parametrize("backend_type", ["ollama", "openai"])
@pytest.mark.parametrize(("method", "route"), TARGETS)
def test_generated_garbage_never_breaks_the_proxy(
    stacks: dict[str, Stack], backend_type: str, method: str, route: str
) -> None:
    stack = stacks[backend_type]
    before = set(stack.sent)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(body=bodies(route), digest=digests)
    def one_request(body: bytes, digest: str) -> None:
        check(stack, method, route, stack.send(method, path_for(route, digest), body))

    one_request()
    assert len(stack.sent) - len(before) >= EXAMPLES
    assert_every_request_has_its_row(stack, before)


@pytest.mark.parametrize(
    ("backend_type", "route", "field", "expected"),
    [
        ("ollama", "/api/chat", "messages", 200),
        ("openai", "/api/chat", "messages", 200),
        ("ollama", "/api/generate", "prompt", 200),
        ("openai", "/api/generate", "prompt", 200),
        ("ollama", "/api/show", "options", 400),  # ten megabytes where an object belongs
        ("ollama", "/api/show", "model", 404),  # a ten-megabyte model name nobody serves
    ],
)
def test_ten_megabyte_strings(
    stacks: dict[str, Stack], backend_type: str, route: str, field: str, expected: int
) -> None:
    stack = stacks[backend_type]
    before = set(stack.sent)
    huge = "x" * TEN_MB
    model = "smollm2" if backend_type == "openai" else "llama3.2"
    value = [{"role": "user", "content": huge}] if field == "messages" else huge
    body = orjson.dumps({"model": model, "stream": False, field: value})
    answer = stack.send("POST", route, body)
    check(stack, "POST", route, answer)
    assert answer.status == expected, answer.body[:200]
    if expected == 400:
        assert len(answer.body) < 10_000  # the proxy's error names the field; it does not echo the value
    assert_every_request_has_its_row(stack, before)
