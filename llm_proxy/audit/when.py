"""Points in time as users write them (``2h``, ``7d``, ``2026-11-01``) and as ``logs`` stores them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """A duration such as ``30m``, ``2h``, ``7d`` or ``2w``; ValueError otherwise."""
    match = _AGE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration such as 30m, 2h, 7d or 2w")
    return timedelta(**{_UNITS[match[2]]: float(match[1])})


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """A relative age (``2h`` = two hours ago) or an ISO date/time (UTC unless it says otherwise)."""
    now = now or datetime.now(UTC)
    if _AGE.match(text):
        return now - parse_age(text)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (2h, 7d) nor an ISO date or time (2026-11-01, 2026-11-01T03:00)"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def stamp(when: datetime) -> str:
    """``when`` as the ``logs.timestamp`` text, so that string comparison orders correctly."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
