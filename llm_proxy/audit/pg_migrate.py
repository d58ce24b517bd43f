"""Applies ``migrations/postgresql/NNNN_name.sql`` in order, each once, in its own transaction.

The same file names as ``migrations/sqlite/`` (a test checks both folders and
the columns they make). Several proxies may start at once against one
database: each migration runs under a transaction-level advisory lock and
checks again, inside it, whether another process applied it meanwhile. After
the migrations, ``views.sql`` makes the views again (a PostgreSQL view keeps
the columns ``logs.*`` had when it was made).

The store's own bookkeeping tables are made here too, not by a numbered file:
``_migrations``, ``_spooled`` (the keys of rows sent from the outage spool, so
that none is sent twice) and ``_imports`` (how far ``llm-proxy migrate --to``
got with each SQLite file).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .migrate import available, migrations_dir

DIALECT = "postgresql"
# pg_advisory_xact_lock keys (any 64-bit numbers, the same in every llm-proxy).
MIGRATE_LOCK = 0x6C6C6D70_0001  # "llmp" 1: one migrating process at a time
IMPORT_LOCK = 0x6C6C6D70_0002  # "llmp" 2: writers share it while taking ids; an import takes it alone

BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS _spooled (key TEXT PRIMARY KEY, sent_at TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS _imports (
  source TEXT PRIMARY KEY,      -- the SQLite file's path and its first row's timestamp
  id_offset BIGINT NOT NULL,    -- added to each copied id (0 when the ids were free)
  last_id BIGINT NOT NULL,      -- the last SQLite id copied
  rows BIGINT NOT NULL DEFAULT 0,
  started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  finished_at TIMESTAMPTZ
);
"""


def folder() -> Path:
    """``migrations/postgresql``."""
    return migrations_dir(DIALECT)


async def migrate(conn: Any, where: Path | None = None) -> list[str]:
    """Apply pending migrations on an asyncpg connection; returns the names applied."""
    where = where or folder()
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
        await conn.execute(BOOKKEEPING)
    names = []
    files = available(where)
    for file in files:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
            done = await conn.fetchval("SELECT count(*) FROM _migrations WHERE name = $1", file.name)
            if done:
                continue
            await conn.execute(file.read_text(encoding="utf-8"))
            await conn.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES ($1, $2)",
                file.name, datetime.now(UTC).isoformat(timespec="seconds"),
            )  # fmt: skip
            names.append(file.name)
    if names:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
            await conn.execute((where / "views.sql").read_text(encoding="utf-8"))
    return names
