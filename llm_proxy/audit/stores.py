"""The store seam: what the writer needs of a database, and the choice between SQLite and PostgreSQL.

:class:`AuditStore` is everything :class:`~.recorder.Recorder`, the retention
task and ``/health/ready`` call on a store. :class:`~.store.Store` (SQLite, one
file, the default) and :class:`~.pg_store.PostgresStore` (``database.url``)
implement it; :func:`create` picks one from the configuration.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

from ..config import Config
from . import redact
from .dburl import is_postgres
from .pg_store import PostgresStore
from .store import Store

SPOOL_FILE = "llm_proxy-spool.db"


class AuditStore(Protocol):
    """A database the writer can write ``logs`` rows to."""

    dialect: str  # "sqlite" or "postgresql"
    path: str  # how messages name it (a PostgreSQL URL with its password masked)
    failing: str | None  # why the last write failed, while it is the database's trouble

    async def open(self) -> list[str]:
        """Create or upgrade the schema and connect; returns the migrations applied."""

    async def insert(self, rows: Sequence[tuple[Any, ...]]) -> list[tuple[int, int | None]] | None:
        """Store rows in :data:`~.exchange.COLUMNS` order, all or none (a spool counts as stored).

        Returns each row's ``(id, turn_id)``, or None when they are not known yet (spooled).
        """

    def redacted(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """The row as its stored copy would have it (for the log line of a row never stored)."""

    def transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the database's trouble (retry) rather than the rows' (split, reduce)."""

    async def rollback(self) -> None:
        """Abandon a failed transaction."""

    async def select(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A query in the SQL both dialects share (``?`` placeholders, a datetime for a time)."""

    async def follow(self) -> None:
        """The idle writer's check, about once a second: a moved file, a server gone."""

    async def writable(self, wait: float = 2.0) -> str | None:
        """None when rows are being kept, else why not (503 from /health/ready)."""

    def degraded(self) -> str | None:
        """A note for /health/ready while rows are kept but not where they belong (the spool)."""

    async def close(self) -> None:
        """Close the connection once the writer has written what it had."""


def spool_path(config: Config) -> str:
    """``database.spool``, else ``llm_proxy-spool.db`` in the folder of ``database.path``.

    That folder is where the proxy may write (the service's state directory,
    /var/lib/llm-proxy); the config file's folder often is not (/etc is
    read-only under the unit's ProtectSystem=strict).
    """
    if config.database.spool:
        return config.database.spool
    return os.path.join(os.path.dirname(os.path.abspath(config.database.path)), SPOOL_FILE)


def create(config: Config) -> Store | PostgresStore:
    """The store ``config`` asks for: PostgreSQL when ``database.url`` is set, else the SQLite file."""
    db = config.database
    policy, per_key = redact.policies(db, config.auth.keys)
    if db.url and is_postgres(db.url):
        spool = spool_path(config)
        return PostgresStore(db.url, spool, policy.store_bodies, db.max_body_kb, policy.redactor, per_key)
    return Store(db.path, policy.store_bodies, db.max_body_kb, policy.redactor, per_key)
