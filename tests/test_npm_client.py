"""The npm ``ollama`` client (ollama-js, what Node apps and many web UIs use) through the proxy.

Node runs tests/npm_client.mjs against a proxy in front of the real llama-server
and prints what the client read; ``bash tests/install.sh`` installs the package
into tests/.cache/npm. Shapes are asserted, not words.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from .conftest import MakeProxy
from .llama_server import LlamaServer
from .test_e2e_llama_server import MODEL

HERE = Path(__file__).parent
NPM_DIR = HERE / ".cache" / "npm"
INSTALL_HINT = "run `bash tests/install.sh` (it installs node and the npm ollama package, tests/.cache/npm)"


async def run_client(host: str) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not (NPM_DIR / "node_modules" / "ollama").is_dir():
        pytest.fail(f"node or the npm ollama package is missing: {INSTALL_HINT}", pytrace=False)
    env = {**os.environ, "NODE_PATH": str(NPM_DIR / "node_modules")}
    # An .mjs file resolves packages from its own folder upwards: run a copy beside node_modules.
    script = NPM_DIR / "npm_client.mjs"
    script.write_bytes((HERE / "npm_client.mjs").read_bytes())
    process = await asyncio.create_subprocess_exec(
        node, str(script), host, MODEL, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    result: dict[str, Any] = orjson.loads(out)
    return result


async def test_the_npm_client_reads_every_answer(make_proxy: MakeProxy, chat_server: LlamaServer) -> None:
    proxy = await make_proxy(chat_server.url, backend_type="openai")
    seen = await run_client(proxy.url)
    assert [m["name"] for m in seen["list"]] == ["smollm2:latest"] and seen["list"][0]["size"] > 0
    assert "completion" in seen["show"]["capabilities"]
    chat = seen["chat"]
    assert chat["done"] is True and chat["done_reason"] in ("stop", "length") and chat["eval_count"] > 0
    stream = seen["stream"]
    assert [c["done"] for c in stream] == [False] * (len(stream) - 1) + [True] and len(stream) >= 2
    # Open WebUI's unload: one JSON object saying "unload", which the client parses as such.
    assert seen["unload"] == {"done": True, "done_reason": "unload", "response": ""}
    missing = seen["missing"]
    assert missing["name"] == "ResponseError" and missing["status_code"] == 404
    assert "no-such-model" in missing["message"]
    rows = await proxy.wait_rows(6)
    by_endpoint = [(r["endpoint"], r["status_code"]) for r in rows]
    assert by_endpoint == [
        ("/api/tags", 200), ("/api/show", 200), ("/api/chat", 200), ("/api/chat", 200),
        ("/api/generate", 200), ("/api/chat", 404),
    ]  # fmt: skip
    assert rows[3]["response"] == "".join(c["content"] for c in stream)
