"""The SQLite database behind the audit trail: connection settings and inserts.

Everything this process writes goes through one connection, and each
transaction holds :attr:`Store.lock`, so the writer's batches and the
retention task's small deletes take turns and never share a transaction.

Rows go to the file that ``database.path`` names. Should that file be deleted,
moved or replaced while the proxy runs, the open connection would go on
writing into a file nobody can find: before and after each batch the store
compares the path's inode with the one it opened (a ``stat``), and on a
difference logs it at ERROR, checkpoints the old file, and opens (or creates
and migrates) the file now at the path. Until that works, writes fail as
transient and the writer keeps the rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from ..config import DatabaseConfig
from .connection import Connection
from .exchange import COLUMNS
from .migrate import migrate
from .redact import Policy, Redactor
from .rows import STORED, TEXT_COLUMNS, Policies, prepare
from .turns import TurnTracker
from .when import stamp

__all__ = ["TEXT_COLUMNS", "Store", "Unavailable", "transient"]

log = logging.getLogger("llm_proxy.audit")
T = TypeVar("T")

_INSERT_HEAD = f"INSERT INTO logs (id, {', '.join(STORED)}) VALUES "
_ROW_MARKS = f"(?, {', '.join('?' * len(STORED))})"
# The largest id ever used in logs (AUTOINCREMENT never reuses one).
_LAST_ID = (
    "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'logs'), 0), "
    "coalesce((SELECT max(id) FROM logs), 0))"
)
_INSERT_BLOB_HEAD = "INSERT OR IGNORE INTO blobs (hash, data) VALUES "
# Rows go in by statements of these many (and a batch's rest, one by one): the
# few statement texts stay in sqlite3's cache, and each takes a batch's rows in
# one step. executemany() would step once per row, and every step gives the GIL
# up and takes it back, which under load left the event loop waiting on this
# thread (p99 at concurrency 1 doubled).
GROUPS = (64, 16, 4, 1)
# SQLite's primary result codes that are the database's trouble, not the rows':
# a write that failed so is retried with its rows kept. https://www.sqlite.org/rescode.html
_TRANSIENT_CODES = frozenset({
    sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PROTOCOL, sqlite3.SQLITE_NOMEM,
    sqlite3.SQLITE_SCHEMA,
})  # fmt: skip


# Free space below which /health/ready reports the disk as full: a batch of
# capped rows fits many times over, and the reason shows before SQLite fails.
MIN_FREE = 8 * 1024 * 1024


class Unavailable(sqlite3.OperationalError):
    """The database file cannot be written now: missing, replaced under the writer, not reopened yet."""


def transient(exc: BaseException) -> bool:
    """Whether a failed write is the database's trouble (retry it) rather than its rows' (don't)."""
    if isinstance(exc, (Unavailable, OSError, MemoryError)):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(exc, sqlite3.Error) or code is None:
        return False  # a value refused before SQLite saw it: binding, encoding, JSON
    if code == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
        # Someone else's row took the id we gave ours; the retry reads the ids again.
        return "logs.id" in str(exc)
    return code & 0xFF in _TRANSIENT_CODES


class Store:
    """One connection, on a thread of its own, that writes ``logs`` rows in batches."""

    dialect = "sqlite"

    def __init__(
        self,
        path: str,
        store_bodies: str = "full",
        max_body_kb: int = DatabaseConfig.max_body_kb,
        redactor: Redactor | None = None,
        keys: Mapping[str, Policy] | None = None,
    ) -> None:
        self.path = path
        # The database's policy, and the API keys' whose rows are kept otherwise, by key name.
        self.policies = Policies(Policy(store_bodies, redactor), dict(keys or {}))
        self.max_body = max_body_kb * 1024  # bytes; 0: no limit
        self.lock = asyncio.Lock()
        self.turns = TurnTracker()
        self.min_free = MIN_FREE
        self._folder = os.path.dirname(os.path.abspath(path))
        # Why the last write failed, when it was the database's fault (cleared by a write that lands).
        self.failing: str | None = None
        self._db: Connection | None = None
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of the file the connection has open
        self._next_id: int | None = None  # the id the next row gets; None = read it from the table

    async def open(self) -> list[str]:
        """Apply pending migrations, then open the writer connection; returns migrations applied."""
        applied = migrate(self.path)
        await self._connect()
        return applied

    async def _connect(self) -> None:
        db = Connection(self.path)
        await db.open(_settings)
        self._db, self._file = db, _identity(self.path)

    async def insert(self, rows: Sequence[tuple[Any, ...]]) -> list[tuple[int, int | None]]:
        """Insert rows (in :data:`COLUMNS` order) in one transaction; all or none land.

        Returns each row's id and turn id, in order (telemetry puts them on the span).
        """
        async with self.lock:
            try:
                db = await self._follow()
            except BaseException as exc:
                self.failing = str(exc)
                raise
            turns = self.turns.snapshot()
            try:
                # Rows get their ids from us, following AUTOINCREMENT's rule (after
                # the largest id ever used), so that a turn is named after its first
                # row in the same statement. Should anyone else insert a row, the
                # primary key refuses the batch, and the retry reads the ids again.
                if self._next_id is None:
                    self._next_id = await db.run(_last_id) + 1
                first = self._next_id
                # Prepared on the writer's thread (turns, redaction, compaction: 30 us a
                # row, more for a body with tools), not on the event loop: the loop
                # serves requests meanwhile, and a batch of 256 no longer holds it up.
                prepared = functools.partial(
                    _prepare,
                    rows=rows,
                    first=first,
                    turns=self.turns,
                    policies=self.policies,
                    max_body=self.max_body,
                )
                values = await db.run(prepared)
                if _surely_not(self.path, self._file):
                    # Gone while this batch was written: it went to the old file.
                    # Failing it has the retry write it to the file now at the path.
                    raise Unavailable(f"database file {self.path} went away during the write")
                self._next_id = first + len(values)
            except BaseException as exc:
                self.turns.restore(turns)
                self._next_id = None
                if transient(exc):
                    self.failing = str(exc) or type(exc).__name__
                raise
            self.failing = None
            return [(v[0], v[-1]) for v in values]  # (id, turn_id): turn_id is STORED's last

    def transient(self, exc: BaseException) -> bool:
        """The recorder's question: retry (the database's trouble) or split (the rows')?"""
        return transient(exc)

    def degraded(self) -> str | None:
        """Nothing to add to /health/ready beyond :meth:`writable` (there is no spool)."""
        return None

    async def follow(self) -> None:
        """Reopen the file at the path if it is not the one open (the idle writer's check)."""
        if self._db is not None and _identity_or_none(self.path) == self._file:
            return  # without the lock: a stat, nothing else
        async with self.lock:
            try:
                await self._follow()
            except (sqlite3.Error, OSError) as exc:
                self.failing = str(exc)
            else:
                self.failing = None

    async def _follow(self) -> Connection:
        """The connection to the file the path names now; (re)opened when the file changed."""
        now = _identity(self.path)
        if self._db is not None and now == self._file:
            return self._db
        if self._db is not None:
            what = "deleted or moved away" if now is None else "replaced by another file"
            log.error(
                "audit database %s was %s while the proxy ran; the rows go to %s from now on",
                self.path, what, "a new file there" if now is None else "the file now there",
            )  # fmt: skip
            await self._let_go(self._db)
            self._db = None
            if now is None:
                _remove_leftovers(self.path)
        self.turns = TurnTracker()  # a new file: no turn continues from rows in the old one
        self._next_id = None
        try:
            applied = await asyncio.to_thread(migrate, self.path)
            await self._connect()
        except (sqlite3.Error, OSError) as exc:
            raise Unavailable(f"database file {self.path} cannot be opened: {exc}") from exc
        log.warning(
            "audit trail continues in %s%s", self.path, f" (applied {', '.join(applied)})" if applied else ""
        )
        assert self._db is not None
        return self._db

    @staticmethod
    async def _let_go(db: Connection) -> None:
        """Close the connection to a file no longer at the path, its WAL written into it first."""
        # The -wal file is named after the path, not the inode: left behind, it
        # would be replayed into whatever file takes the path next. TRUNCATE
        # moves its pages into the old file (a moved one keeps all its rows).
        with contextlib.suppress(sqlite3.Error):
            await db.run(lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall())
        await db.close()

    def redacted(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """A row (in :data:`COLUMNS` order) with its texts as a stored copy would have them."""
        return self.policies.redacted(row)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` on the writer's connection, in its own turn (between the writer's batches)."""
        async with self.lock:
            return await self._open().run(fn)

    async def select(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a query (``?`` placeholders; a datetime as the timestamp text), in its own turn."""
        values = [stamp(v) if isinstance(v, datetime) else v for v in params]
        return await self.run(lambda conn: conn.execute(sql, values).fetchall())

    def _open(self) -> Connection:
        """The open connection; while there is none (the file went away), :class:`Unavailable`."""
        if self._db is None:
            raise Unavailable(f"database file {self.path} is not open")
        return self._db

    async def rollback(self) -> None:
        """Abandon a failed transaction so the next batch starts clean."""
        if self._db is not None:
            async with self.lock:
                await self._db.run(lambda conn: conn.rollback())

    async def close(self) -> None:
        """Close the connection (checkpointing the WAL)."""
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def writable(self, wait: float = 2.0) -> str | None:
        """``None`` when a write transaction can start now, else why not (for /health/ready)."""
        try:
            now = _identity(self.path)
        except OSError as exc:
            return f"database {self.path} cannot be checked: {exc}"
        if now is None:
            return f"database file {self.path} is missing (deleted or moved while the proxy runs)"
        if now != self._file:
            return f"database file {self.path} was replaced; the writer opens the new one"
        if self.failing is not None:
            return f"database {self.path}: the last write failed: {self.failing}"
        try:
            disk = os.statvfs(self._folder)
        except OSError as exc:
            return f"database {self.path}: free space cannot be checked: {exc}"
        free = disk.f_bavail * disk.f_frsize
        if free < self.min_free:
            return f"disk almost full: {free // 1024} KiB free for database {self.path}"
        try:
            await asyncio.to_thread(_try_write, self.path, wait)
        except sqlite3.Error as exc:
            return f"database {self.path} is not writable: {exc}"
        return None


def _identity(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file at ``path``; None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _identity_or_none(path: str) -> tuple[int, int] | None:
    try:
        return _identity(path)
    except OSError:
        return None


def _surely_not(path: str, file: tuple[int, int] | None) -> bool:
    """Whether ``path`` now names another file than ``file``, or none; False when it cannot be told.

    Asked after a batch committed: failing it on a mere doubt (a stat refused)
    would write the rows twice.
    """
    try:
        return _identity(path) != file
    except OSError:
        return False


def _remove_leftovers(path: str) -> None:
    """Remove the -wal and -shm files of a database file that is gone."""
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)


def _settings(conn: sqlite3.Connection) -> None:
    """The writer connection's settings."""
    # WAL lets `sqlite3 llm_proxy.db` read while we write; busy_timeout makes
    # our writes wait out a user's brief write lock instead of failing.
    # synchronous=NORMAL is durable across process crashes in WAL mode.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA synchronous=NORMAL")
    # After retention rewrites many pages the WAL file would keep its peak
    # size; this trims it back once a checkpoint lets it restart.
    conn.execute("PRAGMA journal_size_limit=4194304")


def _last_id(conn: sqlite3.Connection) -> int:
    return int(conn.execute(_LAST_ID).fetchone()[0])


def _try_write(path: str, wait: float) -> None:
    """Take the write lock and let it go again, on a connection of our own."""
    # Not the writer's connection: BEGIN there could land inside one of its
    # batches. mode=rw never creates a file that has gone missing.
    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=wait, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def _prepare(
    conn: sqlite3.Connection,
    rows: Sequence[tuple[Any, ...]],
    first: int,
    turns: TurnTracker,
    policies: Policies,
    max_body: int,
) -> list[tuple[Any, ...]]:
    """Rows (in :data:`COLUMNS` order) made stored rows from id ``first`` on, and written: on the thread."""
    blobs: dict[str, str] = {}
    values = [
        prepare(values, first + i, blobs, turns, policies.of(values), max_body)
        for i, values in enumerate(dict(zip(COLUMNS, row, strict=True)) for row in rows)
    ]
    _write_batch(conn, list(blobs.items()), values)
    return values


def _write_batch(conn: sqlite3.Connection, blobs: list[tuple[str, str]], rows: list[tuple[Any, ...]]) -> None:
    """One batch in one transaction, taken with the write lock up front, in one step on the thread.

    A batch is several statements; sent one by one, each would wait for the
    event loop in between, and the write lock is held all that while. Under
    steady load the writer then holds it almost without a break, and a user's
    ``BEGIN IMMEDIATE`` in ``sqlite3`` could wait out its whole busy timeout.
    """
    # IMMEDIATE: busy_timeout then waits out a user's write. A deferred
    # transaction that has read first is refused at once when someone else
    # wrote in between.
    conn.execute("BEGIN IMMEDIATE")
    try:
        _insert(conn, _INSERT_BLOB_HEAD, "(?, ?)", blobs)
        _insert(conn, _INSERT_HEAD, _ROW_MARKS, rows)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


def _insert(conn: sqlite3.Connection, head: str, marks: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert ``rows`` with multi-row INSERT statements of :data:`GROUPS` sizes."""
    start = 0
    for size in GROUPS:
        while len(rows) - start >= size:
            part = rows[start : start + size]
            conn.execute(_statement(head, marks, size), [value for row in part for value in row])
            start += size


@functools.lru_cache(maxsize=16)
def _statement(head: str, marks: str, size: int) -> str:
    return head + ", ".join([marks] * size)
