"""llm-proxy: an Ollama-compatible proxy that keeps a SQLite audit trail of every exchange."""

__version__ = "0.1.0"
