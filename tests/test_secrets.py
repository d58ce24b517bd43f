"""Storage hygiene: keys never reach the database, stdout or the log; the trail is private (0600)."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import aiohttp
import ollama
import pytest

from .conftest import Proxy, present, read_rows
from .ollama_double import OllamaDouble
from .process import serve

CLIENT_KEY = "ck-7d1e0c5a93b24f68a1c0"
WRONG_KEY = "wk-2b9f4e7a10c35d86e2f1"
BACKEND_KEY = "bk-5c3a8e1f72d049b6c8a4"
USER = [{"role": "user", "content": "Why is the sky blue?"}]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def trail_modes(db: Path) -> list[int]:
    """Modes of the database, its -wal and its -shm (all three must exist)."""
    return [mode(Path(f"{db}{suffix}")) for suffix in ("", "-wal", "-shm")]


def trail_bytes(db: Path) -> bytes:
    """Everything SQLite keeps on disk for ``db``."""
    return b"".join(p.read_bytes() for p in db.parent.iterdir() if p.name.startswith(db.name))


async def test_database_wal_and_shm_are_private(proxy: Proxy) -> None:
    await ollama.AsyncClient(host=proxy.url).chat(model="llama3.2", messages=USER, stream=False)
    await proxy.wait_rows(1)
    # The proxy is running, so WAL mode keeps the -wal and -shm files open.
    assert trail_modes(proxy.db) == [0o600, 0o600, 0o600]


def test_migrate_creates_a_private_database(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    done = subprocess.run(
        [sys.executable, "-m", "llm_proxy", "migrate", "--db", str(db)], capture_output=True, timeout=30
    )
    assert done.returncode == 0 and mode(db) == 0o600


async def test_no_key_in_database_stdout_or_log_after_an_authenticated_session(
    tmp_path: Path, ollama_double: tuple[OllamaDouble, str]
) -> None:
    double, backend = ollama_double
    async with serve(
        tmp_path, backend,
        server={"log_messages": True, "log_raw_requests": True, "log_raw_responses": True},
        backend={"api_key": BACKEND_KEY},
        auth={"keys": [{"name": "home-assistant", "key": CLIENT_KEY}]},
    ) as served, aiohttp.ClientSession() as http:  # fmt: skip
        url = served.url
        ha = ollama.AsyncClient(host=url, headers={"Authorization": f"Bearer {CLIENT_KEY}"})
        assert "".join(
            [present(c.message.content) async for c in await ha.chat("llama3.2", USER, stream=True)]
        )
        await ha.generate(model="llama3.2", prompt="p", stream=False)
        await ha.list()
        await ha.embed(model="nomic-embed-text", input=["a"])
        with pytest.raises(ollama.ResponseError):
            await ha.chat(model="missing", messages=USER)
        with pytest.raises(ollama.ResponseError):
            await ollama.AsyncClient(host=url, headers={"Authorization": f"Bearer {WRONG_KEY}"}).list()
        headers = {"X-API-Key": CLIENT_KEY, "Cookie": f"session={CLIENT_KEY}"}
        async with http.get(f"{url}/api/ps", headers=headers) as resp:
            assert resp.status == 200
        async with http.post(f"{url}/api/chat", headers={"X-API-Key": WRONG_KEY}, data=b"{") as resp:
            assert resp.status == 401
        assert await served.stop() == 0
    out, err = "\n".join(served.stdout).encode(), "\n".join(served.stderr).encode()
    db = served.db
    rows = read_rows(db, 8)
    assert len(rows) == 8
    assert {r["key_name"] for r in rows} == {"home-assistant", None}
    assert "Prompt: Why is the sky blue?" in out.decode()  # the console did print the session
    # The backend got its own key, never the client's.
    assert set(double.authorizations) == {f"Bearer {BACKEND_KEY}"}
    stored = trail_bytes(db)
    for secret in (CLIENT_KEY, WRONG_KEY, BACKEND_KEY):
        for where, data in (("database", stored), ("stdout", out), ("stderr/log", err)):
            assert secret.encode() not in data, f"{secret} found in {where}"
