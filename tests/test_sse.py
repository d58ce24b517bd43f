"""Tests for the incremental SSE decoder, on frames recorded from llama-server."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import orjson
import pytest

from llm_proxy.translate.sse import SSEDecoder, SSEFramer

FIXTURES = Path(__file__).parent / "fixtures" / "llama-server"
STREAMS = [
    "chat-stream",
    "chat-tools-stream",
    "chat-stream-no-usage",
    "chat-length",
    "chat-tool-result",
    "completions-stream",
]


def body(name: str) -> bytes:
    return (FIXTURES / f"{name}.body").read_bytes()


def reference_events(raw: bytes) -> list[str]:
    """Decode a whole llama-server body the simple way: it is all ``data: x\\n\\n``."""
    events = []
    for block in raw.split(b"\n\n"):
        if block:
            assert block.startswith(b"data: ")
            events.append(block[len(b"data: ") :].decode())
    return events


def decode(parts: list[bytes]) -> list[str]:
    decoder = SSEDecoder()
    events: list[str] = []
    for part in parts:
        events += decoder.feed(part)
    return events + decoder.flush()


def split_at(raw: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(points), len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("name", STREAMS)
def test_fixture_decodes_to_its_frames(name: str) -> None:
    raw = body(name)
    events = decode([raw])
    assert events == reference_events(raw)
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        assert isinstance(orjson.loads(event), dict)


@pytest.mark.parametrize("name", STREAMS)
def test_every_two_way_split_gives_the_same_events(name: str) -> None:
    raw = body(name)
    expected = decode([raw])
    for point in range(len(raw) + 1):
        assert decode([raw[:point], raw[point:]]) == expected, f"split at byte {point}"


@pytest.mark.parametrize("name", ["chat-stream", "chat-tools-stream"])
def test_random_multi_splits_give_the_same_events(name: str) -> None:
    raw = body(name)
    expected = decode([raw])
    rng = random.Random(20261122)
    for _ in range(300):
        points = rng.sample(range(1, len(raw)), rng.randint(2, 60))
        assert decode(split_at(raw, points)) == expected, f"split at {sorted(points)}"


def test_one_byte_at_a_time() -> None:
    raw = body("chat-tools-stream")
    assert decode([raw[i : i + 1] for i in range(len(raw))]) == decode([raw])


@pytest.mark.parametrize("ending", [b"\r\n", b"\r"])
def test_crlf_and_cr_line_endings_at_every_split(ending: bytes) -> None:
    raw = body("chat-stream")
    expected = decode([raw])
    converted = raw.replace(b"\n", ending)
    assert decode([converted]) == expected
    for point in range(len(converted) + 1):
        parts = [converted[:point], converted[point:]]
        assert decode(parts) == expected, f"split at byte {point}"


def test_crlf_split_between_cr_and_lf_does_not_make_an_extra_blank_line() -> None:
    # "data: a\r" | "\n" must stay one line end: were the \n read as a second
    # one, the event would end early and "b" would become its own event.
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\n\r") == ["a\nb"]
    assert decoder.feed(b"\n") == []
    assert decoder.flush() == []


def test_multibyte_utf8_split_inside_a_character() -> None:
    text = "héllo ☃ 😀 wörld"
    frame = b"data: " + orjson.dumps({"content": text}) + b"\n\n"
    for point in range(len(frame) + 1):
        events = decode([frame[:point], frame[point:]])
        assert [orjson.loads(e)["content"] for e in events] == [text], point
    snowman = "☃".encode()
    start = frame.index(snowman)
    decoder = SSEDecoder()
    assert decoder.feed(frame[: start + 1]) == []
    assert decoder.feed(frame[start + 1 : start + 2]) == []
    assert [orjson.loads(e)["content"] for e in decoder.feed(frame[start + 2 :])] == [text]


def test_comment_lines_and_other_fields_are_ignored() -> None:
    stream = (
        b": keep-alive\n\n"
        b"event: message\nid: 7\nretry: 1000\ndata: one\n\n"
        b":another comment\n"
        b"data: two\n\n"
        b"datafield: not data\n\n"
    )
    assert decode([stream]) == ["one", "two"]


def test_event_without_data_is_not_reported() -> None:
    assert decode([b"event: ping\n\n\n\ndata: x\n\n"]) == ["x"]


def test_multiple_data_lines_join_with_newline() -> None:
    assert decode([b"data: first\ndata:second\ndata:  third\n\n"]) == ["first\nsecond\n third"]


def test_only_one_leading_space_is_stripped() -> None:
    assert decode([b"data:   x\n\n"]) == ["  x"]


def test_data_without_colon_is_an_empty_line_of_data() -> None:
    assert decode([b"data\ndata: x\n\n", b"data\n\n"]) == ["\nx", ""]


def test_done_sentinel_is_returned_as_a_payload() -> None:
    assert decode([b"data: [DONE]\n\n"]) == ["[DONE]"]


def test_flush_returns_an_unterminated_final_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a":1}\n\ndata: [DONE]') == ['{"a":1}']
    assert decoder.flush() == ["[DONE]"]
    assert decoder.flush() == []


def test_flush_after_a_single_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: last\n") == []
    assert decoder.flush() == ["last"]


def test_flush_with_nothing_pending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\n") == ["a"]
    assert decoder.flush() == []


def test_empty_chunks_change_nothing() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"") == []
    assert decoder.feed(b"data: a") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n\n") == ["a"]


def test_byte_order_mark_at_start_is_dropped_even_when_split() -> None:
    stream = b"\xef\xbb\xbfdata: a\n\n"
    for point in range(len(stream) + 1):
        assert decode([stream[:point], stream[point:]]) == ["a"], point


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert decode([b"data: \xff\xfe\n\n"]) == ["\ufffd\ufffd"]


def test_long_line_in_many_small_reads() -> None:
    payload = b"x" * 100_000
    frame = b"data: " + payload + b"\n\n"
    parts = [frame[i : i + 7] for i in range(0, len(frame), 7)]
    assert decode(parts) == [payload.decode()]


# -- SSEFramer: whole frames, byte for byte ----------------------------------


def frame(parts: list[bytes]) -> list[bytes]:
    framer = SSEFramer()
    out: list[bytes] = []
    for part in parts:
        out += framer.feed(part)
    rest = framer.flush()
    return [*out, rest] if rest else out


def reference_frames(raw: bytes) -> list[bytes]:
    return [block + b"\n\n" for block in raw.split(b"\n\n") if block]


@pytest.mark.parametrize("name", STREAMS)
def test_framer_cuts_fixtures_into_their_frames_at_every_split(name: str) -> None:
    raw = body(name)
    expected = reference_frames(raw)
    assert b"".join(expected) == raw
    for point in range(len(raw) + 1):
        assert frame([raw[:point], raw[point:]]) == expected, f"split at byte {point}"


def test_framer_one_byte_at_a_time_and_random_splits() -> None:
    raw = body("chat-tools-stream")
    expected = reference_frames(raw)
    assert frame([raw[i : i + 1] for i in range(len(raw))]) == expected
    rng = random.Random(8)
    for _ in range(100):
        points = rng.sample(range(1, len(raw)), rng.randint(2, 60))
        assert frame(split_at(raw, points)) == expected


@pytest.mark.parametrize("ending", [b"\r\n", b"\r"])
def test_framer_with_crlf_and_cr_endings_keeps_one_event_per_frame(ending: bytes) -> None:
    raw = body("chat-stream").replace(b"\n", ending)
    events = decode([raw])
    for point in range(len(raw) + 1):
        frames = frame([raw[:point], raw[point:]])
        assert b"".join(frames) == raw
        decoder = SSEDecoder()
        per_frame = [decoder.feed(f) for f in frames]
        assert per_frame == [[e] for e in events], f"split at byte {point}"


def test_framer_does_not_cut_between_cr_and_lf() -> None:
    # "data: a\r\n\r" could end the frame, or its last \r could be half of a
    # \r\n: the framer waits for the next byte before it decides.
    framer = SSEFramer()
    assert framer.feed(b"data: a\r\n\r") == []
    assert framer.feed(b"\ndata: b") == [b"data: a\r\n\r\n"]
    assert framer.feed(b"\n\n") == [b"data: b\n\n"]
    assert framer.flush() == b""


def test_framer_keeps_comments_and_multi_line_events_whole() -> None:
    raw = b": keep-alive\n\nevent: x\ndata: 1\ndata: 2\n\ndata: [DONE]\n\n"
    assert frame([raw]) == [b": keep-alive\n\n", b"event: x\ndata: 1\ndata: 2\n\n", b"data: [DONE]\n\n"]


def test_framer_flush_returns_an_unterminated_last_frame() -> None:
    framer = SSEFramer()
    assert framer.feed(b"data: 1\n\ndata: 2\n") == [b"data: 1\n\n"]
    assert framer.flush() == b"data: 2\n"
    assert framer.flush() == b""
