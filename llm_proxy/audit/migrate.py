"""Applies ``migrations/sqlite/NNNN_name.sql`` in order, each once, in its own transaction.

Each dialect has its folder (``migrations/sqlite/``, ``migrations/postgresql/``,
applied by :mod:`.pg_migrate`); both hold the same file names, so a column added
to one is added to the other under the same number (CONTRIBUTING.md, "a column").

A migration and the row that records it commit together, so a crash leaves the
database either before or after a migration, never half-way.

Numbers only grow and are never reused. 0004 was never shipped (the branches
that became 0002-0003 and 0005 were written side by side): a new migration
takes the next number after the highest, never a gap, or it would run before
0005 on a fresh database and after it on an upgraded one.
"""

from __future__ import annotations

import os
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

_NAME = re.compile(r"^(\d{4})_[\w-]+\.sql$")

# The Go LLM Proxy's `logs` table: the twelve columns its README documents.
GO_COLUMNS = (
    "id", "timestamp", "endpoint", "method", "model", "prompt", "response",
    "status_code", "latency_ms", "stream", "backend_type", "error",
)  # fmt: skip
FIRST = "0001_logs.sql"


def migrations_dir(dialect: str = "sqlite") -> Path:
    """Where a dialect's migrations are: inside the installed package, else the checkout's top level."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "migrations" / dialect, here.parent / "migrations" / dialect):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no migrations/{dialect} folder next to {here}")


def available(folder: Path | None = None) -> list[Path]:
    """The migration files, in the order they apply."""
    folder = folder or migrations_dir()
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def applied(conn: sqlite3.Connection) -> set[str]:
    """Names of the migrations already applied to this database."""
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    return {row[0] for row in conn.execute("SELECT name FROM _migrations")}


def migrate(path: str, folder: Path | None = None) -> list[str]:
    """Apply pending migrations to the database at ``path``; returns the names applied."""
    create_private(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # Incremental auto-vacuum lets retention hand freed pages back to the
        # file system in small steps. It must be chosen before the first table.
        if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=5000")
        names = []
        adopted = _adopt_go_table(conn, folder)
        if adopted is not None:
            names.append(adopted)
        done = applied(conn)
        for file in available(folder):
            if file.name in done:
                continue
            _apply(conn, file)
            names.append(file.name)
        if names and conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0:
            # A database made before retention existed: switching it over takes
            # one full VACUUM, done once, while upgrading and before serving.
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("VACUUM")
        return names
    finally:
        conn.close()


def _adopt_go_table(conn: sqlite3.Connection, folder: Path | None) -> str | None:
    """Take over a database the Go proxy wrote: its rows stay, 0001's columns are added.

    The Go proxy keeps no migrations table; its ``logs`` has the first twelve
    columns of 0001. Adding 0001's other columns and recording 0001 as applied
    (in one transaction) leaves the file as if 0001 had made it, so the later
    migrations (the search index rebuilds itself over the old rows) apply as
    usual. Returns a line saying so, or None when there was nothing to adopt.
    """
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "logs" not in tables or "_migrations" in tables:
        return None
    columns = [row[1] for row in conn.execute("PRAGMA table_info(logs)")]
    if not set(GO_COLUMNS) <= set(columns):
        raise sqlite3.DatabaseError(
            "the database has a 'logs' table that is neither llm-proxy's nor the Go proxy's "
            f"(its columns: {', '.join(columns)}); point database.path at another file"
        )
    first = next((f for f in available(folder) if f.name == FIRST), None)
    if first is None:
        raise FileNotFoundError(f"{FIRST} is missing from the migrations folder")
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _statements(first.read_text(encoding="utf-8")):
            if _strip_comments(statement).upper().startswith("CREATE TABLE"):
                for name, declaration in _column_declarations(statement):
                    if name not in columns:
                        conn.execute(f"ALTER TABLE logs ADD COLUMN {name} {declaration}")
            else:  # the indexes
                conn.execute(statement.replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS", 1))
        applied(conn)
        conn.execute(
            "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
            (FIRST, datetime.now(UTC).isoformat(timespec="seconds")),
        )
        [(count,)] = conn.execute("SELECT count(*) FROM logs")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return f"{FIRST} (adopted the Go proxy's logs table: {count} rows kept)"


def _column_declarations(create_table: str) -> list[tuple[str, str]]:
    """(name, type and constraints) of each column in a ``CREATE TABLE`` statement."""
    body = _strip_comments(create_table)
    inner = body[body.index("(") + 1 : body.rindex(")")]
    found = []
    for part in inner.split(","):
        name, _, declaration = part.strip().partition(" ")
        found.append((name, declaration.strip()))
    return found


def create_private(path: str) -> None:
    """Create the database file readable by its owner only (0600), if it does not exist.

    The trail holds every prompt and answer. SQLite gives the -wal and -shm
    files the mode of the database file, so they are private too.
    """
    if path == ":memory:" or path.startswith("file:"):
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # an existing file keeps the mode its owner gave it
    os.close(fd)


def _apply(conn: sqlite3.Connection, file: Path) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _statements(file.read_text(encoding="utf-8")):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
            (file.name, datetime.now(UTC).isoformat(timespec="seconds")),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """Split a script into complete statements (sqlite3 knows where triggers end)."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                statements.append(pending)
            pending = ""
    if _strip_comments(pending):
        raise sqlite3.OperationalError(f"incomplete SQL statement at the end: {pending.strip()[:80]}")
    return statements


def _strip_comments(sql: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines()).strip()
