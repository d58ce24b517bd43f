"""What ``database.redact`` costs the writer: time per row for Home Assistant requests.

The store redacts each row's copy on the event loop before writing it, so this
is time the loop spends per exchange. It measures, for a 10-round Home
Assistant turn's last request body (system prompt, 24 tools, every round's
messages: the largest body of a turn) and for a short chat:

- ``Store._prepare`` of the row without redaction (turns, capping, compaction),
- the same with every built-in detector on,
- the redactor alone on the body (:meth:`Redactor.json_text`).

Run from the repository root: ``PYTHONPATH=$PWD python bench/redact.py``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llm_proxy.audit.exchange import COLUMNS, Exchange
from llm_proxy.audit.redact import build
from llm_proxy.audit.store import Store
from tests import ha_turn

REPEAT = 40
ROUNDS = 7


def turn_body(rounds: int = 10, ask: str = "turn on the kitchen light") -> bytes:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": ha_turn.SYSTEM},
        {"role": "user", "content": ask},
    ]
    for n in range(rounds - 1):
        call = {"function": {"name": "HassTurnOn", "arguments": {"name": f"Kitchen Light {n}"}}}
        messages += [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": orjson.dumps({"success": True, "round": n}).decode()},
        ]
    return orjson.dumps({"model": "assistant", "messages": messages, "tools": ha_turn.TOOLS, "stream": True})


def row(body: bytes) -> tuple[Any, ...]:
    ex = Exchange(endpoint="/api/chat", method="POST", backend_type="openai")
    ex.request_body, ex.prompt, ex.response = body, "turn on the kitchen light", "The kitchen light is on."
    ex.status_code, ex.latency_ms = 200, 812
    return ex.row()


def per_call(fn: Any) -> float:
    """Microseconds per call: the best of several rounds (a shared machine only ever slows one down)."""
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(REPEAT):
            fn()
        best = min(best, (time.perf_counter() - start) / REPEAT * 1e6)
    return best


def main() -> None:
    redactor = build(["all"])
    assert redactor is not None
    cases = (
        ("HA round 10, nothing to redact", turn_body()),
        ("HA round 10, an e-mail in it", turn_body(ask="mail the list to bob@example.org")),
        ("short chat", _short()),
    )
    for label, body in cases:
        print(measure(label, body, redactor))


def measure(label: str, body: bytes, redactor: Any) -> str:
    values = row(body)
    plain = Store("/nonexistent/bench.db")
    redacting = Store("/nonexistent/bench.db", redactor=redactor)
    text = body.decode()

    def prepare(store: Store) -> None:
        store._prepare(dict(zip(COLUMNS, values, strict=True)), 1, {})

    base = per_call(lambda: prepare(plain))
    with_redaction = per_call(lambda: prepare(redacting))
    alone = per_call(lambda: redactor.json_text(text))
    return (
        f"{label:31} body {len(body) / 1024:5.1f} KiB: row {base:6.0f} µs, redacted {with_redaction:6.0f} µs "
        f"(+{with_redaction - base:.0f}); redactor on the body {alone:6.0f} µs"
    )


def _short() -> bytes:
    return orjson.dumps({"model": "assistant", "messages": [{"role": "user", "content": "hello there"}]})


if __name__ == "__main__":
    main()
