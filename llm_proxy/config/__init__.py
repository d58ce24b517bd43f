"""Configuration: YAML or JSON file → frozen dataclasses; every default lives here.

The keys and their structure are those of the Go LLM Proxy's ``config.json``
(server / backend / database / models), so its files load unchanged. Anything
wrong raises :class:`ConfigError` with one line naming the key and the problem.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import yaml

from ..errors import ConfigError
from . import backends as backends_mod
from .cache import CacheConfig, CacheModel
from .checks import check
from .coerce import kind_of, section
from .sections import (
    DEFAULT_BACKEND,
    SECTIONS,
    ApiKey,
    AuthConfig,
    BackendConfig,
    BackendType,
    Config,
    DatabaseConfig,
    LlamaModel,
    LogFormat,
    ModelsConfig,
    NamedBackend,
    Quota,
    RoutingConfig,
    ServerConfig,
    StoreBodies,
    Strategy,
    UiConfig,
    aliases,
)
from .telemetry import TelemetryConfig

__all__ = [
    "DEFAULT_BACKEND",
    "ApiKey",
    "AuthConfig",
    "BackendConfig",
    "BackendType",
    "CacheConfig",
    "CacheModel",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "LlamaModel",
    "LogFormat",
    "ModelsConfig",
    "NamedBackend",
    "Quota",
    "RoutingConfig",
    "ServerConfig",
    "StoreBodies",
    "Strategy",
    "TelemetryConfig",
    "UiConfig",
    "aliases",
    "find_config_file",
    "from_dict",
    "load",
    "replace",
]

ENV_VAR = "LLM_PROXY_CONFIG"
URL_VAR = "LLM_PROXY_DATABASE_URL"  # database.url, kept out of the config file (it holds a password)
DEFAULT_FILE = "config.yaml"


def find_config_file(cli_path: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The file to load: ``--config``, else ``$LLM_PROXY_CONFIG``, else ``./config.yaml``."""
    if cli_path:
        return cli_path
    if environ.get(ENV_VAR):
        return environ[ENV_VAR]
    if Path(DEFAULT_FILE).is_file():
        return DEFAULT_FILE
    return None


def load(path: str | None, environ: Mapping[str, str] = os.environ) -> Config:
    """Load and validate a config file (``None``: the built-in defaults); ``$LLM_PROXY_DATABASE_URL``
    sets ``database.url`` over the file's."""
    config = _load(path)
    url = environ.get(URL_VAR)
    if url:
        config = dataclasses.replace(config, database=dataclasses.replace(config.database, url=url))
        try:
            check(config)
        except ConfigError as exc:
            raise ConfigError(f"${URL_VAR}: {exc}") from None
    return config


def _load(path: str | None) -> Config:
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
        if name not in SECTIONS and name != "backends":
            raise ConfigError(f"unknown key '{name}' (expected one of: {', '.join([*SECTIONS, 'backends'])})")
        if value is None:
            continue
        if name == "backends":  # a list or a mapping of named backends, from backend: as defaults
            given = data.get("backend")
            sections[name] = backends_mod.parse(value, given if isinstance(given, Mapping) else {})
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{name}' must be a mapping, got {kind_of(value)}")
        sections[name] = section(name, SECTIONS[name], value)
    config = Config(source=source, **sections)
    check(config)
    return config


def replace(config: Config, **server_overrides: Any) -> Config:
    """A copy of ``config`` with some ``server`` values replaced (``--host``/``--port``)."""
    given = {k: v for k, v in server_overrides.items() if v is not None}
    if not given:
        return config
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, **given))
    check(config)
    return config
