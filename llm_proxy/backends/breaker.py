"""The circuit breaker of one backend: skipped after failures in a row, back after a probe.

``closed`` (the usual state): requests go to it. After ``routing.breaker_failures``
failures in a row (unreachable, timed out, 502/503/504) it is ``open``: the
router tries it only when no other backend serving the model is closed, and a
background probe (its health check, every ``routing.probe_interval`` seconds)
closes it again once it answers. A success closes it at once too.
"""

from __future__ import annotations

import time

CLOSED, OPEN = "closed", "open"


class Breaker:
    """Counts failures in a row and says whether the backend is skipped."""

    __slots__ = ("failures", "last_error", "opened_at", "threshold")

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.failures = 0  # in a row
        self.opened_at: float | None = None  # time.monotonic() when it opened
        self.last_error: str | None = None

    @property
    def state(self) -> str:
        """``closed`` or ``open``."""
        return CLOSED if self.opened_at is None else OPEN

    @property
    def is_open(self) -> bool:
        """The backend is skipped while another one serves the model."""
        return self.opened_at is not None

    def failure(self, error: str | None) -> bool:
        """Count one failure; True when this one opened the breaker."""
        self.failures += 1
        self.last_error = error
        if self.opened_at is None and self.failures >= self.threshold:
            self.opened_at = time.monotonic()
            return True
        return False

    def success(self) -> bool:
        """The backend answered: the count starts again; True when this closed an open breaker."""
        was_open = self.opened_at is not None
        self.failures = 0
        self.opened_at = None
        return was_open
