"""Secrets planted in traffic, and the byte-level search for them in the files a database leaves.

Each value carries a token found nowhere else, so that a copy of it in the
search index (which stores words, lower-cased, not whole values) is found too.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import openai
import orjson

from . import ha_turn
from .conftest import read_rows
from .llama_double import LlamaServerDouble, frames, sse_events

# kind → a value of that kind, as a user would type it.
SECRETS = {
    "email": "zqxj.planted@example.org",
    "phone": "+49 30 98765432",
    "card": "4539 1488 0343 6467",
    "iban": "DE89 3704 0044 0532 0130 00",
    "api_key": "sk-proj-PLANTEDkey0123456789abcdefXYZ",
    "bearer": "PLANTEDbearer0123456789abcdef",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwbGFudGVkIn0.PLANTEDsig0123456789",
    "ticket": "TICKET-424242",
    "password": "PlantedPw77!",
}
# The words of those values that no other text holds (lower case: what FTS5 stores).
# The four-digit groups of the card and IBAN are too short to look for in binary
# pages (a request id's hex could hold one): the search index is asked for them.
TOKENS = (
    "zqxj", "98765432", "plantedkey", "plantedbearer", "plantedsig", "424242", "plantedpw77",
)  # fmt: skip
SEARCHED = ("4539", "0343", "6467", "3704", "0532", "zqxj", "plantedkey0123456789abcdefxyz")
PATTERNS = {"ticket": r"TICKET-\d{6}"}


def prose(label: str) -> str:
    """A message mentioning every planted value."""
    s = SECRETS
    return (
        f"{label}: mail me at {s['email']} or call {s['phone']}. My card is {s['card']} and my "
        f"IBAN {s['iban']}. The key is {s['api_key']}, send Authorization: Bearer {s['bearer']}, "
        f"the Home Assistant token is {s['jwt']}, see {s['ticket']}, password={s['password']}"
    )


def answer_stream(text: str, tool_arguments: dict[str, Any] | None = None) -> bytes:
    """llama-server's SSE for an answer of ``text`` (split over frames) and maybe one tool call."""
    events = sse_events("chat-tools-stream")
    base = {k: v for k, v in events[0].items() if k != "choices"}

    def delta(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"finish_reason": finish, "index": 0, "delta": d}]}

    half = len(text) // 2
    out = [delta({"role": "assistant", "content": None}), delta({"content": text[:half]})]
    out.append(delta({"content": text[half:]}))
    finish = "stop"
    if tool_arguments is not None:
        arguments = orjson.dumps(tool_arguments).decode()
        call = {"index": 0, "id": "call-planted", "type": "function",
                "function": {"name": "HassTurnOn", "arguments": arguments}}  # fmt: skip
        out.append(delta({"tool_calls": [call]}))
        finish = "tool_calls"
    out.append(delta({}, finish))
    out.append(
        {**base, "choices": [], "usage": {"completion_tokens": 30, "prompt_tokens": 90, "total_tokens": 120}}
    )
    return frames(*out)


def files_of(db: Path) -> dict[str, bytes]:
    """The bytes of the database file and its -wal and -shm files (those that exist)."""
    found = {}
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{db}{suffix}")
        if path.exists():
            found[path.name] = path.read_bytes()
    return found


def leaks(data: bytes) -> list[str]:
    """The planted values and tokens found in ``data`` (case-insensitively), as text."""
    low = data.lower()
    found = [v for v in SECRETS.values() if v.lower().encode() in low]
    found += [t for t in TOKENS if t.encode() in low]
    return found


async def traffic(url: str, double: LlamaServerDouble) -> dict[str, Any]:
    """Chat with tool rounds (ollama client), /v1 (openai client), generate, and a refused request."""
    seen: dict[str, Any] = {}
    client = ollama.AsyncClient(host=url)
    messages: list[Any] = [
        {"role": "system", "content": ha_turn.SYSTEM + "\n" + prose("system")},
        {"role": "user", "content": prose("user")},
    ]
    double.queued = [
        answer_stream(prose("answer"), {"name": SECRETS["email"], "area": SECRETS["phone"]}),
        answer_stream(prose("second answer")),
    ]
    content, calls = "", list[ollama.Message.ToolCall]()
    async for chunk in await client.chat(
        model="smollm2", messages=messages, tools=[ha_turn.TURN_ON], stream=True
    ):
        content += chunk.message.content or ""
        calls += chunk.message.tool_calls or []
    seen["answer"], seen["arguments"] = content, dict(calls[0].function.arguments)
    messages += [
        {"role": "assistant", "content": content, "tool_calls": [c.model_dump() for c in calls]},
        {"role": "tool", "content": prose("tool result")},
    ]
    final = await client.chat(model="smollm2", messages=messages, tools=[ha_turn.TURN_ON])
    seen["second"] = final.message.content
    await client.generate(model="smollm2", prompt=prose("generate"), stream=False)
    oai = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused")
    await oai.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": prose("openai")}]
    )
    await oai.close()
    async with aiohttp.ClientSession() as http:
        bad = {"model": "smollm2", "messages": [{"role": 7, "content": prose("refused")}]}
        async with http.post(f"{url}/api/chat", json=bad) as resp:
            seen["refused"] = resp.status
    return seen


def fts_hits(db: Path) -> list[str]:
    """The planted words the search index still finds."""
    with closing(sqlite3.connect(db)) as conn:
        return [
            w
            for w in SEARCHED
            if conn.execute("SELECT rowid FROM logs_fts WHERE logs_fts MATCH ?", (f'"{w}"',)).fetchall()
        ]


async def rows_of(db: Path, expected: int) -> list[dict[str, Any]]:
    """The rows of ``logs`` once there are ``expected`` (waits at most 5 s)."""
    found: list[dict[str, Any]] = []
    for _ in range(250):
        found = read_rows(db, 0)
        if len(found) >= expected:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"{len(found)} rows, expected {expected}")


def cli(*args: str, stdin: bytes | None = None, code: int = 0) -> bytes:
    """``python -m llm_proxy ARGS`` as a separate process; its stdout (the exit code checked)."""
    done = subprocess.run(
        [sys.executable, "-m", "llm_proxy", *args], capture_output=True, timeout=120, check=False, input=stdin
    )
    assert done.returncode == code, (done.stdout, done.stderr)
    return done.stdout
