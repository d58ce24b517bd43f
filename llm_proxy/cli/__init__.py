"""The command line: ``llm-proxy [serve|migrate|logs|stats|prune|demo] ...``."""

PROG = "llm-proxy"
