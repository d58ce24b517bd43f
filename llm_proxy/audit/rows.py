"""What becomes of a row on its way into a store, whichever the store: its turn, its bodies, its caps.

Both stores (:mod:`.store` for SQLite, :mod:`.pg_store` for PostgreSQL) take
rows in :data:`~.exchange.COLUMNS` order and store them as :func:`prepare`
makes them: in :data:`STORED` order, after the id.
"""

from __future__ import annotations

from typing import Any

import orjson

from .compact import pack
from .exchange import COLUMNS
from .redact import Policy, Redactor
from .turns import TurnTracker, chat_messages, message_keys

# What ``database.store_bodies: metadata`` leaves out of a row, and what
# ``database.max_body_kb`` caps the stored copy of.
TEXT_COLUMNS = ("prompt", "response", "request_body", "backend_request", "response_body", "thinking")
# Body columns stored compactly, and the column holding each one's recipe.
COMPACTED = (("request_body", "request_parts"), ("backend_request", "backend_request_parts"))
STORED = (*COLUMNS, "request_parts", "backend_request_parts", "turn_id")
# What a reduced row keeps of a stored row (see Exchange.reduced, the same rule).
_REDUCED_KEEPS = (
    "timestamp", "endpoint", "method", "api", "model", "backend_type", "request_id", "client_addr",
    "key_name", "status_code", "latency_ms", "stream",
)  # fmt: skip
REDUCED_TEXT = 256


def client_of(values: dict[str, Any]) -> tuple[Any, ...] | None:
    """Whose turn a row may continue: (address, user agent, model) of a chat request; else None."""
    if values["endpoint"] != "/api/chat" or not values["request_body"]:
        return None
    return values["client_addr"], values["user_agent"], values["model"]


class Policies:
    """How each row is kept: the database's policy, and each API key's that differs (audit/redact.py)."""

    def __init__(self, default: Policy | None = None, keys: dict[str, Policy] | None = None) -> None:
        self.default = default or Policy()
        self.keys = keys or {}

    def of(self, values: dict[str, Any]) -> Policy:
        """The policy of the row ``values``: its API key's, else the database's."""
        return self.keys.get(values["key_name"], self.default) if self.keys else self.default

    def redacted(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """A row (in :data:`COLUMNS` order) with its texts as a stored copy would have them.

        For the log line of a row that could not be written at all: it must not
        hold what the database would not have.
        """
        values = dict(zip(COLUMNS, row, strict=True))
        policy = self.of(values)
        if policy.store_bodies == "metadata":
            strip_text(values)
        if policy.redactor is not None:
            cap(values, 0, policy.redactor)
        return tuple(values[c] for c in COLUMNS)


def prepare(
    values: dict[str, Any],
    row_id: int,
    blobs: dict[str, str],
    turns: TurnTracker,
    policy: Policy,
    max_body: int,
) -> tuple[Any, ...]:
    """One row's stored values (id first, then :data:`STORED`): turn, metadata-only, redaction, caps,
    compaction."""
    messages = chat_messages(values["request_body"]) if values["endpoint"] == "/api/chat" else None
    turn_id = None
    if messages:
        client = (values["client_addr"], values["user_agent"], values["model"])
        keys = message_keys(messages)
        turn_id = turns.continues(client, messages, keys) or row_id
        turns.record(client, keys, turn_id)
    values["turn_id"] = turn_id
    values["request_parts"] = values["backend_request_parts"] = None
    if policy.store_bodies == "metadata":
        strip_text(values)
        if policy.redactor is not None:
            values["error"] = policy.redactor.text(values["error"])
    elif max_body or policy.redactor is not None:
        cap(values, max_body, policy.redactor)
    for column, parts in COMPACTED:
        packed = pack(values[column])
        if packed is not None:
            values[column], values[parts] = None, packed.recipe
            blobs.update(packed.blobs)
    return (row_id, *(values[c] for c in STORED))


def reduced_row(row: tuple[Any, ...], reason: str) -> tuple[Any, ...]:
    """A row (in COLUMNS order) cut to its metadata, and why: what a store cannot refuse."""
    values = dict(zip(COLUMNS, row, strict=True))
    kept = {c: values[c] for c in _REDUCED_KEEPS}
    for column in ("endpoint", "method", "api"):
        kept[column] = kept[column] or "?"
    for column, value in kept.items():
        if isinstance(value, str):
            kept[column] = value[:REDUCED_TEXT]
    kept["error"] = f"row could not be stored: {reason}"[: 4 * REDUCED_TEXT]
    return tuple(kept.get(column) for column in COLUMNS)


def cap(
    values: dict[str, Any],
    limit: int,
    redactor: Redactor | None = None,
    columns: tuple[str, ...] = TEXT_COLUMNS,
) -> None:
    """Cut each text of ``columns`` to ``limit`` bytes (0: no limit), redacted first.

    ``truncated`` records full sizes. A text to be cut is redacted a little
    beyond the cut (:data:`REDACT_MARGIN`), so that a secret the cut falls in
    is found whole, and a huge body is not scanned past what is kept.
    """
    sizes = {}
    for column in columns:
        text = values[column]
        # A character is at most 4 bytes of UTF-8: most texts need no measuring at all.
        if text is None or not limit or len(text) * 4 <= limit:
            if text is not None and redactor is not None:
                values[column] = _redacted(redactor, column, text)
            continue
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
        if size <= limit:
            if redactor is not None:
                values[column] = _redacted(redactor, column, text)
            continue
        if redactor is not None:
            # limit characters hold at least limit bytes: the cut lies within them.
            text = _redacted(redactor, column, text[: limit + REDACT_MARGIN])
        if text.isascii():
            values[column] = text[:limit]
        else:  # a character cut in two is left out
            values[column] = text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")
        sizes[column] = size
    if redactor is not None:
        values["tool_calls"] = redactor.json_text(values["tool_calls"])
        values["error"] = redactor.text(values["error"])
    if sizes:
        if values["truncated"] is not None:  # the answer, cut as it was relayed
            sizes = {**orjson.loads(values["truncated"]), **sizes}
        values["truncated"] = orjson.dumps(sizes).decode()


# Characters past a cut that are redacted with the kept part: longer than any detected value.
REDACT_MARGIN = 512
JSON_COLUMNS = frozenset({"request_body", "backend_request", "response_body"})


def _redacted(redactor: Redactor, column: str, text: str) -> str:
    out = redactor.json_text(text) if column in JSON_COLUMNS else redactor.text(text)
    return text if out is None else out


def strip_text(values: dict[str, Any]) -> None:
    """Metadata mode: no prompt, answer or body text; tool calls keep only their names."""
    for column in TEXT_COLUMNS:
        values[column] = None
    values["truncated"] = None  # no copy, so none was cut
    if values["tool_calls"]:
        calls = orjson.loads(values["tool_calls"])
        names = [
            {"function": {"name": (c.get("function") or {}).get("name")}}
            for c in calls
            if isinstance(c, dict)
        ]
        values["tool_calls"] = orjson.dumps(names).decode()
