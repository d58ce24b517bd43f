"""Ollama's ``keep_alive``: a number of seconds or a Go duration, as seconds.

Pure: the openai backend reads it to tell a load from an unload, the
llamacpp backend to know how long a model's server stays up.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from ..errors import BadRequest

_GO_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: Any) -> float | None:
    """Ollama's ``keep_alive`` in seconds: None when absent, negative means forever.

    Clients send numbers (seconds) or Go durations: ``"5m"``, ``"-1s"``,
    ``"300.0s"``, ``"1h30m"`` (Home Assistant sends ``"-1s"``).
    """
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        with contextlib.suppress(ValueError):
            return sign * float(body)  # "300": seconds, as a number would be
        pieces = _GO_DURATION.findall(body)
        if body and "".join(number + unit for number, unit in pieces) == body:
            return sign * sum(float(number) * _GO_UNITS[unit] for number, unit in pieces)
    raise BadRequest(f"'keep_alive' must be a number of seconds or a duration like \"5m\", got {value!r}")
