"""Deleting exchanges so that their text is gone from the file, not only from the table.

A plain ``DELETE`` leaves the text behind in three places: in the freed pages
of the database file, in the WAL (until a checkpoint copies over it), and in
the full-text index, where FTS5 records a deletion as a tombstone beside the
old entries until its segments are merged. :func:`delete` therefore

1. selects the ids first (into a temporary table), so what is deleted is what
   was counted and confirmed, even while the proxy keeps writing;
2. deletes them in small transactions with ``secure_delete`` on (SQLite
   overwrites deleted content with zeros), the triggers of migrations 0002
   and 0003 removing their search entries and the blobs no other row names;
3. merges the search index into one segment (``optimize``), which drops the
   deleted entries for good;
4. runs ``VACUUM``, which writes the database anew without free pages, and
   checkpoints the WAL with ``TRUNCATE``, which empties it.

It runs on a connection of its own and is safe while the proxy runs: each
step takes SQLite's write lock briefly and the proxy's writer waits in its
busy timeout (``VACUUM`` of a large file takes longest).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .migrate import migrate

BATCH = 200  # rows per delete transaction
CHECKPOINT_TRIES = 20  # a checkpoint the proxy's writer is in the way of is tried again
CHECKPOINT_WAIT = 0.25  # seconds between tries


@dataclass(frozen=True)
class Selection:
    """What a delete would remove: the count and the span of ids and times."""

    count: int
    first_id: int | None = None
    last_id: int | None = None
    first_time: str | None = None
    last_time: str | None = None


@dataclass(frozen=True)
class Deleted:
    """What a delete did."""

    rows: int
    blobs: int
    bytes_before: int
    bytes_after: int
    wal_emptied: bool


class Deletion:
    """A connection with the doomed ids chosen; :meth:`run` deletes them."""

    def __init__(self, path: str) -> None:
        migrate(path)  # the triggers that free search entries and blobs come with the schema
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.conn.execute("PRAGMA busy_timeout=30000")
        self.conn.execute("PRAGMA secure_delete=ON")
        self.conn.execute("PRAGMA temp_store=MEMORY")
        self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS doomed (id INTEGER PRIMARY KEY)")

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def choose(self, ids: Iterable[int]) -> Selection:
        """Remember ``ids`` as what :meth:`run` deletes; returns the count and span."""
        self.conn.execute("DELETE FROM doomed")
        batch: list[tuple[int]] = []
        for row_id in ids:
            batch.append((row_id,))
            if len(batch) >= 1000:
                self.conn.executemany("INSERT OR IGNORE INTO doomed (id) VALUES (?)", batch)
                batch.clear()
        self.conn.executemany("INSERT OR IGNORE INTO doomed (id) VALUES (?)", batch)
        count, first, last = self.conn.execute("SELECT COUNT(*), MIN(id), MAX(id) FROM doomed").fetchone()
        if not count:
            return Selection(0)
        times = self.conn.execute(
            "SELECT MIN(timestamp), MAX(timestamp) FROM logs WHERE id IN (SELECT id FROM doomed)"
        ).fetchone()
        return Selection(count, first, last, times[0], times[1])

    def run(self, vacuum: bool = True, progress: Callable[[int], None] | None = None) -> Deleted:
        """Delete the chosen rows, their search entries and unshared blobs; then merge, vacuum, checkpoint."""
        conn = self.conn
        before = _file_bytes(self.path)
        blobs_before = conn.execute("SELECT COUNT(*) FROM blobs").fetchone()[0]
        rows = 0
        while True:
            ids = [r[0] for r in conn.execute("SELECT id FROM doomed ORDER BY id LIMIT ?", (BATCH,))]
            if not ids:
                break
            marks = ", ".join("?" * len(ids))
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(f"DELETE FROM logs WHERE id IN ({marks})", ids)
                rows += conn.execute("SELECT changes()").fetchone()[0]
                conn.execute(f"DELETE FROM doomed WHERE id IN ({marks})", ids)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if progress is not None:
                progress(rows)
        blobs = blobs_before - conn.execute("SELECT COUNT(*) FROM blobs").fetchone()[0]
        # Tombstones out, old segments freed (and zeroed by secure_delete).
        conn.execute("INSERT INTO logs_fts (logs_fts) VALUES ('optimize')")
        if vacuum:
            conn.execute("VACUUM")
        emptied = self._checkpoint()
        return Deleted(rows, blobs, before, _file_bytes(self.path), emptied)

    def _checkpoint(self) -> bool:
        """Copy the WAL into the database and empty it; False when a reader kept it from finishing."""
        for _ in range(CHECKPOINT_TRIES):
            busy, _log, _done = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return True
            time.sleep(CHECKPOINT_WAIT)
        return False


def _file_bytes(path: str) -> int:
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.path.getsize(path + suffix)
    return total
