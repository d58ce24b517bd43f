"""Bytes a 10-round Home Assistant turn takes in the audit trail, compact versus whole requests.

Drives the real proxy (openai backend, in front of the llama-server double)
with the real ``ollama`` client through one spoken request of ten rounds (nine
tool calls, then the answer; tests/ha_turn.py), then compares:

- whole: every round's client request JSON (and the translated backend
  request) as it would be stored one full copy per row;
- compact: what the rows actually hold for those bodies (the recipes plus
  the leftover literal text), plus every blob they name, each counted once.

Run from the repository root: ``PYTHONPATH=$PWD python bench/audit_compact.py``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import tempfile
from pathlib import Path

from aiohttp.test_utils import TestServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llm_proxy import config as config_mod
from llm_proxy.audit import query
from llm_proxy.audit.compact import blob_names
from llm_proxy.server.app import create_app
from tests import ha_turn
from tests.llama_double import LlamaServerDouble

ROUNDS = 10


def stored_bytes(db: Path) -> dict[str, int]:
    """Whole versus compact bytes for the request bodies of every row."""
    reader = query.connect(str(db))
    conn = sqlite3.connect(db)
    out = {"rows": 0, "whole_client": 0, "whole_backend": 0, "compact_client": 0, "compact_backend": 0}
    names: dict[str, set[str]] = {"client": set(), "backend": set()}
    for row_id, body, parts, backend, bparts in conn.execute(
        "SELECT id, request_body, request_parts, backend_request, backend_request_parts FROM logs "
        "WHERE endpoint = '/api/chat'"
    ):
        full = reader.get(row_id)
        out["rows"] += 1
        out["whole_client"] += len(full["request_body"].encode())
        out["whole_backend"] += len(full["backend_request"].encode())
        out["compact_client"] += len((body or parts or "").encode())
        out["compact_backend"] += len((backend or bparts or "").encode())
        for kind, recipe in (("client", parts), ("backend", bparts)):
            if recipe:
                names[kind].update(blob_names(recipe))
    for kind in ("client", "backend"):
        for key in names[kind]:
            (data,) = conn.execute("SELECT data FROM blobs WHERE hash = ?", (key,)).fetchone()
            out[f"compact_{kind}"] += len(data.encode())
    reader.close()
    conn.close()
    return out


async def main() -> Path:
    tmp = Path(tempfile.mkdtemp())
    db = tmp / "bench.db"
    double = LlamaServerDouble()
    backend = TestServer(double.app(), host="127.0.0.1")
    await backend.start_server()
    raw = {
        "backend": {"type": "openai", "endpoint": str(backend.make_url("")).rstrip("/")},
        "database": {"path": str(db)},
    }
    proxy = TestServer(create_app(config_mod.from_dict(raw)), host="127.0.0.1")
    await proxy.start_server()
    capture = ha_turn.Capture()
    c = ha_turn.client(str(proxy.make_url("")).rstrip("/"), capture)
    await ha_turn.spoken_request(c, double, ha_turn.start_messages(), "Turn on the kitchen light", ROUNDS)
    await proxy.close()  # drains the writer
    await backend.close()
    n = stored_bytes(db)
    sent = sum(len(b) for b in capture.bodies)
    assert n["whole_client"] == sent, "stored client requests differ from what was sent"
    print(f"{n['rows']} rounds of one Home Assistant turn "
          f"(system prompt {len(ha_turn.SYSTEM)} chars, {len(ha_turn.TOOLS)} tools)")  # fmt: skip
    for kind in ("client", "backend"):
        whole, compact = n[f"whole_{kind}"], n[f"compact_{kind}"]
        share = 100 * compact / whole
        print(f"  {kind:8} requests: whole {whole:>8} B   compact {compact:>7} B   {share:5.1f} %")
    whole = n["whole_client"] + n["whole_backend"]
    compact = n["compact_client"] + n["compact_backend"]
    print(f"  both             whole {whole:>8} B   compact {compact:>7} B   {100 * compact / whole:5.1f} %")
    return db


if __name__ == "__main__":
    path = asyncio.run(main())
    print(f"  database file after the turn: {os.path.getsize(path)} B")
