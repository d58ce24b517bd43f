"""Whether the web UI is on, and why: the safe-by-default rule and the start-up line.

The API never lets one client read another's prompts. The UI shows every
exchange, so it is on by default only where that exposes nothing new: a proxy
that listens on loopback (only this machine reaches it, and ``sqlite3`` or
``psql`` read the same trail), or one with ``auth.keys``, where only keys with ``admin: true``
may sign in. Listening further without keys, it stays off unless
``ui.enabled: true`` says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config
from ..server.auth import is_loopback

PREFIX = "/ui"


@dataclass(frozen=True, slots=True)
class Decision:
    """The UI on or off, and the reason the start-up line gives."""

    on: bool
    why: str
    # Sign-in with an admin key is needed (auth.keys is set).
    sign_in: bool = False


def decide(config: Config) -> Decision:
    """Apply the rule to ``config``."""
    ui, auth, host = config.ui, config.auth, config.server.host
    if ui.enabled is False:
        return Decision(False, "ui.enabled is false")
    if auth.keys:
        admins = [k.name for k in auth.keys if k.admin]
        if admins:
            return Decision(True, f"sign in with an admin key: {', '.join(admins)}", sign_in=True)
        return Decision(True, "no key in auth.keys has admin: true yet, so nobody can sign in", sign_in=True)
    if is_loopback(host):
        return Decision(True, "listening on loopback only: no sign-in")
    if ui.enabled is True:
        return Decision(
            True,
            f"warning: ui.enabled is true on {host} without auth.keys: "
            f"anyone who can reach port {config.server.port} can read every exchange",
        )
    return Decision(
        False,
        f"listening on {host} without auth.keys, it would show every exchange to anyone; "
        "set auth.keys with an admin: true key, or ui.enabled: true",
    )


def startup_line(config: Config) -> str:
    """The line ``serve`` prints after the listening line."""
    decision = decide(config)
    if not decision.on:
        return f"web UI off: {decision.why}"
    host = config.server.host
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"web UI at http://{shown}:{config.server.port}{PREFIX}/ ({decision.why})"
