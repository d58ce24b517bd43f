"""Benchmark: what the llamacpp backend's process management costs, with the real llama-server.

Runs llm-proxy as a program with two names for the SmolLM2 file and
``max_running: 1``, then times, through the real ``ollama`` client, a request
that starts a server (cold), one that finds it running (warm), one that must
stop the other model's server first (switch), and how long a ``keep_alive: 0``
server takes to be gone after its answer. Every answer is one token.

Needs what ``bash tests/install.sh`` installs. Run: python bench/llamacpp.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ollama
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.llama_server import find_binary, find_model, free_port  # noqa: E402

USER = [{"role": "user", "content": "Hi"}]
ONE_TOKEN = {"num_predict": 1, "temperature": 0}


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def timed(client: ollama.Client, model: str, **extra: Any) -> float:
    """Milliseconds for one non-streamed one-token chat."""
    started = time.perf_counter()
    client.chat(model=model, messages=USER, options=ONE_TOKEN, stream=False, **extra)
    return (time.perf_counter() - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llm-proxy-bench-"))
    port = free_port()
    model = {"path": str(find_model()), "ctx": 1024, "args": ["-t", "1"]}
    config = {
        "server": {"port": port},
        "backend": {"type": "llamacpp", "server_binary": str(find_binary()), "max_running": 1,
                    "models": {"a": model, "b": model}},
        "database": {"path": str(work / "bench.db")},
    }  # fmt: skip
    (work / "config.yaml").write_bytes(orjson.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proxy = subprocess.Popen(
        [sys.executable, "-m", "llm_proxy", "serve", "--config", str(work / "config.yaml")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proxy.stdout is not None
    for line in proxy.stdout:
        if " listening on " in line:
            break
    client = ollama.Client(host=f"http://127.0.0.1:{port}", timeout=120)
    cold, warm, switch, gone = [], [], [], []
    try:
        for _ in range(args.rounds):
            client.generate(model="a", prompt="", keep_alive=0)  # unload a, if running
            client.generate(model="b", prompt="", keep_alive=0)
            cold.append(timed(client, "a"))
            warm.append(timed(client, "a"))
            switch.append(timed(client, "b"))
            [pid] = children(proxy.pid)
            timed(client, "b", keep_alive=0)
            started = time.perf_counter()
            for _ in range(2000):
                if not children(proxy.pid):
                    break
                time.sleep(0.005)
            gone.append((time.perf_counter() - started) * 1000)
            assert pid not in children(proxy.pid)
    finally:
        proxy.terminate()
        proxy.wait(30)
    load = os.getloadavg()[0]
    print(f"llamacpp backend, SmolLM2-135M, 1-token answers, {args.rounds} rounds, load {load:.1f}")
    for name, values in (("cold (start + load + answer)", cold), ("warm (running)", warm),
                         ("switch (stop other + start + answer)", switch),
                         ("keep_alive 0: gone after answer", gone)):  # fmt: skip
        print(f"  {name:40s} median {statistics.median(values):7.0f} ms   max {max(values):7.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
