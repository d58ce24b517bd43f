"""An OpenAI-style backend (llama.cpp's llama-server): the Ollama API translated.

Chat and generate always stream from the backend, so ``backend.timeout`` only
ever bounds the wait for the next bytes: the SSE stream is decoded, translated
chunk by chunk and relayed as Ollama NDJSON, or folded into one object for
``stream: false`` clients. Model endpoints are built from
``/v1/models`` and ``/props``, fetched together and cached briefly.

The OpenAI-compatible API (``/v1/*``) needs no translation: it is relayed to
the same path, with the model checked against (and ``/v1/models`` served from)
the same cached catalog.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import orjson

from ..config import Config
from ..errors import BackendError, ModelNotFound, ProxyError
from ..translate import JSONDict, Kind, TooLong
from ..translate.catalog import normalize_model_name, ps_from_models, show_from_props, tags_from_models
from ..translate.embeddings import (
    embed_request,
    embed_response,
    embeddings_legacy_request,
    embeddings_legacy_response,
)
from ..translate.errors import error_from_backend
from ..translate.keep_alive import parse_keep_alive
from ..translate.ndjson import ChunkAssembler
from ..translate.requests import (
    CHAT_PATH,
    apply_params,
    chat_request,
    generate_request,
    is_load_request,
    wanted_logprobs,
)
from ..translate.sse import SSEDecoder
from ..translate.stream import StreamTranslator
from . import relay, replies, transport
from .base import Batch, Call, Lines, Reply, sending

CATALOG_TTL = 10.0  # seconds a fetched model list is fresh
CATALOG_TIMEOUT = 3.0  # seconds a catalog refresh may take before a stale copy is used
JSON, NDJSON = replies.JSON, replies.NDJSON


@dataclass(slots=True)
class Catalog:
    """What the backend serves: its ``/v1/models`` and ``/props`` answers."""

    models: dict[str, Any]
    props: dict[str, Any] | None
    fetched: float

    def entry(self, name: str) -> dict[str, Any] | None:
        """The ``/v1/models`` entry whose id is ``name`` (``x`` and ``x:latest`` alike)."""
        wanted = normalize_model_name(name)
        for entry in self.models.get("data") or []:
            is_entry = isinstance(entry, dict) and isinstance(entry.get("id"), str)
            if is_entry and normalize_model_name(entry["id"]) == wanted:
                return entry
        return None

    def ids(self) -> list[str]:
        """The served model ids."""
        return [e["id"] for e in self.models.get("data") or [] if isinstance(e, dict) and "id" in e]


class OpenAIBackend:
    """Serves the Ollama API from an OpenAI-compatible server."""

    type = "openai"

    def __init__(
        self, config: Config, endpoint: str | None = None, session: transport.Session | None = None
    ) -> None:
        self.config = config
        # The llamacpp backend gives each of its servers' URLs and its one session.
        self.endpoint = (endpoint or config.backend.endpoint).rstrip("/")
        self._session: transport.Session | None = session
        self._owns_session = session is None
        self._catalog: Catalog | None = None
        self._refresh: asyncio.Task[Catalog] | None = None

    @property
    def session(self) -> transport.Session:
        assert self._session is not None, "OpenAIBackend.start() was not awaited"
        return self._session

    async def start(self) -> None:
        if self._owns_session:
            self._session = transport.new_session(self.config.backend)

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

    def _url(self, path: str) -> transport.URL:
        return transport.url(self.endpoint, path)

    async def health(self) -> str | None:
        try:
            resp = await transport.send(
                self.session, "GET", self._url("/health"),
                backend=self.endpoint, within=transport.HEALTH_TIMEOUT,
            )  # fmt: skip
            async with resp:
                body = await transport.read_body(resp, self.endpoint, self.config.backend.max_answer_bytes)
        except ProxyError as exc:  # transport turns every transport failure into one
            return exc.message
        if resp.status == 200:
            return None
        if resp.status == 404:  # an OpenAI-style server without llama-server's /health
            try:
                await self._fetch_catalog()
            except ProxyError as exc:
                return exc.message
            return None
        return error_from_backend(resp.status, body).message

    async def call(self, call: Call) -> Reply:
        endpoint = call.endpoint
        if endpoint == "/api/chat":
            return await self._complete(call, "chat")
        if endpoint == "/api/generate":
            return await self._complete(call, "generate")
        if endpoint == "/api/tags":
            catalog = await self.catalog()
            return replies.json_reply(
                tags_from_models(catalog.models, catalog.props, self.config.models.mappings)
            )
        if endpoint == "/api/ps":
            catalog = await self.catalog()
            return replies.json_reply(
                ps_from_models(catalog.models, catalog.props, self.config.models.mappings)
            )
        if endpoint == "/api/show":
            assert call.model is not None and call.backend_model is not None
            catalog = await self.catalog()
            entry = catalog.entry(call.backend_model)
            if entry is None:
                raise ModelNotFound(call.model)
            return replies.json_reply(show_from_props(call.model, entry, catalog.props))
        if endpoint in ("/api/embed", "/api/embeddings"):
            return await self._embed(call)
        if endpoint == "/api/pull":
            return await self._pull(call)
        return replies.answer_locally(call, "openai", "serves the models its server has loaded")

    async def openai(self, call: Call) -> Reply:
        if call.endpoint == "/v1/models":
            entries = (await self.catalog()).models.get("data")
            # Only OpenAI's "data": llama-server's extra Ollama-looking "models" array is left out.
            return replies.json_reply(
                {"object": "list", "data": entries if isinstance(entries, list) else []}
            )
        if call.endpoint == "/v1/models/{model}":
            assert call.model is not None and call.backend_model is not None
            entry = (await self.catalog()).entry(call.backend_model)
            if entry is None:
                raise ModelNotFound(call.model)
            return replies.json_reply(entry)
        sent = None
        if call.body is not None and call.model is not None:
            # llama-server answers whatever model is asked for: check it here so an
            # unknown one is a 404, and send the id the server knows it by.
            body = {**call.body, "model": await self._served_name(call)}
            apply_params(self.config.models.params_for(call.model), body)
            if body != call.body:
                call, sent = dataclasses.replace(call, body=body, raw=orjson.dumps(body)), body
        limit, hold = self.config.backend.max_answer_bytes, self.config.database.max_body_bytes
        with sending(sent):
            return await relay.forward(
                self.session, self.endpoint, call.endpoint, call, limit=limit, hold=hold, sent=sent
            )

    # -- models ---------------------------------------------------------------

    async def catalog(self) -> Catalog:
        """The served models; refreshed when stale, and a stale copy beats waiting long."""
        current = self._catalog
        if current is not None and time.monotonic() - current.fetched < CATALOG_TTL:
            return current
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._fetch_catalog())
        if current is None:
            return await asyncio.shield(self._refresh)
        try:
            return await asyncio.wait_for(asyncio.shield(self._refresh), CATALOG_TIMEOUT)
        except (TimeoutError, ProxyError):
            return current  # Home Assistant polls with a 5 s timeout: answer what we know

    async def _fetch_catalog(self) -> Catalog:
        models, props = await asyncio.gather(
            self._get_json("/v1/models"), self._get_json("/props", optional=True)
        )
        if not isinstance(models, dict):
            raise BackendError("backend's /v1/models did not answer a JSON object", 502)
        catalog = Catalog(models, props if isinstance(props, dict) else None, time.monotonic())
        self._catalog = catalog
        return catalog

    async def _get_json(self, path: str, optional: bool = False) -> Any:
        resp = await transport.send(self.session, "GET", self._url(path), backend=self.endpoint)
        async with resp:
            body = await transport.read_body(resp, self.endpoint, self.config.backend.max_answer_bytes)
        if resp.status >= 400:
            if optional:
                return None
            raise error_from_backend(resp.status, body)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            if optional:
                return None
            raise BackendError(f"backend's {path} did not answer JSON", 502) from None

    async def _served_name(self, call: Call) -> str:
        """The backend's id for the requested model; 404 when it does not serve it."""
        assert call.model is not None and call.backend_model is not None
        try:
            catalog = await self.catalog()
        except ProxyError:
            # Cannot list models right now: let the request itself report why.
            return call.backend_model.removesuffix(":latest")
        entry = catalog.entry(call.backend_model)
        if entry is None:
            raise ModelNotFound(call.model)
        return str(entry["id"])

    async def _pull(self, call: Call) -> Reply:
        assert call.model is not None and call.backend_model is not None
        catalog = await self.catalog()
        if catalog.entry(call.backend_model) is None:
            served = ", ".join(catalog.ids()) or "none"
            raise ProxyError(
                f"model '{call.model}' not found: the openai backend cannot pull models; "
                f"its server serves: {served}",
                404,
            )
        return replies.pulled(call)

    # -- chat and generate ------------------------------------------------------

    async def _complete(self, call: Call, kind: Kind) -> Reply:
        assert call.body is not None and call.model is not None
        if is_load_request(call.body, kind):
            # keep_alive 0 with nothing to answer is `ollama stop`: llama-server keeps
            # its model loaded, but the client is told what Ollama would tell it.
            unload = parse_keep_alive(call.body.get("keep_alive")) == 0
            return replies.empty_answer(call, kind, "unload" if unload else "load")
        served = await self._served_name(call)
        params = self.config.models.params_for(call.model)
        if kind == "chat":
            path, body = CHAT_PATH, chat_request(call.body, served, params)
        else:
            path, body = generate_request(call.body, served, params)
        with sending(body):
            resp = await transport.send(
                self.session, "POST", self._url(path), backend=self.endpoint,
                data=orjson.dumps(body), headers={"Content-Type": JSON},
            )  # fmt: skip
            if resp.status >= 400:
                async with resp:
                    raw = await transport.read_body(resp, self.endpoint, self.config.backend.max_answer_bytes)
                raise error_from_backend(resp.status, raw)
            # Tool calls are held whole until they go out, within backend.max_answer_mb.
            limit, logprobs = self.config.backend.max_answer_bytes, wanted_logprobs(call.body)
            translator = StreamTranslator(kind, call.model, limit=limit, logprobs=logprobs)
            if call.stream:
                lines = self._translate(resp, translator, call)
                return Lines(200, NDJSON, lines, release=resp.release, sent=body)
            async with resp:
                # Still a stream from the backend (backend.timeout bounds each silence,
                # not the answer), but read whole and folded at once: one wake-up per
                # answer instead of one per SSE frame, and no NDJSON lines to write.
                raw = await transport.read_body(resp, self.endpoint, self.config.backend.max_answer_bytes)
            return replies.json_reply(self._fold(raw, translator, call), sent=body)

    async def _translate(
        self, resp: transport.Response, translator: StreamTranslator, call: Call
    ) -> AsyncGenerator[Batch, None]:
        """Backend SSE in, Ollama NDJSON lines out, one per delta, as they arrive.

        Lines.close() releases ``resp``, whether or not this generator ever ran.
        """
        decoder = SSEDecoder(self.config.backend.max_answer_bytes)
        finished = False
        # Read to the end of the body even after [DONE]: leaving bytes unread
        # would close the connection instead of returning it to the pool.
        async for data in transport.iter_chunks(resp, self.endpoint):
            if finished:
                continue
            try:
                events = decoder.feed(data)
            except TooLong as exc:
                raise transport.too_long(exc) from None
            chunks: list[JSONDict] = []
            try:
                finished = translator.feed_events(events, chunks)
            except ProxyError:
                if chunks:  # what came before the error frame still reaches the client
                    yield _as_lines(chunks)
                raise
            if chunks:
                yield _as_lines(chunks)
        if not finished:
            chunks = []
            finished = translator.feed_events(decoder.flush(), chunks)
            if chunks:
                yield _as_lines(chunks)
        if not finished:
            raise translator.eof_without_done()
        elapsed = time.perf_counter() - call.started
        yield _as_lines(translator.finish(int(elapsed * 1e9)))

    def _fold(self, raw: bytes, translator: StreamTranslator, call: Call) -> dict[str, Any]:
        """A whole SSE answer as one Ollama object, as a ``stream: false`` client wants it."""
        decoder = SSEDecoder()
        chunks: list[JSONDict] = []
        if not translator.feed_events(decoder.feed(raw) + decoder.flush(), chunks):
            raise translator.eof_without_done()
        elapsed = time.perf_counter() - call.started
        chunks.extend(translator.finish(int(elapsed * 1e9)))
        assembler = ChunkAssembler(logprobs=True)
        for chunk in chunks:
            assembler.feed(chunk)
        folded = assembler.result()
        assert folded is not None  # finish() gave the final chunk at least
        return folded

    # -- embeddings -------------------------------------------------------------

    async def _embed(self, call: Call) -> Reply:
        assert call.body is not None and call.model is not None
        served = await self._served_name(call)
        legacy = call.endpoint == "/api/embeddings"
        if legacy:
            body = embeddings_legacy_request(call.body, served)
        else:
            body = embed_request(call.body, served)
            if body["input"] == []:
                return replies.json_reply({"model": call.model, "embeddings": []})
        with sending(body):
            resp = await transport.send(
                self.session, "POST", self._url("/v1/embeddings"), backend=self.endpoint,
                data=orjson.dumps(body), headers={"Content-Type": JSON},
            )  # fmt: skip
            async with resp:
                raw = await transport.read_body(resp, self.endpoint, self.config.backend.max_answer_bytes)
            if resp.status >= 400:
                raise error_from_backend(resp.status, raw)
            try:
                answer = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise BackendError("backend's /v1/embeddings did not answer JSON", 502) from None
            if legacy:
                return replies.json_reply(embeddings_legacy_response(answer), sent=body)
            elapsed = time.perf_counter() - call.started
            folded = embed_response(answer, call.model, int(elapsed * 1e9), body.get("dimensions"))
            return replies.json_reply(folded, sent=body)


def _as_lines(chunks: list[JSONDict]) -> Batch:
    """NDJSON lines (without newlines) for chunks, each with its object."""
    return [(orjson.dumps(c), c) for c in chunks]
