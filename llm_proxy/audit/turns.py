"""Conversation turns: the rounds of one spoken request share a ``turn_id``.

Home Assistant answers a tool call by sending the same conversation again with
the assistant's tool-call message and the tool results appended; it repeats
this for up to ten rounds. A chat request continues the current turn of its
client when its messages extend that client's previous messages and what was
appended holds no new ``user`` message (a new user message is a new spoken
request). Everything else starts a turn of its own, whose id is its row id.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

MAX_CLIENTS = 1024  # clients remembered at once; the least recently seen is forgotten


@dataclass(frozen=True, slots=True)
class _Last:
    turn_id: int
    messages: tuple[str, ...]


class TurnTracker:
    """Remembers each client's last chat request to decide which turn the next one joins."""

    def __init__(self) -> None:
        self._last: OrderedDict[tuple[Any, ...], _Last] = OrderedDict()

    def continues(self, client: tuple[Any, ...], messages: list[Any], keys: tuple[str, ...]) -> int | None:
        """The turn these messages (whose :func:`message_keys` are ``keys``) continue, or None."""
        last = self._last.get(client)
        if last is None:
            return None
        n = len(last.messages)
        if len(keys) <= n or keys[:n] != last.messages:
            return None
        added = messages[n:]
        if any(isinstance(m, dict) and m.get("role") == "user" for m in added):
            return None
        return last.turn_id

    def record(self, client: tuple[Any, ...], keys: tuple[str, ...], turn_id: int) -> None:
        """Remember the request just stored for ``client`` by its messages' keys."""
        self._last[client] = _Last(turn_id, keys)
        self._last.move_to_end(client)
        while len(self._last) > MAX_CLIENTS:
            self._last.popitem(last=False)

    def last(self, client: tuple[Any, ...]) -> tuple[int, tuple[str, ...]] | None:
        """The turn and message keys last recorded for ``client`` (shared with other writers)."""
        found = self._last.get(client)
        return None if found is None else (found.turn_id, found.messages)

    def snapshot(self) -> OrderedDict[tuple[Any, ...], _Last]:
        """State to go back to if a write is rolled back."""
        return OrderedDict(self._last)

    def restore(self, state: OrderedDict[tuple[Any, ...], _Last]) -> None:
        """Forget what was recorded since :meth:`snapshot`."""
        self._last = state


def chat_messages(request_body: str | None) -> list[Any] | None:
    """The ``messages`` list of a chat request body, or None."""
    if not request_body:
        return None
    try:
        body = orjson.loads(request_body)
    except orjson.JSONDecodeError:
        return None
    messages = body.get("messages") if isinstance(body, dict) else None
    return messages if isinstance(messages, list) else None


def message_keys(messages: list[Any]) -> tuple[str, ...]:
    """A digest per message, to compare conversations without keeping them."""
    return tuple(
        hashlib.blake2b(orjson.dumps(m, option=orjson.OPT_SORT_KEYS), digest_size=12).hexdigest()
        for m in messages
    )
