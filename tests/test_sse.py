"""Tests for the incremental SSE decoder, on frames recorded from llama-server."""

from __future__ import annotations

import itertools
import random
import re
from pathlib import Path

import orjson
import pytest

from llm_proxy.translate.sse import SSEDecoder, SSEFramer, TooLong

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


# -- any length, in linear time; beyond the limit, an error -----------------------

BIG = 50 * 1024 * 1024
READ = 64 * 1024


def reads(raw: bytes, size: int = READ) -> list[bytes]:
    return [raw[i : i + size] for i in range(0, len(raw), size)]


def test_a_50_mib_frame_in_64_kib_reads_comes_out_whole() -> None:
    payload = b'{"x":"' + b"y" * BIG + b'"}'
    raw = b"data: " + payload + b"\n\n" + b"data: [DONE]\n\n"
    framer, decoder = SSEFramer(limit=64 << 20), SSEDecoder(limit=64 << 20)
    frames: list[bytes] = []
    for part in reads(raw):
        frames += framer.feed(part)
    assert framer.flush() == b""
    assert [len(f) for f in frames] == [len(raw) - 14, 14] and b"".join(frames) == raw
    assert [decoder.feed(f) for f in frames] == [[payload.decode()], ["[DONE]"]]
    events: list[str] = []
    decoder = SSEDecoder(limit=64 << 20)
    for part in reads(raw):  # the reads themselves, as the openai backend feeds them
        events += decoder.feed(part)
    assert events == [payload.decode(), "[DONE]"]


def test_a_frame_over_the_limit_is_an_error_not_memory() -> None:
    framer = SSEFramer(limit=1000)
    assert framer.feed(b"data: 1\n\n") == [b"data: 1\n\n"]
    with pytest.raises(TooLong, match="an SSE frame longer than 1000 bytes"):
        for part in reads(b"data: " + b"x" * 5000, 100):
            framer.feed(part)
    decoder = SSEDecoder(limit=1000)
    with pytest.raises(TooLong, match="longer than 1000 bytes"):
        for part in reads(b"data: " + b"x" * 5000, 100):
            decoder.feed(part)
    decoder = SSEDecoder(limit=1000)  # many data lines of one event count together
    with pytest.raises(TooLong, match="an SSE event"):
        decoder.feed(b"data: " + b"x" * 600 + b"\ndata: " + b"x" * 600 + b"\n")
    assert SSEFramer(limit=1000).feed(b"data: " + b"x" * 900 + b"\n\n")  # within it, as ever


def test_framer_at_every_split_of_frames_of_many_reads() -> None:
    # Frames longer than a read, terminators of every kind cut anywhere: same frames.
    raw = b"data: " + b"a" * 40 + b"\r\n\r\n" + b"data: b\r\rdata: " + b"c" * 30 + b"\n\n: k\n\n"
    expected = frame([raw])
    assert b"".join(expected) == raw and len(expected) == 4
    for size in (1, 2, 3, 5, 7):
        for offset in range(size):
            parts = [raw[:offset], *reads(raw[offset:], size)]
            assert frame(parts) == expected, (size, offset)


def reference_framer(parts: list[bytes]) -> list[bytes]:
    """The framer as it was: the whole unfinished frame searched again on every read."""
    blank = re.compile(rb"(?>\r\n|\r|\n)(?>\r\n|\r|\n)")
    buffer, out = b"", []
    for part in parts:
        buffer += part
        start = 0
        while (found := blank.search(buffer, start)) is not None:
            if found.end() == len(buffer) and buffer[-1] == 0x0D:
                break
            out.append(buffer[start : found.end()])
            start = found.end()
        buffer = buffer[start:]
    return [*out, buffer] if buffer else out


def test_framer_matches_the_whole_buffer_search_on_random_streams() -> None:
    rng = random.Random(20)
    for _ in range(2000):
        raw = bytes(rng.choice(b"ab\r\n:") for _ in range(rng.randint(0, 40)))
        points = rng.sample(range(1, len(raw)), min(len(raw) - 1, rng.randint(0, 12))) if raw else []
        parts = split_at(raw, points)
        assert frame(parts) == reference_framer(parts), (raw, points)
