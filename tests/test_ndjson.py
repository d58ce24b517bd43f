"""LineDecoder: NDJSON lines out of reads cut anywhere, of any length up to its limit."""

from __future__ import annotations

from typing import Any

import pytest

from llm_proxy.translate import Assembler, TooLong
from llm_proxy.translate.ndjson import ChunkAssembler, LineDecoder


def answer(assembler: Assembler) -> dict[str, Any]:
    """The assembled answer, which these tests always have."""
    result = assembler.result()
    assert result is not None
    return result


STREAM = b'{"a":1}\n\n{"b":"two"}\r\n  \n{"c":[3]}\n{"d":4}'
LINES = [b'{"a":1}', b'{"b":"two"}', b'{"c":[3]}', b'{"d":4}']


def decode(parts: list[bytes], limit: int | None = None) -> list[bytes]:
    decoder = LineDecoder(limit)
    out: list[bytes] = []
    for part in parts:
        out += decoder.feed(part)
    return out + decoder.flush()


def test_every_two_way_split() -> None:
    for point in range(len(STREAM) + 1):
        assert decode([STREAM[:point], STREAM[point:]]) == LINES, point


def test_one_byte_at_a_time() -> None:
    assert decode([STREAM[i : i + 1] for i in range(len(STREAM))]) == LINES


def test_a_50_mib_line_in_64_kib_reads() -> None:
    line = b'{"embedding":[' + b"0.5," * (50 * 1024 * 1024 // 4) + b"0.5]}"
    raw = line + b'\n{"done":true}\n'
    parts = [raw[i : i + 65536] for i in range(0, len(raw), 65536)]
    assert decode(parts, limit=64 << 20) == [line, b'{"done":true}']


def test_a_line_over_the_limit_is_an_error_not_memory() -> None:
    decoder = LineDecoder(1000)
    assert decoder.feed(b'{"ok":1}\n' + b"x" * 500) == [b'{"ok":1}']
    with pytest.raises(TooLong, match="an NDJSON line longer than 1000 bytes"):
        for _ in range(10):
            decoder.feed(b"x" * 100)
    with pytest.raises(TooLong):
        LineDecoder(1000).feed(b"y" * 2000 + b"\n")  # whole in one read, still too long
    assert LineDecoder(1000).feed(b"z" * 1000 + b"\n") == [b"z" * 1000]


def test_the_assembler_keeps_the_start_within_its_limit_and_says_so() -> None:
    chunk = {"model": "m", "message": {"role": "assistant", "content": "0123456789", "thinking": "t"}}
    assembler = ChunkAssembler(limit=55)
    for _ in range(100):
        assert assembler.feed({**chunk, "done": False})  # still a token, for the timings
    call = {"function": {"name": "HassTurnOn", "arguments": {"name": "x"}}}
    assembler.feed({"model": "m", "message": {"role": "assistant", "content": "", "tool_calls": [call]}})
    assembler.feed({"model": "m", "message": {"content": ""}, "done": True, "eval_count": 100})
    assert assembler.truncated and assembler.tool_calls == []
    assert assembler.text is not None and assembler.thinking is not None
    assert len(assembler.text) + len(assembler.thinking) == 55 and assembler.text.startswith("0123456789")
    assert answer(assembler)["eval_count"] == 100
    unlimited = ChunkAssembler()
    for _ in range(100):
        unlimited.feed({**chunk, "done": False})
    assert not unlimited.truncated and len(unlimited.text or "") == 1000
