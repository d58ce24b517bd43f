"""Backends: where requests go. Each one implements :class:`~.base.Backend`."""

from __future__ import annotations

from ..config import Config
from ..errors import ConfigError
from .base import Backend
from .router import Router


def create(config: Config) -> Router:
    """The router in front of every configured backend (``backends:``, or ``backend:`` alone)."""
    return Router(config, create_one)


def create_one(config: Config) -> Backend:
    """The backend that ``backend.type`` names."""
    kind = config.backend.type
    if kind == "ollama":
        from .ollama import OllamaBackend

        return OllamaBackend(config)
    if kind == "openai":
        from .openai import OpenAIBackend

        return OpenAIBackend(config)
    if kind == "llamacpp":
        from .llamacpp import LlamaCppBackend

        return LlamaCppBackend(config)
    raise ConfigError(f"'backend.type' {kind!r} is not available in this version")
