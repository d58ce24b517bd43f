"""The dashboard's numbers: per model and time bucket, over a chosen range.

A bucket that has closed hardly changes, so its numbers are computed once and
kept (:class:`Dashboards`). A kept bucket is checked by counting its rows
through the timestamp index (which reads the index alone), the two newest on
every request and the others once every :data:`RECHECK` seconds, and read
again only when the count differs: the bucket now filling, one a long
request landed in late, one that retention or a deletion thinned. So the
first look at 30 days scans them once, and a later one costs a few counts and
the newest buckets; an older bucket's numbers lag a change by at most
``RECHECK`` seconds.

Models beyond the :data:`MAX_MODELS` busiest share one series, ``other``, so
a made-up model name per request cannot grow the answer. Its counts and sums
are exact; its percentiles are those of its busiest model in each bucket.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..audit.query import Reader, percentile
from ..audit.when import stamp
from . import dialect
from .signin import Refused

# Range → (bucket width in seconds, bucket count).
RANGES = {
    "1h": (60, 60), "6h": (300, 72), "24h": (900, 96), "7d": (7200, 84), "30d": (28800, 90),
}  # fmt: skip
MAX_MODELS = 8
OTHER = "other"
KEPT = 4096  # buckets kept, all ranges together; the oldest computed go first
RECHECK = 60.0  # seconds a kept bucket is trusted before its rows are counted again

_COUNT = "SELECT count(*) FROM logs WHERE timestamp >= ? AND timestamp < ?"
_ROWS = (
    # The bucket (dialect.bucket), then what the numbers are made of.
    "SELECT {bucket}, model, latency_ms, ttft_ms, prompt_tokens, completion_tokens, "
    "(error IS NOT NULL OR status_code >= 400) FROM logs WHERE timestamp >= ? AND timestamp < ?"
)


def parse_range(params: Mapping[str, str]) -> str:
    """The ``range`` parameter, checked (24h when absent)."""
    chosen = params.get("range", "24h").strip() or "24h"
    if chosen not in RANGES:
        raise Refused(400, f"'range' must be one of {', '.join(RANGES)}, got {chosen[:20]!r}")
    return chosen


@dataclass(slots=True)
class Stats:
    """One model's numbers in one bucket."""

    requests: int = 0
    errors: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    timed_tokens: int = 0  # answer tokens of rows with a latency, and that latency
    timed_ms: int = 0
    latency_p50: int | None = None
    latency_p95: int | None = None
    ttft_p50: int | None = None


class Dashboards:
    """Builds dashboards, keeping the numbers of the buckets it has computed."""

    def __init__(self) -> None:
        # (bucket width, bucket start in epoch seconds) → its row count, model → stats, when counted
        self._kept: OrderedDict[tuple[int, int], tuple[int, dict[str, Stats], float]] = OrderedDict()
        self._lock = threading.Lock()

    def build(self, reader: Reader, chosen: str, now: datetime | None = None) -> dict[str, Any]:
        """Series per model over ``chosen`` (a key of :data:`RANGES`), oldest bucket first."""
        width, count = RANGES[chosen]
        now = now or datetime.now(UTC)
        # Buckets end at the next whole bucket after now, so they stay put as time passes.
        last = (int(now.timestamp()) // width + 1) * width
        starts = [last - width * (count - i) for i in range(count + 1)]
        points = [datetime.fromtimestamp(s, UTC) for s in starts]
        bounds = [stamp(p) for p in points]
        # As logs.timestamp compares with them: the same text on SQLite, times on PostgreSQL.
        at = bounds if dialect.sqlite(reader) else [reader.dialect.time(p) for p in points]
        clock = time.monotonic()
        buckets: list[dict[str, Stats]] = []
        stale = []
        for i in range(count):
            with self._lock:
                kept = self._kept.get((width, starts[i]))
            if kept is not None and i < count - 2 and clock - kept[2] < RECHECK:
                buckets.append(kept[1])
                continue
            rows = dialect.value(reader, _COUNT, (at[i], at[i + 1]))
            if rows == 0:
                buckets.append({})
            elif kept is not None and kept[0] == rows:
                buckets.append(kept[1])
                with self._lock:
                    self._kept[(width, starts[i])] = (rows, kept[1], clock)
            else:
                buckets.append({})
                stale.append(i)
        for first, end in _runs(stale):
            computed = _compute(reader, at[first], at[end], width, end - first)
            with self._lock:
                for i, (rows, stats) in enumerate(computed, start=first):
                    buckets[i] = stats
                    self._kept[(width, starts[i])] = (rows, stats, clock)
                    self._kept.move_to_end((width, starts[i]))
                while len(self._kept) > KEPT:
                    self._kept.popitem(last=False)
        return _answer(chosen, bounds, width, buckets)


def _runs(indexes: list[int]) -> list[tuple[int, int]]:
    """Consecutive indexes as (first, end) pairs: one scan for each run of buckets."""
    runs: list[tuple[int, int]] = []
    for i in indexes:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _compute(
    reader: Reader, since: Any, until: Any, width: int, count: int
) -> list[tuple[int, dict[str, Stats]]]:
    """Read the rows of ``count`` buckets from ``since``: per bucket, its rows and each model's stats."""
    sums: list[dict[str, Stats]] = [{} for _ in range(count)]
    values: list[dict[str, tuple[list[int], list[int]]]] = [{} for _ in range(count)]
    totals = [0] * count
    bucket, params = dialect.bucket(reader, since, width)
    rows = dialect.rows(reader, _ROWS.format(bucket=bucket), (*params, since, until))
    for b, model, latency, ttft, p_tok, c_tok, failed in rows:
        if b is None or not 0 <= b < count:  # a timestamp written by hand in another shape
            continue
        name = model or "-"
        totals[b] += 1
        stats = sums[b].get(name)
        if stats is None:
            stats = sums[b][name] = Stats()
            values[b][name] = ([], [])
        latencies, ttfts = values[b][name]
        stats.requests += 1
        stats.errors += failed
        if latency is not None:
            latencies.append(latency)
        if ttft is not None:
            ttfts.append(ttft)
        stats.tokens_in += p_tok or 0
        stats.tokens_out += c_tok or 0
        if c_tok and latency:
            stats.timed_tokens += c_tok
            stats.timed_ms += latency
    for b in range(count):
        for name, stats in sums[b].items():
            latencies, ttfts = values[b][name]
            latencies.sort()
            ttfts.sort()
            stats.latency_p50 = percentile(latencies, 50)
            stats.latency_p95 = percentile(latencies, 95)
            stats.ttft_p50 = percentile(ttfts, 50)
    return list(zip(totals, sums, strict=True))


def _answer(chosen: str, bounds: list[str], width: int, buckets: list[dict[str, Stats]]) -> dict[str, Any]:
    count = len(buckets)
    per_model: dict[str, int] = {}
    for bucket in buckets:
        for name, stats in bucket.items():
            per_model[name] = per_model.get(name, 0) + stats.requests
    busiest = sorted(per_model, key=lambda m: (-per_model[m], m))
    shown = busiest[:MAX_MODELS]
    if len(busiest) > MAX_MODELS:
        shown.append(OTHER)
    kept = set(shown)
    series = {name: _empty(count) for name in shown}
    for b, bucket in enumerate(buckets):
        merged: dict[str, Stats] = {}
        lead: dict[str, int] = {}
        for name, stats in bucket.items():
            into = name if name in kept else OTHER
            total = merged.get(into)
            if total is None:
                merged[into] = total = Stats()
            for field in ("requests", "errors", "tokens_in", "tokens_out", "timed_tokens", "timed_ms"):
                setattr(total, field, getattr(total, field) + getattr(stats, field))
            if stats.requests > lead.get(into, 0):
                lead[into] = stats.requests
                total.latency_p50, total.latency_p95 = stats.latency_p50, stats.latency_p95
                total.ttft_p50 = stats.ttft_p50
        for name, total in merged.items():
            line = series[name]
            line["requests"][b], line["errors"][b] = total.requests, total.errors
            line["tokens_in"][b], line["tokens_out"][b] = total.tokens_in, total.tokens_out
            line["latency_p50"][b], line["latency_p95"][b] = total.latency_p50, total.latency_p95
            line["ttft_p50"][b] = total.ttft_p50
            if total.timed_ms:
                line["tokens_per_s"][b] = round(total.timed_tokens * 1000 / total.timed_ms, 1)
    return {
        "range": chosen,
        "start": bounds[0],
        "end": bounds[-1],
        "bucket_s": width,
        "buckets": count,
        "models": shown,
        "requests": {name: per_model[name] for name in busiest[:MAX_MODELS]},
        "series": series,
    }


def _empty(count: int) -> dict[str, list[Any]]:
    zero = ("requests", "errors", "tokens_in", "tokens_out")
    gaps = ("latency_p50", "latency_p95", "ttft_p50", "tokens_per_s")
    return {**{k: [0] * count for k in zero}, **{k: [None] * count for k in gaps}}
