"""Cross-field and range checks that the fields' types alone cannot express."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from ..audit.dburl import is_postgres, masked
from ..errors import ConfigError
from .backends import check_routing
from .sections import REDACT_DETECTORS, BackendConfig, Config, RedactConfig
from .telemetry import TelemetryConfig


def check(config: Config) -> None:
    """Cross-field and range checks that types alone cannot express."""
    server, db = config.server, config.database
    if not server.host:
        raise ConfigError("'server.host' must not be empty")
    if not 0 <= server.port <= 65535:
        raise ConfigError(f"'server.port' must be between 0 and 65535, got {server.port}")
    if server.shutdown_timeout < 0:
        raise ConfigError("'server.shutdown_timeout' must not be negative")
    # With backends: given, backend: holds only the settings each entry starts from.
    named: list[tuple[str, BackendConfig]] = [(f"backends.{b.name}", b) for b in config.backends]
    for key, backend in named or [("backend", config.backend)]:
        check_backend(key, backend)
    check_routing(config.routing)
    if not db.path:
        raise ConfigError("'database.path' must not be empty")
    if db.url:
        _check_database_url(db.url)
        if db.max_size_mb:
            raise ConfigError(
                "'database.max_size_mb' applies to a SQLite file only; with 'database.url' "
                "use 'database.retention_days'"
            )
    if db.queue_size < 1:
        raise ConfigError(f"'database.queue_size' must be at least 1, got {db.queue_size}")
    if db.retention_days < 0:
        raise ConfigError(f"'database.retention_days' must not be negative, got {db.retention_days}")
    if db.max_size_mb < 0:
        raise ConfigError(f"'database.max_size_mb' must not be negative, got {db.max_size_mb}")
    if db.max_body_kb < 1:
        raise ConfigError(f"'database.max_body_kb' must be at least 1, got {db.max_body_kb}")
    _check_redact(db.redact)
    _check_limits(config)
    _check_cache_and_quotas(config)
    _check_ui(config)
    _check_telemetry(config.telemetry)


def _check_telemetry(t: TelemetryConfig) -> None:
    """Ranges of the telemetry settings (checked whether or not it is enabled)."""
    if t.endpoint:
        _check_endpoint("telemetry", t.endpoint)
    if not 0 <= t.sampling <= 1:
        raise ConfigError(f"'telemetry.sampling' must be between 0 and 1, got {t.sampling:g}")
    if t.max_attribute_kb < 1:
        raise ConfigError(f"'telemetry.max_attribute_kb' must be at least 1, got {t.max_attribute_kb}")
    if t.max_queue < 1:
        raise ConfigError(f"'telemetry.max_queue' must be at least 1, got {t.max_queue}")
    if t.timeout <= 0:
        raise ConfigError(f"'telemetry.timeout' must be a positive number of seconds, got {t.timeout:g}")
    if t.trace_url and (
        "{trace_id}" not in t.trace_url or not t.trace_url.startswith(("http://", "https://"))
    ):
        raise ConfigError(
            "'telemetry.trace_url' must be an http:// or https:// URL with {trace_id} in it, "
            f"got {t.trace_url!r}"
        )


def check_backend(key: str, backend: BackendConfig) -> None:
    """The ranges of one backend's settings; errors name ``key`` (``backend`` or ``backends.NAME``)."""
    if backend.type != "llamacpp":  # llamacpp has no one endpoint: it runs a server per model
        _check_endpoint(key, backend.endpoint)
    if backend.timeout <= 0:
        raise ConfigError(f"'{key}.timeout' must be a positive number of seconds, got {backend.timeout:g}")
    if backend.connect_timeout <= 0:
        raise ConfigError(
            f"'{key}.connect_timeout' must be a positive number of seconds, got {backend.connect_timeout:g}"
        )
    if backend.type == "llamacpp":
        _check_llamacpp(key, backend)
    if backend.max_concurrency < 0:
        raise ConfigError(
            f"'{key}.max_concurrency' must be 0 (no limit) or more, got {backend.max_concurrency}"
        )
    if backend.max_queue < 0:
        raise ConfigError(f"'{key}.max_queue' must not be negative, got {backend.max_queue}")
    if backend.max_connections < 1:
        raise ConfigError(f"'{key}.max_connections' must be at least 1, got {backend.max_connections}")
    if not 0 < backend.max_answer_mb <= 4096:
        raise ConfigError(f"'{key}.max_answer_mb' must be between 0 and 4096, got {backend.max_answer_mb:g}")


def _check_limits(config: Config) -> None:
    """Ranges of the size, rate and key settings."""
    server, auth = config.server, config.auth
    if not 0 < server.max_body_mb <= 4096:
        raise ConfigError(f"'server.max_body_mb' must be between 0 and 4096, got {server.max_body_mb:g}")
    if server.keepalive_timeout <= 0:
        seconds = server.keepalive_timeout
        raise ConfigError(f"'server.keepalive_timeout' must be a positive number of seconds, got {seconds:g}")
    if server.max_connections < 1:
        raise ConfigError(f"'server.max_connections' must be at least 1, got {server.max_connections}")
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


def _check_cache_and_quotas(config: Config) -> None:
    """Ranges of the answer cache's bounds and of each key's quota."""
    cache = config.cache
    if cache.ttl < 0:
        raise ConfigError(f"'cache.ttl' must be 0 (until evicted) or more seconds, got {cache.ttl:g}")
    if cache.max_entries < 1:
        raise ConfigError(f"'cache.max_entries' must be at least 1, got {cache.max_entries}")
    if not 0 < cache.max_mb <= 65536:
        raise ConfigError(f"'cache.max_mb' must be between 0 and 65536, got {cache.max_mb:g}")
    for i, entry in enumerate(config.auth.keys):
        quota = entry.quota
        for name in ("requests_per_day", "tokens_per_day"):
            if getattr(quota, name) < 0:
                raise ConfigError(
                    f"'auth.keys[{i}].quota.{name}' must be 0 (no limit) or more, got {getattr(quota, name)}"
                )
        for j, pattern in enumerate(quota.models):
            if not pattern.strip():
                raise ConfigError(f"'auth.keys[{i}].quota.models[{j}]' must not be empty")


def _check_ui(config: Config) -> None:
    """Ranges of the web UI's settings."""
    ui = config.ui
    if ui.session_hours <= 0:
        raise ConfigError(f"'ui.session_hours' must be a positive number of hours, got {ui.session_hours:g}")
    for name in ("max_viewers", "viewer_queue", "page_size"):
        value = getattr(ui, name)
        if not 1 <= value <= 100_000:
            raise ConfigError(f"'ui.{name}' must be between 1 and 100000, got {value}")


_SECRETS = frozenset({"backend.api_key", "auth.keys"})


def _check_database_url(url: str) -> None:
    """A postgresql:// URL with a host; the message never shows the password."""
    shown = masked(url)
    if not is_postgres(url):
        raise ConfigError(f"'database.url' must be a postgresql:// URL, got {shown!r}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - urlsplit validates the port lazily
    except ValueError:
        raise ConfigError(f"'database.url' has an invalid port: {shown!r}") from None
    if not parts.hostname and "host=" not in parts.query:
        raise ConfigError(f"'database.url' must name a host: {shown!r}")


def _check_endpoint(key: str, endpoint: str) -> None:
    url = urlsplit(endpoint)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(
            f"'{key}.endpoint' must be an http:// or https:// URL with a host, got {endpoint!r}"
        )
    try:
        url.port  # noqa: B018 - urlsplit validates the port lazily
    except ValueError:
        raise ConfigError(f"'{key}.endpoint' has an invalid port: {endpoint!r}") from None


def _check_llamacpp(key: str, backend: BackendConfig) -> None:
    """What only the llamacpp backend needs: models whose files exist, sane limits."""
    if backend.max_running < 1:
        raise ConfigError(f"'{key}.max_running' must be at least 1, got {backend.max_running}")
    if backend.idle_timeout < 0:
        raise ConfigError(f"'{key}.idle_timeout' must not be negative (0 = never stop)")
    if not backend.models:
        raise ConfigError(f"'{key}.models' must name at least one GGUF file for the llamacpp backend")
    for name, model in backend.models.items():
        if not Path(model.path).expanduser().is_file():
            raise ConfigError(f"'{key}.models.{name}.path': file not found: {model.path}")


def _check_redact(redact: RedactConfig) -> None:
    """Known detector names; custom patterns that compile, have a plain kind, and match something."""
    for name in redact.detectors:
        if name != "all" and name not in REDACT_DETECTORS:
            known = ", ".join(("all", *REDACT_DETECTORS))
            raise ConfigError(
                f"'database.redact.detectors' has an unknown detector {name!r} (known: {known})"
            )
    for kind, regex in redact.patterns.items():
        key = f"'database.redact.patterns.{kind}'"
        if not re.fullmatch(r"[a-z0-9_]{1,40}", kind):
            raise ConfigError(f"{key}: a kind is 1-40 lowercase letters, digits or '_'")
        try:
            compiled = re.compile(regex)
        except re.error as exc:
            raise ConfigError(f"{key} is not a regular expression: {exc}") from None
        if compiled.fullmatch(""):
            raise ConfigError(f"{key} matches the empty string")
