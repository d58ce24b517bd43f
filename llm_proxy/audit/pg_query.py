"""Reading (and pruning) a trail in PostgreSQL: :mod:`.query`'s SQL, PostgreSQL's dialect, asyncpg.

The commands are synchronous; asyncpg is not. A reader runs its own event loop
on a thread of its own and hands it one coroutine at a time, so it works the
same from a plain command line and from code that already runs a loop. It reads
in one read-only REPEATABLE READ transaction: an export sees one moment of the
trail, however long it takes, while the proxies go on writing. Rows come in
batches from a server-side cursor, so memory stays flat on any size of table.

Values are shown as SQLite shows them (the timestamp as its text, booleans as
0/1), so ``logs --json`` prints the same lines from either store.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Coroutine, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

from ..errors import AuditError
from . import pg_migrate
from .dburl import asyncpg, masked, remember_secret
from .pg_errors import describe
from .pg_store import DELETE_OLDER
from .pg_values import placeholders
from .query import Dialect, Reader, _Where
from .retention import BATCH, Pruned
from .when import stamp

T = TypeVar("T")
FETCH = 500  # rows per round trip from the cursor
SEARCH = "logs_search(logs.prompt, logs.response)"  # the expression migrations/postgresql/0002 indexes

_COLUMNS = (
    "SELECT column_name FROM information_schema.columns "
    "WHERE table_schema = current_schema() AND table_name = 'logs' ORDER BY ordinal_position"
)
_NAMES = (
    "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace "
    "UNION SELECT proname FROM pg_proc WHERE pronamespace = current_schema()::regnamespace"
)
_SIZE = "SELECT pg_total_relation_size('logs') + coalesce(pg_total_relation_size(to_regclass('blobs')), 0)"


class PgDialect(Dialect):
    """PostgreSQL's SQL where it differs: tsvector search, times as times."""

    name = "postgresql"
    search_table = "logs_search"

    def time(self, when: datetime) -> Any:
        return when

    def search(self, w: _Where, text: str) -> None:
        if not text.split():
            raise AuditError("the search text is empty")
        # plainto_tsquery: every word must occur, punctuation is no syntax (as FTS5 with quoted words).
        w.add(f"{SEARCH} @@ plainto_tsquery('simple', ?)", words(text))

    def search_source(self) -> str:
        return "logs"

    def rank(self, text: str) -> tuple[str, list[Any]]:
        return f"ts_rank({SEARCH}, plainto_tsquery('simple', ?)) DESC, logs.id DESC", [words(text)]


def words(text: str) -> str:
    """The words of a search, split where FTS5's tokenizer splits them (``kitchen-light``: two words)."""
    return " ".join(re.findall(r"\w+", text))


class Loop:
    """An event loop on a thread of its own, running one coroutine at a time for synchronous callers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="audit-pg-read", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        """End the thread (again: nothing)."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def _as_sqlite(value: Any) -> Any:
    if isinstance(value, datetime):
        return stamp(value)
    if isinstance(value, bool):
        return int(value)
    return value


def connect(url: str, runner: Loop) -> Any:
    """An asyncpg connection made on ``runner``'s loop; AuditError naming the masked URL if not."""
    pg = asyncpg()
    remember_secret(url)
    try:
        return runner.run(pg.connect(url, timeout=10))
    except Exception as exc:
        runner.stop()
        raise AuditError(f"cannot connect to {masked(url)}: {describe(exc)}") from None


class PgReader(Reader):
    """A read-only transaction on a PostgreSQL audit database."""

    dialect = PgDialect()

    def __init__(self, conn: Any, tables: set[str], columns: list[str], runner: Loop, url: str) -> None:
        super().__init__(conn, tables, columns)
        self.runner = runner
        self.url = url

    @classmethod
    def open(cls, url: str) -> PgReader:
        """Connect and start the read-only transaction; AuditError naming the (masked) URL if not."""
        runner = Loop()
        conn = connect(url, runner)
        try:
            runner.run(conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            names = {r[0] for r in runner.run(conn.fetch(_NAMES))}
            if "logs" not in names:
                raise AuditError(f"{masked(url)} has no logs table: is it an llm-proxy database?")
            columns = [r[0] for r in runner.run(conn.fetch(_COLUMNS))]
        except BaseException:
            runner.run(conn.close())
            runner.stop()
            raise
        return cls(conn, names, columns, runner, url)

    def close(self) -> None:
        try:
            self.runner.run(self.conn.close())
        finally:
            self.runner.stop()

    async def _cursor(self, sql: str, params: Sequence[Any]) -> Any:
        return await self.conn.cursor(sql, *params)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        try:
            cursor = self.runner.run(self._cursor(placeholders(sql), params))
            while batch := self.runner.run(cursor.fetch(FETCH)):
                for record in batch:
                    yield tuple(_as_sqlite(v) for v in record.values())
        except AuditError:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("asyncpg"):
                raise AuditError(f"cannot read {masked(self.url)}: {describe(exc)}") from None
            raise


def migrate(url: str) -> list[str]:
    """Apply pending migrations to the PostgreSQL database at ``url`` (``llm-proxy migrate --db``)."""
    runner = Loop()
    conn = connect(url, runner)
    try:
        return runner.run(pg_migrate.migrate(conn))
    except Exception as exc:
        raise AuditError(f"cannot migrate {masked(url)}: {describe(exc)}") from None
    finally:
        runner.run(conn.close())
        runner.stop()


def prune(url: str, before: str | None, dry_run: bool = False) -> Pruned:
    """Delete rows older than ``before`` in batches, then VACUUM (the space is reused, not returned)."""
    runner = Loop()
    conn = connect(url, runner)
    try:
        return runner.run(_prune(conn, before, dry_run))
    except AuditError:
        raise
    except Exception as exc:
        raise AuditError(f"cannot prune {masked(url)}: {describe(exc)}") from None
    finally:
        runner.run(conn.close())
        runner.stop()


async def _prune(conn: Any, before: str | None, dry_run: bool) -> Pruned:
    size_before = int(await conn.fetchval(_SIZE))
    when = datetime.fromisoformat(before) if before else None
    if dry_run:
        n = await conn.fetchval("SELECT count(*) FROM logs WHERE timestamp < $1", when) if when else 0
        return Pruned(int(n), size_before, size_before)
    await pg_migrate.migrate(conn)
    deleted = 0
    while when is not None:
        status = await conn.execute(DELETE_OLDER, when, BATCH)
        n = int(status.rpartition(" ")[2])
        deleted += n
        if not n:
            break
    if deleted:
        await conn.execute("VACUUM (ANALYZE) logs, blobs")
    return Pruned(deleted, size_before, int(await conn.fetchval(_SIZE)))
