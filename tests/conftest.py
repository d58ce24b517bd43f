"""Shared fixtures: real servers on 127.0.0.1, a real SQLite file, real clients."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from llm_proxy import config as config_mod
from llm_proxy.audit.recorder import Recorder
from llm_proxy.audit.store import Store
from llm_proxy.server.app import create_app

# The real llama-servers, one each per session, for every end-to-end module.
from .e2e import chat_server, connect, embed_server  # noqa: F401
from .llama_double import LlamaServerDouble
from .ollama_double import OllamaDouble
from .postgres import PostgresServer, running
from .trail import Trail

T = TypeVar("T")


def present(value: T | None) -> T:
    """``value``, failing the test when it is None: how a test narrows an Optional."""
    assert value is not None
    return value


@dataclass
class Proxy:
    """A running proxy: its URL, its database file (or its trail in either store) and its app."""

    url: str
    db: Path
    app: web.Application
    server: TestServer
    trail: Trail | None = None

    @property
    def target(self) -> str:
        """What ``--db`` takes to read this proxy's trail: the file, or the PostgreSQL URL."""
        return self.trail.target if self.trail is not None else str(self.db)

    def rows(self, expected: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Read the logs table as a user would, once ``expected`` rows are there."""
        if self.trail is not None:
            return self.trail.rows(expected, timeout)
        return read_rows(self.db, expected, timeout)

    async def wait_rows(self, expected: int, within: float = 5.0) -> list[dict[str, Any]]:
        """Like :meth:`rows`, without blocking the event loop the proxy runs on."""
        if self.trail is not None:
            return await self.trail.wait_rows(expected, within)
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


class ServedAsByTheCli(TestServer):
    """A test server that runs handlers as ``llm-proxy serve`` does.

    aiohttp's TestServer cancels a handler when its client leaves; web.run_app
    (what the CLI uses) does not, and the handler then meets the departure as a
    failed write. Tests should see what users get.
    """

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return web.AppRunner(self.app, **{**kwargs, "handler_cancellation": False})


@pytest.fixture
async def make_proxy(tmp_path: Path) -> AsyncIterator[MakeProxy]:
    """Start a proxy in front of ``endpoint`` with extra config sections merged in."""
    servers: list[TestServer] = []

    async def start(
        endpoint: str, backend_type: str = "ollama", trail: Trail | None = None, **sections: Any
    ) -> Proxy:
        db = tmp_path / "llm_proxy.db"
        raw: dict[str, Any] = {
            "backend": {"type": backend_type, "endpoint": endpoint, "timeout": 10},
            "database": trail.database() if trail is not None else {"path": str(db)},
        }
        for name, values in sections.items():
            raw[name] = (
                values if isinstance(values, list) else {**raw.get(name, {}), **values}
            )  # backends: a list
        app = create_app(config_mod.from_dict(raw))
        server = ServedAsByTheCli(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return Proxy(str(server.make_url("")).rstrip("/"), db, app, server, trail)

    yield start
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def proxy(make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str]) -> Proxy:
    """A proxy in front of the Ollama double, with one mapping: llama2 → llama3.2."""
    return await make_proxy(ollama_double[1], models={"mappings": {"llama2": "llama3.2"}})


@pytest.fixture
async def trail_proxy(make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str], trail: Trail) -> Proxy:
    """:func:`proxy`, writing into ``trail``: once on SQLite, once on PostgreSQL."""
    return await make_proxy(ollama_double[1], trail=trail, models={"mappings": {"llama2": "llama3.2"}})


@pytest.fixture
async def llama_double(aiohttp_server: Any) -> tuple[LlamaServerDouble, str]:
    """The llama-server test double, listening on 127.0.0.1."""
    double = LlamaServerDouble()
    server = await aiohttp_server(double.app(), host="127.0.0.1")
    return double, str(server.make_url("")).rstrip("/")


@pytest.fixture
async def trail_oproxy(
    make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str], trail: Trail
) -> Proxy:
    """:func:`oproxy`, writing into ``trail``: once on SQLite, once on PostgreSQL."""
    return await make_proxy(llama_double[1], backend_type="openai", trail=trail)


@pytest.fixture
async def oproxy(make_proxy: MakeProxy, llama_double: tuple[LlamaServerDouble, str]) -> Proxy:
    """A proxy with the openai backend in front of the llama-server double."""
    return await make_proxy(llama_double[1], backend_type="openai")


Writer = tuple[Recorder, Path]


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[Writer]:
    """A recorder writing to a fresh SQLite file."""
    db = tmp_path / "audit.db"
    store = Store(str(db))
    await store.open()
    recorder = Recorder(store, limit=100)
    recorder.start()
    yield recorder, db
    await recorder.close()
    await store.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server on 127.0.0.1 for the whole session (tests/postgres.py)."""
    with running() as server:
        yield server


MIGRATED = "llmproxy_migrated"  # a database the store migrated once: what each test's copy starts as


@pytest.fixture(scope="session")
def migrated(postgres: PostgresServer) -> str:
    """The name of a template database holding the migrated schema (copying it beats migrating)."""
    url = postgres.database()
    asyncio.run(_migrate(url))
    name = url.rpartition("/")[2]
    postgres.psql(f"ALTER DATABASE {name} RENAME TO {MIGRATED}")
    return MIGRATED


async def _migrate(url: str) -> None:
    import asyncpg

    from llm_proxy.audit.pg_migrate import migrate

    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def trail(request: pytest.FixtureRequest, tmp_path: Path) -> Trail:
    """An empty audit trail in each store: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        template = request.getfixturevalue("migrated")
        return Trail("postgresql", server.database(template), tmp_path / "spool.db", server)
    return Trail("sqlite", str(tmp_path / "audit.db"), tmp_path / "spool.db")


@pytest.fixture
async def trail_writer(trail: Trail) -> AsyncIterator[tuple[Recorder, Trail]]:
    """A recorder writing into ``trail`` (each store in turn)."""
    store = trail.store()
    await store.open()
    recorder = Recorder(store, limit=100)
    recorder.start()
    yield recorder, trail
    await recorder.close()
    await store.close()
