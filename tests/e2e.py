"""The real llama-servers the end-to-end tests share, and a factory of ``ollama`` clients.

Registered as fixtures in conftest.py, so every test module that needs a real
server uses the same one for the whole session (each costs a model load).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import ollama
import pytest

from .llama_server import LlamaServer, NotInstalled, ServerFailed, template_path

# Makes an ollama.AsyncClient talking to a proxy (the `connect` fixture).
Connect = Callable[["Proxy"], ollama.AsyncClient]

if TYPE_CHECKING:
    from .conftest import Proxy


def _start(
    tmp_path_factory: pytest.TempPathFactory, name: str, args: Callable[[], Sequence[str]]
) -> LlamaServer:
    """Start a server, or fail (never skip) the tests that need it, saying why."""
    try:
        return LlamaServer(*args(), log_dir=tmp_path_factory.mktemp(name)).start()
    except (NotInstalled, ServerFailed) as exc:
        problem = str(exc)
    # Outside the except block, so the report shows the reason once, without a chain.
    pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def chat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """A llama-server with the Llama 3.2 template (via --jinja), so tool calls work."""
    server = _start(
        tmp_path_factory, "llama-chat", lambda: ("--jinja", "--chat-template-file", str(template_path()))
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def embed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """A llama-server for /v1/embeddings: one started with --embeddings."""
    server = _start(tmp_path_factory, "llama-embed", lambda: ("--embeddings", "--pooling", "mean"))
    yield server
    server.stop()


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Make ``ollama.AsyncClient``s for proxies; they are closed after the test."""
    clients: list[ollama.AsyncClient] = []

    def make(proxy: Proxy) -> ollama.AsyncClient:
        client = ollama.AsyncClient(host=proxy.url, timeout=60)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
