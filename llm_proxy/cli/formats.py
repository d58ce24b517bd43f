"""How the audit commands print values: one-line texts, cut columns, dashes for nothing."""

from __future__ import annotations

from typing import Any


def flat(text: str | None) -> str:
    return " ".join(text.split()) if text else ""


def cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def time(ts: str) -> str:
    return ts[:19].replace("T", " ")


def or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def ms(value: int | None) -> str:
    return "-" if value is None else f"{value} ms"


def yes(value: Any) -> str:
    return "-" if value is None else ("yes" if value else "no")


def mb(n: int) -> str:
    return f"{n / 1024 / 1024:.2f} MB"
