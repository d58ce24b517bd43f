"""The dashboard's numbers: per model and time bucket, over a chosen range.

One indexed range scan of ``logs`` (by timestamp) reads the few numeric
columns; the buckets, percentiles and rates are folded here. Models beyond
the :data:`MAX_MODELS` busiest share one series, ``other``, so a made-up model
name per request cannot grow the answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from ..audit.query import Reader, percentile
from ..audit.when import stamp
from .signin import Refused

# Range → (bucket width in seconds, bucket count).
RANGES = {
    "1h": (60, 60), "6h": (300, 72), "24h": (900, 96), "7d": (7200, 84), "30d": (28800, 90),
}  # fmt: skip
MAX_MODELS = 8
OTHER = "other"

_SQL = (
    "SELECT CAST((julianday(timestamp) - julianday(?)) * 86400.0 / ? AS INTEGER), model, latency_ms, "
    "ttft_ms, prompt_tokens, completion_tokens, (error IS NOT NULL OR status_code >= 400) "
    "FROM logs WHERE timestamp >= ? AND timestamp < ?"
)


def parse_range(params: Mapping[str, str]) -> str:
    """The ``range`` parameter, checked (24h when absent)."""
    chosen = params.get("range", "24h").strip() or "24h"
    if chosen not in RANGES:
        raise Refused(400, f"'range' must be one of {', '.join(RANGES)}, got {chosen[:20]!r}")
    return chosen


class _Cell:
    __slots__ = ("errors", "latencies", "requests", "timed_ms", "timed_tokens", "tokens_in", "tokens_out",
                 "ttfts")  # fmt: skip

    def __init__(self) -> None:
        self.requests = self.errors = self.tokens_in = self.tokens_out = 0
        self.timed_tokens = self.timed_ms = 0
        self.latencies: list[int] = []
        self.ttfts: list[int] = []


def dashboard(reader: Reader, chosen: str, now: datetime | None = None) -> dict[str, Any]:
    """Series per model over ``chosen`` (a key of :data:`RANGES`), oldest bucket first."""
    width, count = RANGES[chosen]
    now = now or datetime.now(UTC)
    # Buckets end at the next whole bucket after now, so they stay put as time passes.
    end = datetime.fromtimestamp((int(now.timestamp()) // width + 1) * width, UTC)
    start = end - timedelta(seconds=width * count)
    since = stamp(start)
    cells: dict[tuple[str, int], _Cell] = {}
    per_model: dict[str, int] = {}
    rows = reader.conn.execute(_SQL, (since, width, since, stamp(end)))
    for bucket, model, latency, ttft, p_tok, c_tok, failed in rows:
        if not 0 <= bucket < count:
            continue
        name = model or "-"
        per_model[name] = per_model.get(name, 0) + 1
        cell = cells.get((name, bucket))
        if cell is None:
            cell = cells[(name, bucket)] = _Cell()
        cell.requests += 1
        cell.errors += failed
        if latency is not None:
            cell.latencies.append(latency)
        if ttft is not None:
            cell.ttfts.append(ttft)
        cell.tokens_in += p_tok or 0
        cell.tokens_out += c_tok or 0
        if c_tok and latency:
            cell.timed_tokens += c_tok
            cell.timed_ms += latency
    busiest = sorted(per_model, key=lambda m: (-per_model[m], m))
    shown = busiest[:MAX_MODELS]
    if len(busiest) > MAX_MODELS:
        shown.append(OTHER)
        kept = set(shown)
        for name, bucket in list(cells):
            if name not in kept:
                _merge(cells, (OTHER, bucket), cells.pop((name, bucket)))
    series = {name: _series(cells, name, count) for name in shown}
    return {
        "range": chosen,
        "start": since,
        "end": stamp(end),
        "bucket_s": width,
        "buckets": count,
        "models": shown,
        "requests": {name: per_model.get(name, 0) for name in busiest[:MAX_MODELS]},
        "series": series,
    }


def _merge(cells: dict[tuple[str, int], _Cell], key: tuple[str, int], cell: _Cell) -> None:
    into = cells.get(key)
    if into is None:
        cells[key] = cell
        return
    for name in ("requests", "errors", "tokens_in", "tokens_out", "timed_tokens", "timed_ms"):
        setattr(into, name, getattr(into, name) + getattr(cell, name))
    into.latencies += cell.latencies
    into.ttfts += cell.ttfts


def _series(cells: dict[tuple[str, int], _Cell], name: str, count: int) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {
        k: [None] * count
        for k in ("requests", "errors", "latency_p50", "latency_p95", "ttft_p50", "tokens_per_s",
                  "tokens_in", "tokens_out")
    }  # fmt: skip
    for bucket in range(count):
        cell = cells.get((name, bucket))
        if cell is None:
            for k in ("requests", "errors", "tokens_in", "tokens_out"):
                out[k][bucket] = 0
            continue
        cell.latencies.sort()
        cell.ttfts.sort()
        out["requests"][bucket] = cell.requests
        out["errors"][bucket] = cell.errors
        out["latency_p50"][bucket] = percentile(cell.latencies, 50)
        out["latency_p95"][bucket] = percentile(cell.latencies, 95)
        out["ttft_p50"][bucket] = percentile(cell.ttfts, 50)
        if cell.timed_ms:
            out["tokens_per_s"][bucket] = round(cell.timed_tokens * 1000 / cell.timed_ms, 1)
        out["tokens_in"][bucket] = cell.tokens_in
        out["tokens_out"][bucket] = cell.tokens_out
    return out
