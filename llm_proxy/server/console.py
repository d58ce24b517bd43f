"""What the proxy prints to stdout when ``server.log_*`` asks for it.

These are for watching a proxy live; the database always gets everything,
whatever these flags say. What they print goes to a journal as surely as a row
goes to the database, so ``database.redact`` (and an API key's ``redact``)
applies here too: :meth:`Console.protect` hands over the policies.
"""

from __future__ import annotations

import sys
from typing import IO, Any

import orjson

from ..audit.exchange import Exchange
from ..audit.redact import Policy, Redactor
from ..config import ServerConfig
from .logging_setup import printable

SUMMARY_CHARS = 200  # how much of a prompt or answer a summary line shows


class Console:
    """Prints exchange summaries and raw JSON, as configured."""

    def __init__(self, server: ServerConfig, out: IO[str] | None = None) -> None:
        self.configure(server)
        self._out = out
        self._policy = Policy()
        self._keys: dict[str, Policy] = {}

    def protect(self, policy: Policy, keys: dict[str, Policy]) -> None:
        """Redact what is printed as the audit trail's copy is (the database's and each key's policy)."""
        self._policy, self._keys = policy, keys

    def _redactor(self, exchange: Exchange) -> Redactor | None:
        policy = self._keys.get(exchange.key_name or "", self._policy) if self._keys else self._policy
        return policy.redactor

    def configure(self, server: ServerConfig) -> None:
        """Take the ``server.log_*`` flags (at start, and again on SIGHUP)."""
        self.messages = server.log_messages
        self.raw_requests = server.log_raw_requests
        self.raw_responses = server.log_raw_responses

    def _write(self, text: str) -> None:
        out = self._out or sys.stdout
        out.write(text + "\n")
        out.flush()

    def request(self, exchange: Exchange, body: Any) -> None:
        """The client's request as pretty JSON."""
        if self.raw_requests:
            pretty = orjson.dumps(body, option=orjson.OPT_INDENT_2).decode()
            if (redactor := self._redactor(exchange)) is not None:
                pretty = redactor.json_text(pretty) or pretty
            head = printable(f"[{exchange.request_id}] request {exchange.method} {exchange.endpoint}")
            self._write(f"{head}\n{pretty}")

    def response(self, exchange: Exchange, data: bytes) -> None:
        """One response body or stream line, pretty-printed when it is JSON."""
        if not self.raw_responses:
            return
        try:
            text = orjson.dumps(orjson.loads(data), option=orjson.OPT_INDENT_2).decode()
        except orjson.JSONDecodeError:
            # Not JSON: the backend's bytes as they are, but no terminal escapes.
            text = "\n".join(printable(line) for line in data.decode("utf-8", errors="replace").split("\n"))
        if (redactor := self._redactor(exchange)) is not None:
            text = redactor.json_text(text) or text
        self._write(printable(f"[{exchange.request_id}] response {exchange.endpoint}") + f"\n{text}")

    def summary(self, exchange: Exchange) -> None:
        """One human line per finished exchange."""
        if not self.messages:
            return
        parts = [
            f"[{exchange.request_id}] {exchange.method} {exchange.endpoint}",
            f"status={exchange.status_code}",
            f"{exchange.latency_ms}ms",
        ]
        if exchange.model:
            parts.append(f"Model: {exchange.model}")
        if exchange.prompt:
            parts.append(f"Prompt: {_short(exchange.prompt)}")
        if exchange.response:
            parts.append(f"Response: {_short(exchange.response)}")
        if exchange.tool_calls:
            names = [
                str((c.get("function") or {}).get("name")) for c in exchange.tool_calls if isinstance(c, dict)
            ]
            parts.append(f"Tool calls: {', '.join(names)}")
        if exchange.error:
            parts.append(f"Error: {exchange.error}")
        line = ", ".join(parts)
        if (redactor := self._redactor(exchange)) is not None:
            line = redactor.text(line) or line
        # One line, whatever the client or the backend put in the model, prompt or error.
        self._write(printable(line))


def _short(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SUMMARY_CHARS else flat[: SUMMARY_CHARS - 1] + "…"
