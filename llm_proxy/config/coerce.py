"""Checking one value of a config file against the type of the field it fills.

Types are read from the dataclasses' annotations, so a new setting needs no code
here unless its shape is new. Every error names the key; a secret is described by
its type only, so a typo never prints one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import types
from collections.abc import Callable, Mapping
from typing import Any, Literal, get_args, get_origin, get_type_hints

from ..errors import ConfigError
from .sections import ApiKey, LlamaModel

SECRETS = frozenset({"backend.api_key", "auth.keys"})


def section(name: str, cls: type, values: Mapping[str, Any]) -> Any:
    """Build the dataclass ``cls`` from the mapping found at key ``name``."""
    # The fields' types, resolved: this module's annotations are strings until asked.
    types_of = get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in types_of:
            raise ConfigError(f"unknown key '{name}.{key}' (expected one of: {', '.join(fields)})")
        kwargs[key] = coerce(f"{name}.{key}", types_of[key], value)
    for f in dataclasses.fields(cls):
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if missing and f.name not in kwargs:
            raise ConfigError(f"'{name}.{f.name}' is required")
    return cls(**kwargs)


def coerce(key: str, kind: Any, value: Any) -> Any:
    """Check one value against its field's type; only harmless widening (int → float)."""
    # Secrets are described by their type only, so a typo never prints one.
    describe = shape if key in SECRETS or key.endswith(".api_key") else kind_of
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
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):  # a nested section
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{key}' must be a mapping, got {describe(value)}")
        return section(key, kind, value)
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
    if dataclasses.is_dataclass(item) and isinstance(item, type):  # a list of nested sections
        if not isinstance(value, list):
            raise ConfigError(f"'{key}' must be a list of mappings, got {describe(value)}")
        return tuple(coerce(f"{key}[{i}]", item, entry) for i, entry in enumerate(value))
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
                raise ConfigError(f"'{key}.{k}' must map a model name to a model name, got {kind_of(v)}")
        return types.MappingProxyType(dict(value))
    if item is LlamaModel:
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{key}' must be a mapping of model names, got {kind_of(value)}")
        return types.MappingProxyType({str(k): _llama_model(f"{key}.{k}", v) for k, v in value.items()})
    if get_origin(item) is Mapping:  # model name → extra request fields
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{key}' must be a mapping of model names, got {describe(value)}")
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, Mapping):
                raise ConfigError(f"'{key}.{k}' must be a mapping of request fields, got {kind_of(v)}")
        return types.MappingProxyType({k: dict(v) for k, v in value.items()})
    if dataclasses.is_dataclass(item) and isinstance(item, type):  # name → nested section
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{key}' must be a mapping of names, got {describe(value)}")
        return types.MappingProxyType({str(k): coerce(f"{key}.{k}", item, v) for k, v in value.items()})
    raise ConfigError(f"'{key}' has an unsupported type Mapping[str, {item}]")  # a programming error


_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def _api_key(key: str, entry: Any) -> ApiKey:
    """One ``auth.keys`` entry: a name, either ``key`` or ``key_sha256``, and its other settings.

    Settings beyond the key itself (fields of :class:`ApiKey` after ``key_sha256``)
    are checked by their types like any section's.
    """
    if not isinstance(entry, Mapping):
        raise ConfigError(
            f"'{key}' must be a mapping with name and key (or key_sha256), got {kind_of(entry)}"
        )
    extra = [f.name for f in dataclasses.fields(ApiKey) if f.name not in ("name", "key_sha256")]
    allowed = ("name", "key", "key_sha256", *extra)
    unknown = sorted(str(k) for k in entry if k not in allowed)
    if unknown:
        raise ConfigError(f"unknown key '{key}.{unknown[0]}' (expected one of: {', '.join(allowed)})")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"'{key}.name' must be a non-empty string, got {kind_of(name)}")
    if ("key" in entry) == ("key_sha256" in entry):
        raise ConfigError(f"'{key}' must have exactly one of 'key' and 'key_sha256'")
    if "key" in entry:
        secret = entry["key"]
        # Never echo the value: it is a secret, whatever its type.
        if not isinstance(secret, str) or not secret:
            raise ConfigError(f"'{key}.key' must be a non-empty string")
        digest = hashlib.sha256(secret.encode()).hexdigest()
    else:
        digest = entry["key_sha256"]
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise ConfigError(f"'{key}.key_sha256' must be 64 hex characters (sha256sum of the key)")
        digest = digest.lower()
    settings = section(key, ApiKey, {k: v for k, v in entry.items() if k in extra} | {"name": name})
    return dataclasses.replace(settings, key_sha256=digest)


def _llama_model(key: str, value: Any) -> LlamaModel:
    """One ``backend.models`` entry: ``{path, ctx, args}``, or just the path as a string."""
    if isinstance(value, str):
        value = {"path": value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"'{key}' must be a mapping with a 'path', got {kind_of(value)}")
    known = {f.name for f in dataclasses.fields(LlamaModel)}
    for name in value:
        if name not in known:
            raise ConfigError(f"unknown key '{key}.{name}' (expected one of: {', '.join(known)})")
    if "path" not in value:
        raise ConfigError(f"'{key}.path' is required: the GGUF file to serve")
    path = coerce(f"{key}.path", str, value["path"])
    if not path:
        raise ConfigError(f"'{key}.path' must not be empty")
    ctx = coerce(f"{key}.ctx", int, value.get("ctx", LlamaModel.ctx))
    if ctx < 0:
        raise ConfigError(f"'{key}.ctx' must not be negative, got {ctx}")
    args = value.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, (str, int, float)) for a in args):
        raise ConfigError(f"'{key}.args' must be a list of llama-server arguments, got {kind_of(args)}")
    return LlamaModel(path=path, ctx=ctx, args=tuple(str(a) for a in args))


def shape(value: Any) -> str:
    """What kind of value this is, without showing it."""
    if isinstance(value, bool) or value is None:
        return kind_of(value)
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return kind_of(value)


def kind_of(value: Any) -> str:
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
