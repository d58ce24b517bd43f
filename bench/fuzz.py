"""A longer fuzz campaign than CI runs: generated garbage at every endpoint, counts printed.

    PYTHONPATH=. python bench/fuzz.py --examples 2000

Uses the same strategies, live proxies (ollama and openai backends, each in
front of its test double) and contract as tests/test_fuzz.py. Prints, per
backend and endpoint, how many requests were sent and how they were answered,
then any contract violations and requests without an audit row. Exits 1 if
there were any.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, given, settings

from tests.fuzzing import TARGETS, Stack, bodies, check, digests, live_stacks, path_for


def campaign(stack: Stack, method: str, route: str, examples: int, failures: list[str]) -> Counter[int]:
    """Send ``examples`` generated requests to one endpoint; count answers by status."""
    statuses: Counter[int] = Counter()

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=bodies(route), digest=digests)
    def one(body: bytes, digest: str) -> None:
        answer = stack.send(method, path_for(route, digest), body)
        statuses[answer.status] += 1
        try:
            check(stack, method, route, answer)
        except AssertionError as exc:
            # Keep going: a campaign reports every kind of failure, not the first.
            failures.append(f"{stack.backend_type} {method} {route}: {exc} body={body[:120]!r}")

    one()
    return statuses


def main() -> int:
    """Run the campaign and print the counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000, help="requests per endpoint and backend")
    parser.add_argument("--backend", choices=["ollama", "openai", "both"], default="both")
    args = parser.parse_args()
    failures: list[str] = []
    total: Counter[int] = Counter()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, live_stacks(Path(tmp)) as stacks:
        chosen = ["ollama", "openai"] if args.backend == "both" else [args.backend]
        for backend_type in chosen:
            stack = stacks[backend_type]
            for method, route in TARGETS:
                counts = campaign(stack, method, route, args.examples, failures)
                total.update(counts)
                shown = " ".join(f"{status}:{n}" for status, n in sorted(counts.items()))
                print(f"{backend_type:6} {method:6} {route:22} {sum(counts.values()):6}  {shown}", flush=True)
            rows = stack.wait_for_rows(within=60)
            missing = [rid for rid in stack.sent if rid not in rows]
            mismatched = [rid for rid in stack.sent if rid in rows and rows[rid] != stack.sent[rid]]
            print(
                f"{backend_type}: {len(stack.sent)} requests, {len(rows)} audit rows, "
                f"{len(missing)} without a row, {len(mismatched)} with another status",
                flush=True,
            )
            failures += [f"{backend_type}: no audit row for {rid}" for rid in missing[:20]]
            failures += [f"{backend_type}: row status differs for {rid}" for rid in mismatched[:20]]
    elapsed = time.perf_counter() - started
    sent = sum(total.values())
    print(f"\n{sent} requests in {elapsed:.1f} s ({sent / elapsed:.0f}/s)")
    print("by status: " + " ".join(f"{status}:{n}" for status, n in sorted(total.items())))
    print(f"contract violations: {len(failures)}")
    for failure in failures[:50]:
        print("  " + failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
