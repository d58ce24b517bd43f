"""Benchmark: what OpenTelemetry export adds per request (telemetry.enabled, sampling 1.0).

Starts, on 127.0.0.1, the fast llama-server-style fake (bench/fake_backend.py),
an OTLP/HTTP receiver that decodes every export (bench/otlp_sink.py), and two
real ``llm-proxy serve`` processes in front of the fake: one with telemetry off,
one exporting every exchange's spans and the GenAI metrics to the receiver.
It sends the same requests through both, interleaved in rounds so that drift
hits both alike, and prints p50/p99 per request and the difference. At the end
it stops the exporting proxy (which sends what is queued) and checks that the
receiver got the spans of every request (two each: the exchange and its backend try).

Run: python bench/telemetry.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import run  # bench/run.py: the fake backend, the load loop, percentiles

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HEADER = "| request | concurrency | p50 off (ms) | p50 on (ms) | added p50 | p99 off | p99 on | added p99 |"


def start_proxy(workdir: Path, name: str, backend: run.Proc, telemetry: dict[str, object]) -> run.Proc:
    sections = {"backend": {"type": "openai", "endpoint": backend.url}, "telemetry": telemetry}
    return run.serve(workdir, name, sections, ROOT)


def start_sink() -> run.Proc:
    port = run.free_port()
    popen = subprocess.Popen([sys.executable, str(HERE / "otlp_sink.py"), str(port)])
    return run.Proc(popen, f"http://127.0.0.1:{port}")


async def measure(quick: bool, fake: run.Proc, sink: run.Proc, off: run.Proc, on: run.Proc) -> None:
    counts = {1: 200, 20: 1000} if quick else {1: 800, 20: 4000}
    streams = 100 if quick else 400
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for p, path in ((fake, "/health"), (sink, "/count"), (off, "/health"), (on, "/health")):
            await run.wait_up(session, p.url, path)
        print(HEADER)
        print("|---|---|---|---|---|---|---|---|")
        phases = [("chat, whole answer", False, c, n) for c, n in counts.items()]
        phases.append(("chat, streamed", True, 1, streams))
        for label, stream, concurrency, total in phases:
            body = run.chat_body("proxy", stream)
            targets = [
                run.Target(name, p.url + "/api/chat", body, p) for name, p in (("off", off), ("on", on))
            ]
            for _ in range(run.ROUNDS):  # interleaved rounds
                for t in targets:
                    await run.load(session, t, total // run.ROUNDS, concurrency)
            a, b = targets[0].latencies, targets[1].latencies
            cells = [
                run.pct(a, 50), run.pct(b, 50), run.pct(b, 50) - run.pct(a, 50),
                run.pct(a, 99), run.pct(b, 99), run.pct(b, 99) - run.pct(a, 99),
            ]  # fmt: skip
            print(f"| {label} | {concurrency} | {' | '.join(run.ms(c) for c in cells)} |", flush=True)
        on.popen.send_signal(signal.SIGTERM)  # the last batch goes out as it stops
        await asyncio.to_thread(on.popen.wait, 30)
        async with session.get(sink.url + "/count") as resp:
            got = await resp.json()
        per = got["spans"] / max(on.sent, 1)
        print(
            f"\nexporting proxy: {on.sent} requests, {got['spans']} spans received ({per:.2f} per request),"
        )
        print(f"{got['metric_exports']} metric exports")


def main() -> None:
    parser = argparse.ArgumentParser(description="What OpenTelemetry export adds per request.")
    parser.add_argument("--quick", action="store_true", help="a quarter of the requests")
    parser.add_argument("--sampling", type=float, default=1.0, help="telemetry.sampling (default 1.0)")
    parser.add_argument("--no-metrics", action="store_true", help="telemetry.metrics: false")
    args = parser.parse_args()
    quick = args.quick
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        fake = run.start_fake("sse", run.CHUNKS)
        sink = start_sink()
        off = start_proxy(workdir, "off", fake, {"enabled": False})
        settings = {"enabled": True, "endpoint": sink.url, "sampling": args.sampling}
        settings["metrics"] = not args.no_metrics
        on = start_proxy(workdir, "on", fake, settings)
        procs = [fake, sink, off, on]
        try:
            asyncio.run(measure(quick, fake, sink, off, on))
        finally:
            for p in procs:
                if p.popen.poll() is None:
                    p.popen.terminate()
            for p in procs:
                try:
                    p.popen.wait(10)
                except subprocess.TimeoutExpired:
                    p.popen.kill()
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
