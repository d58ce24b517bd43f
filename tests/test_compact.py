"""The compact form of request bodies: exact text back, shared pieces stored once."""

from __future__ import annotations

import itertools
import json

import orjson
import pytest

from llm_proxy.audit.compact import MIN_BODY, blob_names, join, pack, split

SYSTEM = {"role": "system", "content": "You are a voice assistant. " * 20}
TOOLS = [
    {"type": "function", "function": {"name": f"Tool{i}", "description": "does a thing " * 5}}
    for i in range(5)
]


def body(*messages: dict[str, object], **extra: object) -> dict[str, object]:
    return {"model": "m", "messages": [SYSTEM, *messages], "tools": TOOLS, **extra}


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(body({"role": "user", "content": "hi"})),  # Python's spacing
        json.dumps(body({"role": "user", "content": "hi"}), indent=2),
        json.dumps(body({"role": "user", "content": "héllo ✓ \u2028"}), ensure_ascii=False),
        json.dumps(body({"role": "user", "content": 'tricky "quotes" [brackets] {braces} \\ ,:'})),
        # Backslashes right before a closing quote: an even run does not escape it.
        json.dumps(body({"role": "user", "content": "ends in a backslash \\"})),
        json.dumps(body({"role": "user", "content": 'odd \\" even \\\\" ]}["{'}, {"x": ["\\", '\\"']})),
        orjson.dumps(
            body({"role": "user", "content": "x"}, options={"num_ctx": 8192.0}, stream=True)
        ).decode(),
        "  \r\n" + json.dumps(body({"role": "user", "content": "spaces around"})) + " \n",
        json.dumps({"messages": [], "tools": TOOLS * 3, "n": None, "t": True, "f": -1.5e3}),
    ],
)
def test_round_trip_is_exact(text: str) -> None:
    packed = pack(text)
    assert packed is not None
    assert join(packed.recipe, packed.blobs) == text
    assert set(blob_names(packed.recipe)) == set(packed.blobs)


@pytest.mark.parametrize(
    "text",
    [
        None,
        '{"model": "m", "prompt": "short"}',  # small: stored whole
        json.dumps([SYSTEM] * 10),  # not an object
        json.dumps(body()) + "garbage",
        json.dumps(body())[:-1],  # cut off
        "x" * (MIN_BODY + 10),
    ],
)
def test_what_it_does_not_understand_is_stored_whole(text: str | None) -> None:
    assert pack(text) is None


def test_spans_cover_the_text_in_order() -> None:
    text = json.dumps(body({"role": "user", "content": "hi"}))
    spans = split(text)
    assert spans is not None
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))


def test_rounds_of_a_turn_share_their_pieces() -> None:
    """Each round repeats the earlier messages and the tools: only what is new is a new blob."""
    messages: list[dict[str, object]] = [{"role": "user", "content": "turn on the light " * 10}]
    seen: set[str] = set()
    new_per_round = []
    for n in range(5):
        packed = pack(json.dumps(body(*messages)))
        assert packed is not None
        new_per_round.append(len(set(packed.blobs) - seen))
        seen |= set(packed.blobs)
        messages.append({"role": "assistant", "content": f"calling tool number {n} " * 8})
    assert new_per_round[0] == 3  # system message, user message, tools
    assert new_per_round[1:] == [1, 1, 1, 1]  # then one new message per round


def test_a_body_cut_anywhere_is_stored_whole() -> None:
    """A stored copy cut to database.max_body_kb is no longer JSON: pack() leaves it whole."""
    text = json.dumps(body({"role": "user", "content": 'turn on the light, "please" ✓'}))
    for end in range(len(text)):
        assert pack(text[:end]) is None, end


def test_a_message_nested_deeper_than_the_scanner_goes_is_stored_whole() -> None:
    """orjson takes 1,024 levels; the C scanner that finds a value's end stops near 1,000: whole, not lost."""
    deep = "[" * 1020 + "]" * 1020
    text = '{"model": "m", "messages": [' + deep + ', {"role": "user", "content": "' + "y" * 2000 + '"}]}'
    orjson.loads(text)  # a body the edge accepts
    assert pack(text) is None
    shallow = text.replace(deep, "[" * 900 + "]" * 900)
    packed = pack(shallow)
    assert packed is not None and join(packed.recipe, packed.blobs) == shallow
