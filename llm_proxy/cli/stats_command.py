"""``llm-proxy stats``: requests, errors, latency, TTFT, tokens and the cache's hit rate, per group.

Read-only, on either store (``audit/reading.py``); the parser lives with the
other audit commands in ``cli/audit_commands.py``, which hands in its filters.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import orjson

from ..audit import query, reading
from ..audit.when import stamp
from ..config import Config
from .formats import cut, ms, or_dash

BY = ("model", "endpoint", "key", "backend")  # the tables of ``stats --by``
FiltersFrom = Callable[[argparse.Namespace], query.Filters]
PathOf = Callable[[argparse.Namespace, Config], str]


def run(args: argparse.Namespace, config: Config, filters_from: FiltersFrom, path_of: PathOf) -> int:
    """``llm-proxy stats``: the tables ``--by`` asks for, or all of them as JSON."""
    reader = reading.connect(path_of(args, config))
    try:
        f = filters_from(args)
        result = reader.stats(f)
    finally:
        reader.close()
    window = {
        "since": stamp(f.since) if f.since else None,
        "until": stamp(f.until) if f.until else None,
    }
    if args.json:
        tables = {f"by_{g}": result[f"by_{g}"] for g in dict.fromkeys(args.by or BY)}
        print(orjson.dumps({**window, **tables, "cache": result["cache"]}).decode())
        return 0
    span = f"{window['since'] or 'the first exchange'} to {window['until'] or 'now'}"
    print(f"from {span}")
    cache = result["cache"]
    if cache["qualified"]:
        print(
            f"answer cache: {cache['hits']} hits of {cache['qualified']} requests that qualified "
            f"({cache['hit_rate'] * 100:.1f}%), sparing the backend {ms(cache['saved_ms'])} and "
            f"{cache['saved_tokens']} tokens"
        )
    for title in dict.fromkeys(args.by or ("model", "endpoint")):
        rows = result[f"by_{title}"]
        print(f"\nby {title}:")
        print(
            f"  {title.upper():24} {'REQ':>6} {'ERR':>5} {'P50 ms':>8} {'P95 ms':>8} {'P99 ms':>8} "
            f"{'TTFT50':>7} {'TTFT95':>7} {'PROMPT TOK':>11} {'COMPL TOK':>10} {'TOK/S':>7} {'HIT%':>5}"
        )
        for s in rows:
            rate = s["cache_hit_rate"]
            print(
                f"  {cut(s[title], 24):24} {s['requests']:>6} {s['errors']:>5} "
                f"{or_dash(s['latency_ms_p50']):>8} {or_dash(s['latency_ms_p95']):>8} "
                f"{or_dash(s['latency_ms_p99']):>8} {or_dash(s['ttft_ms_p50']):>7} "
                f"{or_dash(s['ttft_ms_p95']):>7} {s['prompt_tokens']:>11} {s['completion_tokens']:>10} "
                f"{or_dash(s['tokens_per_s']):>7} {'-' if rate is None else f'{rate * 100:.0f}':>5}"
            )
        if not rows:
            print("  (no exchanges)")
    return 0
