"""Pass-through to a real Ollama: requests and answers relayed as they are.

Only model names change, when ``models.mappings`` says so: the request's
``model`` becomes the backend's name, and answers (including model lists) show
the client-side names again. The OpenAI-compatible API (``/v1/*``) is relayed
to Ollama's own ``/v1/*`` endpoints.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import orjson

from ..config import Config
from ..errors import ProxyError
from ..translate import TooLong
from ..translate.ndjson import LineDecoder
from . import relay, transport
from .base import Batch, Call, Lines, Reply, StreamItem, Whole

# Routes whose answers list models by name.
_LISTS = ("/api/tags", "/api/ps")
_V1_MODELS = ("/v1/models", "/v1/models/{model}")
# Routes that change the backend's models: never sent twice (transport.send).
CHANGES_THE_BACKEND = frozenset(
    {"/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete", "/api/blobs/{digest}"}
)


class OllamaBackend:
    """Relays every Ollama endpoint to another Ollama server."""

    type = "ollama"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.endpoint = config.backend.endpoint.rstrip("/")
        self._session: transport.Session | None = None

    @property
    def session(self) -> transport.Session:
        assert self._session is not None, "OllamaBackend.start() was not awaited"
        return self._session

    async def start(self) -> None:
        self._session = transport.new_session(self.config.backend)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def health(self) -> str | None:
        try:
            resp = await transport.send(
                self.session, "GET", transport.url(self.endpoint, "/api/version"),
                backend=self.endpoint, within=transport.HEALTH_TIMEOUT,
            )  # fmt: skip
        except ProxyError as exc:  # transport.send turns every transport failure into one
            return exc.message
        async with resp:
            if resp.status != 200:
                return f"backend {self.endpoint} answered {resp.status}"
        return None

    async def call(self, call: Call) -> Reply:
        target = transport.url(self.endpoint, call.path, call.query)
        data = call.raw
        headers = {"Content-Type": "application/json"} if call.body is not None else None
        resp = await transport.send(
            self.session, call.method, target, backend=self.endpoint, data=data or None, headers=headers,
            replayable=call.endpoint not in CHANGES_THE_BACKEND,
        )  # fmt: skip
        content_type = resp.headers.get("Content-Type", "application/json")
        if resp.status < 400 and content_type.startswith("application/x-ndjson"):
            return Lines(resp.status, content_type, self._lines(resp, call), release=resp.release)
        if resp.status < 400 and content_type.startswith("application/json") and self._renames(call):
            async with resp:
                body = await transport.read_body(resp, self.endpoint, self.config.backend.max_answer_bytes)
            return Whole(resp.status, content_type, self._rename_body(body, call))
        # Passed on unchanged: a large answer (a blob, a big embedding batch) is
        # relayed as it arrives rather than held.
        return await transport.relayed(resp, self.endpoint, self.config.database.max_body_bytes)

    async def openai(self, call: Call) -> Reply:
        path = call.endpoint
        if path == "/v1/models/{model}":
            assert call.backend_model is not None
            path = f"/v1/models/{call.backend_model}"  # quoted by transport.url
        # Model lists are held whole: the pipeline shows them with client-side names.
        hold = None if call.endpoint in _V1_MODELS else self.config.database.max_body_bytes
        return await relay.forward(
            self.session, self.endpoint, path, call, limit=self.config.backend.max_answer_bytes, hold=hold
        )

    async def _lines(self, resp: transport.Response, call: Call) -> AsyncGenerator[Batch, None]:
        """Relay NDJSON lines as they arrive; re-serialise only to rename the model.

        Lines.close() releases ``resp``, whether or not this generator ever ran.
        """
        rename = call.model if call.model != call.backend_model else None
        decoder = LineDecoder(self.config.backend.max_answer_bytes)
        async for data in transport.iter_chunks(resp, self.endpoint):
            try:
                lines = decoder.feed(data)
            except TooLong as exc:
                raise transport.too_long(exc) from None
            if lines:
                yield [_item(line, rename) for line in lines]
        rest = decoder.flush()
        if rest:
            yield [_item(line, rename) for line in rest]

    def _renames(self, call: Call) -> bool:
        """True when a JSON answer to ``call`` shows model names that must be changed."""
        if call.endpoint in _LISTS:
            return bool(self.config.models.mappings)
        return call.model is not None and call.model != call.backend_model

    def _rename_body(self, body: bytes, call: Call) -> bytes:
        """Show client-side model names in a JSON answer."""
        models = self.config.models
        if call.endpoint in _LISTS and models.mappings:
            try:
                doc = orjson.loads(body)
                for entry in doc.get("models") or []:
                    for key in ("name", "model"):
                        if isinstance(entry.get(key), str):
                            entry[key] = models.client_name(entry[key])
                return orjson.dumps(doc)
            except (orjson.JSONDecodeError, AttributeError, TypeError):
                return body
        if call.model is not None and call.model != call.backend_model:
            try:
                doc = orjson.loads(body)
                if isinstance(doc, dict) and "model" in doc:
                    doc["model"] = call.model
                    return orjson.dumps(doc)
            except orjson.JSONDecodeError:
                return body
        return body


def _item(line: bytes, rename: str | None) -> StreamItem:
    try:
        obj: Any = orjson.loads(line)
    except orjson.JSONDecodeError:
        # Not JSON: relay it anyway (the client sees what Ollama sent) but
        # record it as an error line.
        return line, {"error": f"backend sent a line that is not JSON: {line[:200]!r}"}
    if not isinstance(obj, dict):
        return line, {}
    if rename is not None and "model" in obj:
        obj["model"] = rename
        line = orjson.dumps(obj)
    return line, obj
