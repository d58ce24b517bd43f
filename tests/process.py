"""The real ``llm-proxy serve`` process, started with a config file as a user starts it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import resource
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    """A running ``llm-proxy serve``: its URL, config file, database, stdout and stderr lines."""

    proc: asyncio.subprocess.Process
    url: str
    config_path: Path
    config: dict[str, Any]
    db: Path
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    readers: list[asyncio.Task[None]] = field(default_factory=list)

    def rewrite(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Edit the config file in place, as a user would before ``systemctl reload``."""
        change(self.config)
        self.config_path.write_text(yaml.safe_dump(self.config))

    async def wait_log(self, text: str, after: int = 0) -> str:
        """The first stderr line from index ``after`` on that contains ``text`` (waits at most 10 s)."""
        for _ in range(500):
            for line in self.stderr[after:]:
                if text in line:
                    return line
            await asyncio.sleep(0.02)
        raise AssertionError(f"no log line with {text!r} in:\n" + "\n".join(self.stderr))

    async def stop(self, signalled: bool = False) -> int:
        """SIGTERM (unless already sent), then the exit code."""
        if not signalled:
            self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        await asyncio.gather(*self.readers)
        return code


def _limit_open_files(count: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


async def _collect(stream: asyncio.StreamReader | None, into: list[str]) -> None:
    # Read continuously so a chatty process never blocks on a full pipe.
    assert stream is not None
    async for raw in stream:
        into.append(raw.decode().rstrip("\n"))


@contextlib.asynccontextmanager
async def serve(
    tmp_path: Path,
    endpoint: str,
    env: dict[str, str] | None = None,
    open_files: int | None = None,
    **sections: Any,
) -> AsyncIterator[Served]:
    """Start the real process in front of ``endpoint`` with a config file (``sections`` merged
    in), wait until it answers, stop it at the end. ``open_files`` limits its file descriptors
    (RLIMIT_NOFILE), as systemd's LimitNOFILE does."""
    port = free_port()
    db = tmp_path / "audit.db"
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port},
        "backend": {"type": "ollama", "endpoint": endpoint},
        "database": {"path": str(db)},
    }
    for name, values in sections.items():
        config[name] = values if isinstance(values, list) else {**config.get(name, {}), **values}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llm_proxy", "serve", "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
        preexec_fn=None if open_files is None else functools.partial(_limit_open_files, open_files),
    )  # fmt: skip
    served = Served(proc, f"http://127.0.0.1:{port}", path, config, db)
    served.readers += [
        asyncio.create_task(_collect(proc.stdout, served.stdout)),
        asyncio.create_task(_collect(proc.stderr, served.stderr)),
    ]
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):  # bounded: 10 s
                try:
                    async with http.get(f"{served.url}/health/live") as resp:
                        if resp.status in (200, 401):  # 401: it answers, behind API keys
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("proxy did not start:\n" + "\n".join(served.stderr))
        yield served
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await asyncio.gather(*served.readers, return_exceptions=True)
