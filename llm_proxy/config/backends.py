"""Many backends: the ``backends:`` list (or mapping) of named backends, and ``routing:``.

Each entry is a :class:`BackendConfig` with a name and, optionally, the models it
serves (names or glob patterns); without them its models are discovered from its
own model list. The single ``backend:`` section of before (and of the Go proxy's
``config.json``) is one backend named ``default``; next to ``backends:`` it holds
the settings every entry starts from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .coerce import coerce, kind_of
from .sections import NamedBackend, RoutingConfig

# A backend's name is a metric label and a column value: short and plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def parse(value: Any, defaults: Mapping[str, Any]) -> tuple[NamedBackend, ...]:
    """The ``backends:`` value: a list of entries with a ``name``, or a mapping name → entry.

    ``defaults`` (the ``backend:`` section as written) fills what an entry leaves out.
    """
    if isinstance(value, Mapping):
        entries = []
        for name, entry in value.items():
            if entry is None:
                entry = {}
            if not isinstance(entry, Mapping):
                raise ConfigError(f"'backends.{name}' must be a mapping, got {kind_of(entry)}")
            if "name" in entry and entry["name"] != name:
                raise ConfigError(f"'backends.{name}.name' differs from its key; leave it out")
            entries.append((f"backends.{name}", {**defaults, **entry, "name": name}))
    elif isinstance(value, list):
        entries = []
        for i, entry in enumerate(value):
            if not isinstance(entry, Mapping):
                raise ConfigError(f"'backends[{i}]' must be a mapping, got {kind_of(entry)}")
            if "name" not in entry:
                raise ConfigError(f"'backends[{i}].name' is required")
            entries.append((f"backends[{i}]", {**defaults, **entry}))
    else:
        raise ConfigError(f"'backends' must be a list or a mapping of named backends, got {kind_of(value)}")
    if not entries:  # [] or {}: backend: alone, as when the key is left out
        return ()
    found = tuple(coerce(key, NamedBackend, entry) for key, entry in entries)
    seen: dict[str, str] = {}
    for (key, _), backend in zip(entries, found, strict=True):
        if not _NAME.fullmatch(backend.name):
            raise ConfigError(
                f"'{key}.name' must be letters, digits, '.', '_' or '-' (at most 64), got {backend.name!r}"
            )
        if backend.name in seen:
            raise ConfigError(f"'{key}.name' repeats the name of {seen[backend.name]}: {backend.name!r}")
        seen[backend.name] = key
        for j, pattern in enumerate(backend.serves):
            if not pattern:
                raise ConfigError(f"'{key}.serves[{j}]' must not be empty")
    return found


def check_routing(routing: RoutingConfig) -> None:
    """Ranges of ``routing:``."""
    if routing.breaker_failures < 1:
        raise ConfigError(f"'routing.breaker_failures' must be at least 1, got {routing.breaker_failures}")
    if routing.probe_interval <= 0:
        raise ConfigError(
            f"'routing.probe_interval' must be a positive number of seconds, got {routing.probe_interval:g}"
        )
