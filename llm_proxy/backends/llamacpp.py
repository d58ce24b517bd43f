"""The llamacpp backend: llama-server processes the proxy starts and stops itself.

Each model in ``backend.models`` gets its own llama-server (see :mod:`.pool`),
started by the first request for it. Requests are answered exactly as the
openai backend answers them, by an :class:`~.openai.OpenAIBackend` pointed at
that model's server; this module only decides which server, keeps it running
while the answer streams, and applies the client's ``keep_alive`` afterwards.
``/api/tags`` lists every configured model from its file; ``/api/ps`` the
running ones, with when each will stop.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import BackendError, ModelNotFound, ProxyError
from ..translate import Kind
from ..translate.catalog import FAR_FUTURE, client_names, details, digest, normalize_model_name
from ..translate.keep_alive import parse_keep_alive
from ..translate.requests import is_load_request
from . import replies, transport
from .base import Call, Reply, Whole
from .openai import OpenAIBackend
from .pool import ModelServer, ServerPool, find_binary

# Routes that need a model's server running.
_MODEL_ROUTES = frozenset({"/api/chat", "/api/generate", "/api/show", "/api/embed", "/api/embeddings"})
# Routes whose body may carry Ollama's keep_alive.
_KEEP_ALIVE_ROUTES = frozenset({"/api/chat", "/api/generate", "/api/embed", "/api/embeddings"})
CRASH_NOTICE = 0.5  # seconds to wait, after a broken answer, for the server's exit to be seen


class LlamaCppBackend:
    """Serves the configured GGUF files through llama-servers it manages."""

    type = "llamacpp"
    endpoint = "llama-server"

    def __init__(self, config: Config) -> None:
        self._config = config
        self.binary = find_binary(config.backend.server_binary)
        self._session: transport.Session | None = None
        self._pool: ServerPool | None = None
        self._clients: dict[str, OpenAIBackend] = {}  # by model name, for its current server

    @property
    def config(self) -> Config:
        """The config in force (a SIGHUP reload replaces its ``models`` section)."""
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        self._config = config
        for client in self._clients.values():
            client.config = config

    @property
    def pool(self) -> ServerPool:
        """The llama-server processes."""
        assert self._pool is not None, "LlamaCppBackend.start() was not awaited"
        return self._pool

    async def start(self) -> None:
        backend = self.config.backend
        session = self._session = transport.new_session(backend)
        self._pool = ServerPool(
            self.binary,
            backend.models,
            max_running=backend.max_running,
            idle_timeout=backend.idle_timeout,
            wait_limit=backend.timeout,
            session=session,
        )
        self._pool.start()

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        for client in self._clients.values():
            await client.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def health(self) -> str | None:
        if not os.access(self.binary, os.X_OK):
            return f"the llama-server binary {self.binary} is gone"
        return None

    async def call(self, call: Call) -> Reply:
        endpoint = call.endpoint
        if endpoint in _MODEL_ROUTES:
            return await self._on_server(call)
        if endpoint == "/api/tags":
            models = self.config.backend.models
            return replies.json_reply({"models": [self._tag(n, c) for n in models for c in self._names(n)]})
        if endpoint == "/api/ps":
            running = self.pool.running()
            return replies.json_reply(
                {"models": [self._ps(s, c) for s in running for c in self._names(s.name)]}
            )
        if endpoint == "/api/pull":
            return self._pull(call)
        return replies.answer_locally(call, "llamacpp", "serves the GGUF files named in backend.models")

    async def openai(self, call: Call) -> Reply:
        if call.endpoint == "/v1/models":
            return replies.json_reply(
                {"object": "list", "data": [self._v1_entry(n) for n in self.config.backend.models]}
            )
        if call.endpoint == "/v1/models/{model}":
            return replies.json_reply(self._v1_entry(self._model(call)))
        return await self._on_server(call, v1=True)

    # -- requests that need a server ---------------------------------------------

    async def _on_server(self, call: Call, v1: bool = False) -> Reply:
        """Answer ``call`` with its model's server, started if need be and held while answering."""
        name = self._model(call)
        keep: float | None = None
        if call.body is not None and call.endpoint in _KEEP_ALIVE_ROUTES:
            keep = parse_keep_alive(call.body.get("keep_alive"))
        kind: Kind = "chat" if call.endpoint == "/api/chat" else "generate"
        completes = call.endpoint in ("/api/chat", "/api/generate") and call.body is not None
        if completes and keep == 0 and call.body is not None and is_load_request(call.body, kind):
            await self.pool.unload(name)  # Ollama's "ollama stop": an empty prompt, keep_alive 0
            return replies.empty_answer(call, kind, "unload")
        server = await self.pool.acquire(name)
        client = self._client(server)
        try:
            reply = await (client.openai(call) if v1 else client.call(call))
        except ProxyError as exc:
            self.pool.release(server, keep, failed=exc.status >= 500)
            raise await self._explain(server, exc) from None
        except BaseException:
            self.pool.release(server, keep)
            raise
        if isinstance(reply, Whole):
            self.pool.release(server, keep)
        else:
            # A stream keeps its server from being stopped until it ends.
            reply.hold(
                lambda failed: self.pool.release(server, keep, failed),
                functools.partial(self._explain, server),
            )
        return reply

    async def _explain(self, server: ModelServer, exc: ProxyError) -> ProxyError:
        """Name the crash when a request failed because its llama-server died."""
        if exc.status < 500 or server.watcher is None:
            return exc
        await asyncio.wait({server.watcher}, timeout=CRASH_NOTICE)
        if not server.exited or server.stopping:
            return exc
        explained = BackendError(
            f"llama-server for model '{server.name}' {server.ended()} while answering "
            f"({exc.message}); it starts again on the next request",
            502,
        )
        explained.sent = exc.sent
        return explained

    def _client(self, server: ModelServer) -> OpenAIBackend:
        """The OpenAI-style client of ``server``'s current process."""
        client = self._clients.get(server.name)
        if client is None or client.endpoint != server.url:
            client = OpenAIBackend(self.config, endpoint=server.url, session=self._session)
            self._clients[server.name] = client
        return client

    # -- models -------------------------------------------------------------------

    def _model(self, call: Call) -> str:
        """The configured model a call names (``x`` and ``x:latest`` alike); 404 otherwise."""
        wanted = call.backend_model or ""
        models = self.config.backend.models
        for name in (wanted, wanted.removesuffix(":latest")):
            if name in models:
                return name
        for name in models:
            if normalize_model_name(name) == normalize_model_name(wanted):
                return name
        raise ModelNotFound(call.model or wanted)

    def _names(self, name: str) -> list[str]:
        """The names clients know a configured model by: its mapped aliases, else its own."""
        return client_names(name, self.config.models.mappings)

    def _file(self, name: str) -> tuple[int, float]:
        """Size and modification time of a model's file (0, now when it went away)."""
        try:
            stat = Path(self.config.backend.models[name].path).expanduser().stat()
        except OSError:
            return 0, time.time()
        return stat.st_size, stat.st_mtime

    def _common(self, name: str, client_name: str) -> dict[str, Any]:
        size, _ = self._file(name)
        path = self.config.backend.models[name].path
        return {
            "name": client_name,
            "model": client_name,
            "size": size,
            "digest": digest(name),
            "details": details(None, {"model_path": path}),
        }

    def _tag(self, name: str, client_name: str) -> dict[str, Any]:
        _, mtime = self._file(name)
        return {**self._common(name, client_name), "modified_at": _rfc3339(mtime)}

    def _ps(self, server: ModelServer, client_name: str) -> dict[str, Any]:
        expires = FAR_FUTURE if server.expires is None else _rfc3339(server.expires)
        return {
            **self._common(server.name, client_name),
            "size_vram": 0,  # llama-server does not say where it put the weights
            "expires_at": expires,
            "context_length": server.model.ctx,
        }

    def _v1_entry(self, name: str) -> dict[str, Any]:
        _, mtime = self._file(name)
        return {"id": name, "object": "model", "created": int(mtime), "owned_by": "llamacpp"}

    def _pull(self, call: Call) -> Reply:
        """Nothing to download: a configured model is there, any other one cannot be."""
        try:
            self._model(call)
        except ModelNotFound:
            served = ", ".join(self.config.backend.models) or "none"
            raise ProxyError(
                f"model '{call.model}' not found: the llamacpp backend cannot pull models; "
                f"backend.models has: {served}",
                404,
            ) from None
        return replies.pulled(call)


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
