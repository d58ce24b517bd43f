"""PostgreSQL behind the audit trail (asyncpg): several proxies, one trail, nothing lost while it is down.

The writer (:class:`~.recorder.Recorder`) hands batches to :meth:`PostgresStore.insert`
as it does to the SQLite store. Here:

- **Ids** come from the ``logs.id`` identity's sequence (``nextval`` for a
  batch at once), so any number of proxies write into one table and never
  share an id. A turn is named after its first row in the same statement.
- **Turns across proxies**: which turn each client's next request continues
  lives in ``turn_clients``, read and written in the batch's transaction
  under an advisory lock per client, so the rounds of one spoken request
  share a ``turn_id`` whichever proxy takes each round.
- **Outage**: a batch the server does not take (connection refused or lost,
  the server shutting down, out of connections) goes to the spool
  (:mod:`.spool`, an SQLite file), and so does every row after it, until the
  spool is empty again: a background task reconnects (migrating if need be)
  and sends the spooled rows, oldest first. ``/health/ready`` says so.
  A stop while the server is down leaves the rows in the spool; the next
  start sends them.
- The URL's password is never shown (:func:`~.dburl.masked`, :func:`~.dburl.redact`).

PostgreSQL's ``text`` cannot hold NUL (U+0000): it is stored as U+FFFD. An
``endpoint`` or ``model`` over 2 KiB is cut there (a btree index refuses more),
its full size in ``truncated``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import sqlite3
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson

from ..config import DatabaseConfig
from ..errors import AuditError
from . import pg_migrate
from .dburl import asyncpg, masked, remember_secret
from .exchange import COLUMNS
from .pg_errors import RETRY_AT_ONCE, Unavailable, describe, transient
from .pg_values import COLUMN_TYPES, INSERT_BLOBS, Insert, placeholders, text
from .redact import Policy, Redactor
from .rows import STORED, Policies, cap, client_of, prepare, reduced_row
from .spool import Spool
from .turns import TurnTracker

log = logging.getLogger("llm_proxy.audit")

SPOOL_BATCH = 256  # spooled rows sent per transaction
RETRY_IN_PLACE = 3  # a deadlock or serialization failure is retried at once this often
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)  # seconds between reconnection attempts, then the last
PING_EVERY = 5.0  # seconds between the idle writer's checks that the server still answers
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 30.0
DRAIN_AT_CLOSE = 5.0  # seconds a stopping proxy goes on sending its spool to a server that answers
KEEP_SPOOLED_KEYS = "30 days"  # how long a sent row's spool key guards against sending it twice
KEEP_TURN_CLIENTS = "1 day"  # a client silent this long starts a new turn anyway
FORGET_EVERY = 3600.0  # seconds between deletions of what is kept that long (at connect, then when idle)
# Text columns in a btree index: PostgreSQL refuses an index entry over 2704
# bytes, and with it the row. Longer values are cut (``truncated`` says so).
INDEXED_TEXT = ("endpoint", "model")
INDEXED_BYTES = 2048

_IDS = "SELECT nextval($1::regclass) FROM generate_series(1, $2)"
_CLAIM_KEYS = "INSERT INTO _spooled (key) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING RETURNING key"
_LOCK_CLIENTS = (
    "SELECT pg_advisory_xact_lock(k) FROM "
    "(SELECT hashtextextended(d, 0) AS k FROM unnest($1::text[]) AS d ORDER BY 1 OFFSET 0) AS s"
)
_READ_TURNS = "SELECT client, turn_id, messages FROM turn_clients WHERE client = ANY($1::text[])"
_SAVE_TURNS = (
    "INSERT INTO turn_clients (client, turn_id, messages) "
    "SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[]) "
    "ON CONFLICT (client) DO UPDATE "
    "SET turn_id = excluded.turn_id, messages = excluded.messages, seen = now()"
)
_SEQ_PAST_ROWS = (
    "SELECT setval($1::regclass, greatest((SELECT max(id) FROM logs), (SELECT last_value FROM {seq})))"
)
_LOCK_BLOBS = "SELECT 1 FROM blobs WHERE hash = ANY($1::text[]) ORDER BY hash FOR UPDATE"
_FORGET_KEYS = f"DELETE FROM _spooled WHERE sent_at < now() - '{KEEP_SPOOLED_KEYS}'::interval"
_FORGET_CLIENTS = f"DELETE FROM turn_clients WHERE seen < now() - '{KEEP_TURN_CLIENTS}'::interval"
DELETE_OLDER = (
    "DELETE FROM logs WHERE id IN (SELECT id FROM logs WHERE timestamp < $1 ORDER BY timestamp LIMIT $2)"
)


def _digest(client: tuple[Any, ...]) -> str:
    return hashlib.blake2b(orjson.dumps(list(client)), digest_size=16).hexdigest()


def _affected(status: str) -> int:
    """The row count of a command tag such as ``DELETE 200``."""
    tail = status.rpartition(" ")[2]
    return int(tail) if tail.isdigit() else 0


_TURN = 1 + STORED.index("turn_id")  # where a prepared row holds its turn (after the id)


class PostgresStore:
    """One connection that writes ``logs`` rows in batches; a spool file while the server is away."""

    dialect = "postgresql"

    def __init__(
        self,
        url: str,
        spool: str,
        store_bodies: str = "full",
        max_body_kb: int = DatabaseConfig.max_body_kb,
        redactor: Redactor | None = None,
        keys: Mapping[str, Policy] | None = None,
    ) -> None:
        asyncpg()  # the clear error naming the extra, before anything else
        remember_secret(url)
        self.url = url
        self.path = masked(url)  # how messages name the database
        # The database's policy, and the API keys' whose rows are kept otherwise, by key name.
        self.policies = Policies(Policy(store_bodies, redactor), dict(keys or {}))
        self.max_body = max_body_kb * 1024
        self.spool = Spool(spool)
        self.lock = asyncio.Lock()
        self.failing: str | None = None  # why the server is not being written to, masked
        self.spool_failing: str | None = None
        self.down_since: float | None = None
        self.sent_from_spool = 0
        self._conn: Any = None
        self._seq = "logs_id_seq"
        self._insert: Insert | None = None
        self._stored: list[tuple[int, int | None]] = []  # the last batch written: (id, turn_id) per row
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()  # set while the spool is empty
        self._drainer: asyncio.Task[None] | None = None
        self._pinged = 0.0
        self._forgot = 0.0  # when old spool keys and silent clients' turns were last deleted

    # -- opening and closing -----------------------------------------------------

    async def open(self) -> list[str]:
        """Open the spool, connect and migrate; returns migrations applied.

        A server that does not answer is no reason not to start: rows go to the
        spool until it does. One that refuses us (a wrong password, no such
        database) is: AuditError, with the URL's password masked.
        """
        try:
            waiting = await self.spool.open()
        except (sqlite3.Error, OSError) as exc:
            raise AuditError(
                f"cannot open the spool {self.spool.path} (database.spool), where rows wait while "
                f"PostgreSQL is down: {exc}"
            ) from None
        if not waiting:
            self._drained.set()
        applied: list[str] = []
        try:
            applied = await self._connect()
        except Exception as exc:
            if not transient(exc):
                raise AuditError(f"cannot use the PostgreSQL database {self.path}: {describe(exc)}") from None
            self._went_down(exc)
        if waiting:
            log.warning(
                "%d audit rows wait in the spool %s; sending them to %s", waiting, self.spool.path, self.path
            )
        self._drainer = asyncio.create_task(self._drain(), name="audit-spool")
        return applied

    async def _connect(self) -> list[str]:
        pg = asyncpg()
        conn = await pg.connect(self.url, timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT)
        try:
            applied = await pg_migrate.migrate(conn)
            self._seq = await conn.fetchval("SELECT pg_get_serial_sequence('logs', 'id')")
            self._insert = Insert(
                {name: kind for name, kind in await conn.fetch(COLUMN_TYPES)}, ("id", *STORED)
            )
            await conn.execute(_FORGET_KEYS)
            await conn.execute(_FORGET_CLIENTS)
        except BaseException:
            conn.terminate()
            raise
        if self.down_since is not None:
            done = f" (applied {', '.join(applied)})" if applied else ""
            log.warning("audit trail: PostgreSQL %s answers again%s", self.path, done)
        self._conn, self.failing, self.down_since = conn, None, None
        self._pinged = self._forgot = time.monotonic()
        return applied

    async def close(self) -> None:
        """Send what the spool holds for a few seconds if the server answers; then stop sending
        (what is left stays there for the next start), close the connection and the spool."""
        if self._drainer is not None and self._conn is not None and self.spool.count:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), DRAIN_AT_CLOSE)
        if self._drainer is not None:
            self._drainer.cancel()
            await asyncio.gather(self._drainer, return_exceptions=True)
            self._drainer = None
        if self._conn is not None:
            try:
                await asyncio.wait_for(self._conn.close(), 5)
            except Exception:  # a server gone away: nothing to say goodbye to
                self._conn.terminate()
            self._conn = None
        await self.spool.close()
        if self.spool.count:
            log.warning(
                "%d audit rows stay in the spool %s; the next start sends them",
                self.spool.count,
                self.spool.path,
            )

    # -- writing -------------------------------------------------------------------

    def transient(self, exc: BaseException) -> bool:
        """The recorder's question: retry (the database's trouble) or split (the rows')?"""
        return transient(exc)

    async def insert(self, rows: Sequence[tuple[Any, ...]]) -> list[tuple[int, int | None]] | None:
        """Insert rows (in :data:`COLUMNS` order) in one transaction, or keep them in the spool.

        Returns each row's ``(id, turn_id)`` when the rows went to the server, None
        when they wait in the spool (their ids are given when they are sent).
        """
        async with self.lock:
            if self._conn is None or self.spool.count:
                await self._to_spool(rows)  # down, or still sending: the rows keep their order
                return None
            try:
                await self._write_retrying(rows)
            except Exception as exc:
                if not transient(exc):
                    raise
                self._went_down(exc)
                await self._to_spool(rows)
                return None
            return self._stored

    async def _write_retrying(self, rows: Sequence[tuple[Any, ...]], keys: list[str] | None = None) -> int:
        for attempt in range(RETRY_IN_PLACE + 1):
            try:
                return await self._write(rows, keys)
            except Exception as exc:
                taken = getattr(exc, "constraint_name", None) == "logs_pkey"
                if attempt == RETRY_IN_PLACE or not (
                    taken or getattr(exc, "sqlstate", None) in RETRY_AT_ONCE
                ):
                    raise
                if taken and self._conn is not None:
                    # Someone inserted rows with ids of their own, ahead of the sequence:
                    # move it past them (never back), and take ids again.
                    await self._conn.execute(_SEQ_PAST_ROWS.format(seq=self._seq), self._seq)
                await asyncio.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _write(self, rows: Sequence[tuple[Any, ...]], keys: list[str] | None = None) -> int:
        """One batch in one transaction (ids, turns, blobs, rows); skips rows whose spool key was sent."""
        conn, plan = self._conn, self._insert
        if conn is None or plan is None:
            raise Unavailable(f"not connected to {self.path}")
        async with conn.transaction():
            # Shared with every other writer; `migrate --to` takes it alone to reserve a block of ids.
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", pg_migrate.IMPORT_LOCK)
            if keys is not None:
                fresh = {r[0] for r in await conn.fetch(_CLAIM_KEYS, keys)}
                rows = [row for row, key in zip(rows, keys, strict=True) if key in fresh]
                if not rows:
                    return 0
            ids = sorted(r[0] for r in await conn.fetch(_IDS, self._seq, len(rows)))
            dicts = [dict(zip(COLUMNS, row, strict=True)) for row in rows]
            for d in dicts:
                cap(d, INDEXED_BYTES, columns=INDEXED_TEXT)
            turns, clients = await self._turns(conn, dicts)
            blobs: dict[str, str] = {}
            values = [
                prepare(d, row_id, blobs, turns, self.policies.of(d), self.max_body)
                for row_id, d in zip(ids, dicts, strict=True)
            ]
            if clients:
                saved = [(digest, turns.last(client)) for client, digest in clients.items()]
                await conn.execute(
                    _SAVE_TURNS,
                    [d for d, last in saved if last], [last[0] for _, last in saved if last],
                    [orjson.dumps(list(last[1])).decode() for _, last in saved if last],
                )  # fmt: skip
            if blobs:
                await conn.execute(INSERT_BLOBS, list(blobs), [text(v) for v in blobs.values()])
                # The rows' trigger counts references in the blobs it names; taken here in
                # hash order, two writers naming the same blobs (Home Assistant's system
                # prompt, on every proxy) wait for each other instead of deadlocking.
                await conn.execute(_LOCK_BLOBS, list(blobs))
            await conn.execute(plan.sql, *plan.arrays(values))
        self._stored = [(v[0], v[_TURN]) for v in values]
        return len(rows)

    async def _turns(self, conn: Any, dicts: list[dict[str, Any]]) -> tuple[TurnTracker, dict[Any, str]]:
        """What the batch's clients' turns were, as every writer left them; locked until commit."""
        tracker = TurnTracker()
        clients = {}
        for d in dicts:
            client = client_of(d)
            if client is not None:
                clients[client] = _digest(client)
        if clients:
            digests = sorted(set(clients.values()))
            await conn.execute(_LOCK_CLIENTS, digests)
            found = {r[0]: (r[1], tuple(orjson.loads(r[2]))) for r in await conn.fetch(_READ_TURNS, digests)}
            for client, digest in clients.items():
                if digest in found:
                    turn_id, keys = found[digest]
                    tracker.record(client, keys, turn_id)
        return tracker, clients

    def redacted(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """A row (in COLUMNS order) with its texts as a stored copy would have them."""
        return self.policies.redacted(row)

    async def _to_spool(self, rows: Sequence[tuple[Any, ...]]) -> None:
        try:
            # The spool is a file on disk too: it holds rows as the database would.
            await self.spool.append([self.policies.redacted(row) for row in rows])
        except Exception as exc:
            self.spool_failing = f"the spool {self.spool.path} cannot be written: {describe(exc)}"
            raise OSError(self.spool_failing) from exc  # transient: the writer keeps the rows and retries
        self.spool_failing = None
        self._drained.clear()
        self._wake.set()

    def _went_down(self, exc: BaseException) -> None:
        """Note that the server does not take writes; the spool task reconnects."""
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
        self.failing = describe(exc)
        if self.down_since is None:
            self.down_since = time.time()
            log.error(
                "audit trail: PostgreSQL %s does not take writes (%s); rows wait in the spool %s until then",
                self.path, self.failing, self.spool.path,
            )  # fmt: skip
        self._wake.set()

    # -- the spool -----------------------------------------------------------------

    async def _drain(self) -> None:
        """Reconnect while the server is away; send spooled rows, oldest first, once it answers."""
        attempt = 0
        while True:
            if self._conn is not None and not self.spool.count:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                if self._conn is None:
                    await self._connect()
                    attempt = 0
                await self._send_spooled()
            except Exception as exc:
                if not transient(exc):
                    log.error("audit spool: %s", describe(exc))
                elif self._conn is not None:
                    self._went_down(exc)
                else:
                    self.failing = describe(exc)
                await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
                attempt += 1

    async def _send_spooled(self) -> None:
        """Send one batch of the spool (under the lock: no new row overtakes it)."""
        async with self.lock:
            batch = await self.spool.oldest(SPOOL_BATCH)
            if not batch:
                self.spool.count = 0
                self._drained.set()
                return
            try:
                sent = await self._write_retrying([row for _, _, row in batch], [key for _, key, _ in batch])
            except Exception as exc:
                if transient(exc):
                    raise
                sent = await self._send_one_by_one(batch)
            await self.spool.remove([seq for seq, _, _ in batch])
            self.sent_from_spool += sent
            if not self.spool.count:
                self._drained.set()
                log.warning("audit spool sent: every spooled row is in %s", self.path)

    async def _send_one_by_one(self, batch: list[tuple[int, str, tuple[Any, ...]]]) -> int:
        """A spooled batch refused for its rows: each row alone, a refused one reduced to its metadata."""
        sent = 0
        for _, key, row in batch:
            try:
                sent += await self._write_retrying([row], [key])
            except Exception as exc:
                if transient(exc):
                    raise
                log.error("audit row refused (%s); storing its metadata only", describe(exc))
                try:
                    sent += await self._write_retrying([reduced_row(row, describe(exc))], [key])
                except Exception as again:
                    if transient(again):
                        raise
                    log.error("audit row lost (%s): %r", describe(again), row[:3])
        return sent

    # -- what the writer and the probes ask ------------------------------------------

    async def follow(self) -> None:
        """The idle writer's check: does the server still answer? (At most every PING_EVERY seconds.)"""
        if self._conn is None or self.lock.locked() or time.monotonic() - self._pinged < PING_EVERY:
            return
        async with self.lock:
            if self._conn is None:
                return
            self._pinged = time.monotonic()
            try:
                await self._conn.fetchval("SELECT 1", timeout=CONNECT_TIMEOUT)
                if self._pinged - self._forgot > FORGET_EVERY:  # idle now: tidy the bookkeeping
                    self._forgot = self._pinged
                    await self._conn.execute(_FORGET_KEYS)
                    await self._conn.execute(_FORGET_CLIENTS)
            except Exception as exc:
                if transient(exc):
                    self._went_down(exc)

    async def select(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a query (``?`` placeholders, the SQL both dialects share) on the writer's connection."""
        async with self.lock:
            if self._conn is None:
                raise Unavailable(f"not connected to {self.path}")
            return [tuple(r.values()) for r in await self._conn.fetch(placeholders(sql), *params)]

    async def rollback(self) -> None:
        """Nothing to do: a failed transaction was rolled back when it failed."""

    async def writable(self, wait: float = 2.0) -> str | None:
        """``None`` while every row is kept (in the server or the spool), else why not."""
        return self.spool_failing

    def degraded(self) -> str | None:
        """What /health/ready says while rows wait in the spool; None when the server takes them."""
        if self._conn is not None and not self.spool.count:
            return None
        if self._conn is None:
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.down_since or time.time()))
            return (
                f"spooling: PostgreSQL {self.path} does not take writes since {since} ({self.failing}); "
                f"{self.spool.count} rows wait in {self.spool.path}, sent when it answers"
            )
        return f"sending {self.spool.count} spooled rows from {self.spool.path} to {self.path}"

    async def retain(self, before: str, batch: int) -> int:
        """Delete rows older than ``before`` (a timestamp), ``batch`` at a time; the rows deleted."""
        deleted = 0
        when = datetime.fromisoformat(before)
        while True:
            async with self.lock:
                if self._conn is None:
                    raise Unavailable(f"not connected to {self.path}")
                n = _affected(await self._conn.execute(DELETE_OLDER, when, batch))
            deleted += n
            if not n:
                return deleted
