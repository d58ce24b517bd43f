"""Secrets planted in traffic, and the byte-level search for them in the files a database leaves.

Each value carries a token found nowhere else, so that a copy of it in the
search index (which stores words, lower-cased, not whole values) is found too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .llama_double import frames, sse_events

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
        import orjson

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
