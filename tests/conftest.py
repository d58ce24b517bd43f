"""Shared fixtures: real servers on 127.0.0.1, a real SQLite file, real clients."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from llm_proxy import config as config_mod
from llm_proxy.app import create_app

from .llama_double import LlamaServerDouble
from .ollama_double import OllamaDouble


@dataclass
class Proxy:
    """A running proxy: its URL, its database file and its app."""

    url: str
    db: Path
    app: web.Application
    server: TestServer

    def rows(self, expected: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Read the logs table as a user would, once ``expected`` rows are there."""
        return read_rows(self.db, expected, timeout)

    async def wait_rows(self, expected: int, within: float = 5.0) -> list[dict[str, Any]]:
        """Like :meth:`rows`, without blocking the event loop the proxy runs on."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            found = read_rows(self.db, 0)
            if len(found) >= expected or asyncio.get_running_loop().time() > deadline:
                return found
            await asyncio.sleep(0.02)


def read_rows(db: Path, expected: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """All rows of ``logs``, oldest first, read with the stdlib sqlite3 module."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        conn = sqlite3.connect(db)
        conn.row_factory = sqlite3.Row
        try:
            found = [dict(r) for r in conn.execute("SELECT * FROM logs ORDER BY id")]
        except sqlite3.OperationalError:
            found = []
        finally:
            conn.close()
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


@pytest.fixture
async def ollama_double(aiohttp_server: Any) -> tuple[OllamaDouble, str]:
    """The Ollama test double, listening on 127.0.0.1."""
    double = OllamaDouble()
    server = await aiohttp_server(double.app(), host="127.0.0.1")
    return double, str(server.make_url("")).rstrip("/")


MakeProxy = Callable[..., Awaitable[Proxy]]


@pytest.fixture
def make_proxy(aiohttp_server: Any, tmp_path: Path) -> MakeProxy:
    """Start a proxy in front of ``endpoint`` with extra config sections merged in."""

    async def start(endpoint: str, backend_type: str = "ollama", **sections: dict[str, Any]) -> Proxy:
        db = tmp_path / "llm_proxy.db"
        raw: dict[str, Any] = {
            "backend": {"type": backend_type, "endpoint": endpoint, "timeout": 10},
            "database": {"path": str(db)},
        }
        for name, values in sections.items():
            raw[name] = {**raw.get(name, {}), **values}
        app = create_app(config_mod.from_dict(raw))
        server = await aiohttp_server(app, host="127.0.0.1")
        return Proxy(str(server.make_url("")).rstrip("/"), db, app, server)

    return start


@pytest.fixture
async def proxy(make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str]) -> Proxy:
    """A proxy in front of the Ollama double, with one mapping: llama2 → llama3.2."""
    return await make_proxy(ollama_double[1], models={"mappings": {"llama2": "llama3.2"}})


@pytest.fixture
async def llama_double(aiohttp_server: Any) -> tuple[LlamaServerDouble, str]:
    """The llama-server test double, listening on 127.0.0.1."""
    double = LlamaServerDouble()
    server = await aiohttp_server(double.app(), host="127.0.0.1")
    return double, str(server.make_url("")).rstrip("/")


@pytest.fixture
async def oproxy(make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]) -> Proxy:
    """A proxy with the openai backend in front of the llama-server double."""
    return await make_proxy(llama_double[1], backend_type="openai")
