"""The server's own state over its life: serving, then stopping."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Lifecycle:
    """Mutable process state that handlers may consult (the app itself is frozen once started)."""

    # Set when shutdown begins: requests cut off from then on were interrupted
    # by the proxy, not abandoned by their clients.
    stopping: bool = False
