"""The ``cache:`` section: answers kept for identical deterministic requests (off by default)."""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CacheModel:
    """How one model's answers are cached (``cache.models.<client-side name>``)."""

    # Cache every answer of this model, whatever its temperature: a model whose
    # answers never vary (an embedding model, a greedy decoder), or one whose
    # variation nobody needs.
    always_cacheable: bool = False
    # false: never answer this model from the cache.
    enabled: bool = True


@dataclass(frozen=True)
class CacheConfig:
    """The answer cache: only deterministic requests, bounded in entries and bytes, LRU."""

    enabled: bool = False
    # Seconds an answer stays fresh; 0: until evicted.
    ttl: float = 3600.0
    # Answers kept at most, and their size at most in MiB (the least recently used go first).
    max_entries: int = 1000
    max_mb: float = 64.0
    # Client-side model name (x and x:latest alike) → how its answers are cached.
    models: Mapping[str, CacheModel] = field(default_factory=lambda: types.MappingProxyType({}))

    @property
    def max_bytes(self) -> int:
        """``max_mb`` in bytes."""
        return int(self.max_mb * 1024 * 1024)

    def model(self, client_name: str | None) -> CacheModel:
        """The settings for a client-side model name (``x`` and ``x:latest`` alike)."""
        if client_name is None:
            return _DEFAULT
        base = client_name.removesuffix(":latest")
        return self.models.get(client_name) or self.models.get(base) or _DEFAULT


_DEFAULT = CacheModel()
