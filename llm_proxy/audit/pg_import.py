"""``llm-proxy migrate --to postgresql://…``: copy a SQLite trail into PostgreSQL, resumably.

Rows are copied oldest first, :data:`BATCH` per transaction, together with the
blobs their recipes name; the same transaction records in ``_imports`` how far
the copy got, so an interrupted copy (Ctrl-C, a lost connection) carries on
after the last batch that committed, and no row is copied twice. The SQLite
file is only read.

Ids: when the database holds no row with an id the file's rows would take,
the ids are kept (``logs --turn 42`` means the same turn on both sides);
otherwise every copied id and turn id is shifted past the largest id in use.
Either way the id sequence is moved past the copied rows, under the advisory
lock the proxies' writers share while they take ids, so proxies may keep
writing into the database during the copy.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..errors import AuditError
from . import pg_migrate, query
from .compact import blob_names
from .dburl import masked
from .pg_errors import describe
from .pg_query import Loop, connect
from .pg_values import COLUMN_TYPES, INSERT_BLOBS

BATCH = 500  # rows per transaction
Progress = Callable[[int, int], None]  # (rows copied so far, rows to copy in all)


@dataclass(frozen=True, slots=True)
class Copied:
    """What a copy found and did."""

    source_rows: int  # rows in the SQLite file
    copied: int  # rows this copy (all its runs) put into PostgreSQL
    this_run: int  # rows this run copied
    target_rows: int  # rows in PostgreSQL's logs now
    id_offset: int  # added to every copied id (0: the ids were kept)
    resumed: bool  # whether an earlier run had started it


def copy(path: str, url: str, progress: Progress | None = None) -> Copied:
    """Copy the trail in the SQLite file at ``path`` into the PostgreSQL database at ``url``.

    The batches are read here and sent on the reader's loop thread; ``progress``
    runs here after each batch committed (a KeyboardInterrupt there, or a
    Ctrl-C, stops the copy with every committed batch recorded).
    """
    source = _open_source(path)
    runner = Loop()
    try:
        conn = connect(url, runner)
        try:
            return _copy(source, conn, runner, os.path.abspath(path), progress)
        except (AuditError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise AuditError(f"cannot copy into {masked(url)}: {describe(exc)}") from None
        finally:
            runner.run(conn.close())
    finally:
        runner.stop()
        source.close()


def _open_source(path: str) -> sqlite3.Connection:
    """The SQLite trail to copy, read-only, checked as every audit command checks it."""
    if not os.path.exists(path):
        raise AuditError(f"no database at {path} to copy (use --db PATH or --config)")
    return query.connect(path).conn


@dataclass
class _Plan:
    key: str
    columns: list[str]
    insert: str
    convert: list[Callable[[Any], Any]]
    shift: list[bool]
    offset: int
    last_id: int
    copied: int
    resumed: bool


def _copy(
    source: sqlite3.Connection, conn: Any, runner: Loop, path: str, progress: Progress | None
) -> Copied:
    columns = [r[1] for r in source.execute("PRAGMA table_info(logs)")]
    low, high, total = source.execute("SELECT min(id), max(id), count(*) FROM logs").fetchone()
    first = source.execute("SELECT timestamp FROM logs ORDER BY id LIMIT 1").fetchone()
    key = f"{path} ({first[0] if first else 'empty'})"
    plan = runner.run(_begin(conn, key, columns, low or 0, high or 0))
    has_blobs = bool(source.execute("SELECT 1 FROM sqlite_master WHERE name = 'blobs'").fetchone())
    parts = [i for i, c in enumerate(columns) if c in ("request_parts", "backend_request_parts")]
    id_at = columns.index("id")
    done_before = plan.copied
    this_run = 0
    if progress:
        progress(plan.copied, total)
    select = f"SELECT {', '.join(columns)} FROM logs WHERE id > ? ORDER BY id LIMIT ?"
    while rows := source.execute(select, (plan.last_id, BATCH)).fetchall():
        values = [
            [_value(v, f, s, plan.offset) for v, f, s in zip(row, plan.convert, plan.shift, strict=True)]
            for row in rows
        ]
        blobs = _blobs(source, rows, parts) if has_blobs else {}
        runner.run(_send(conn, plan, values, blobs, rows[-1][id_at]))
        plan.last_id = rows[-1][id_at]
        plan.copied += len(rows)
        this_run += len(rows)
        if progress:
            progress(plan.copied, total)
    target = runner.run(_finish(conn, key))
    return Copied(total, done_before + this_run, this_run, target, plan.offset, plan.resumed)


async def _begin(conn: Any, key: str, columns: list[str], low: int, high: int) -> _Plan:
    await pg_migrate.migrate(conn)
    types = {r[0]: r[1] for r in await conn.fetch(COLUMN_TYPES)}
    unknown = [c for c in columns if c not in types]
    if unknown:
        raise AuditError(f"the PostgreSQL logs table has no columns {', '.join(unknown)}: is it older?")
    offset, last_id, copied, resumed = await _start(conn, key, low, high)
    names = ", ".join(f'"{c}"' for c in columns)
    arrays = ", ".join(f"${i}::{types[c]}[]" for i, c in enumerate(columns, 1))
    return _Plan(
        key, columns, f"INSERT INTO logs ({names}) SELECT * FROM unnest({arrays})",
        [_converter(types[c]) for c in columns], [c in ("id", "turn_id") for c in columns],
        offset, last_id, copied, resumed,
    )  # fmt: skip


async def _send(conn: Any, plan: _Plan, values: list[list[Any]], blobs: dict[str, str], last_id: int) -> None:
    """One batch, its blobs and the record of how far the copy got, in one transaction."""
    async with conn.transaction():
        if blobs:
            await conn.execute(INSERT_BLOBS, sorted(blobs), [blobs[k] for k in sorted(blobs)])
        await conn.execute(plan.insert, *[list(col) for col in zip(*values, strict=True)])
        await conn.execute(_ADVANCE, plan.key, last_id, len(values))


async def _finish(conn: Any, key: str) -> int:
    await conn.execute("UPDATE _imports SET finished_at = now() WHERE source = $1", key)
    return int(await conn.fetchval("SELECT count(*) FROM logs"))


_ADVANCE = "UPDATE _imports SET last_id = $2, rows = rows + $3 WHERE source = $1"


async def _start(conn: Any, key: str, low: int, high: int) -> tuple[int, int, int, bool]:
    """The copy's offset, last id copied and rows copied: an earlier run's, or a new start's."""
    async with conn.transaction():
        # Alone: no writer takes ids while the block of the copied ids is chosen.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", pg_migrate.IMPORT_LOCK)
        found = await conn.fetchrow("SELECT id_offset, last_id, rows FROM _imports WHERE source = $1", key)
        if found is not None:
            return int(found[0]), int(found[1]), int(found[2]), True
        seq = await conn.fetchval("SELECT pg_get_serial_sequence('logs', 'id')")
        # The largest id in use or handed out (pg_get_serial_sequence names the sequence, quoted).
        used = int(
            await conn.fetchval(
                "SELECT greatest(coalesce((SELECT max(id) FROM logs), 0), "
                f"(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {seq}))"
            )
        )
        offset = 0 if used < low else used - low + 1
        if high:
            await conn.execute("SELECT setval($1::regclass, $2)", seq, max(high + offset, used, 1))
        await conn.execute(
            "INSERT INTO _imports (source, id_offset, last_id) VALUES ($1, $2, $3)", key, offset, low - 1
        )
    return offset, low - 1, 0, False


def _blobs(source: sqlite3.Connection, rows: list[tuple[Any, ...]], parts: list[int]) -> dict[str, str]:
    names = {name for row in rows for i in parts if row[i] for name in blob_names(row[i])}
    found: dict[str, str] = {}
    for name in names:
        hit = source.execute("SELECT data FROM blobs WHERE hash = ?", (name,)).fetchone()
        if hit is not None:
            found[name] = _text(hit[0]) or ""
    return found


def _value(value: Any, convert: Callable[[Any], Any], shifted: bool, offset: int) -> Any:
    """One value as PostgreSQL takes it; an id or turn id moved by ``offset``."""
    if shifted:
        return None if value is None else int(value) + offset
    return convert(value)


def _converter(sql_type: str) -> Callable[[Any], Any]:
    if sql_type.startswith("timestamp"):
        return _when
    if sql_type == "boolean":
        return lambda v: None if v is None else bool(v)
    if sql_type in ("bigint", "integer", "smallint"):
        return lambda v: v if v is None or type(v) is int else _integer(v)
    return _text


def _when(value: Any) -> datetime:
    text = str(value).strip()
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AuditError(f"a timestamp that is not a time: {text!r}") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def _integer(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text.replace("\x00", "\ufffd") if "\x00" in text else text
