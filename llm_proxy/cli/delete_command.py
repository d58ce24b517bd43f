"""``llm-proxy logs delete``: remove exchanges for good, after saying how many and asking.

The selection is the filters of ``logs`` (``--model``, ``--turn``, ``--key``,
``-q``, ``--since``/``--until``…), ids given by number, and ``--older-than``.
Deleting needs at least one of them: there is no "delete everything" by
accident. audit/deletion.py does the work.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ..audit import query
from ..audit.dburl import is_postgres, masked
from ..audit.deletion import Deletion, Selection
from ..audit.when import parse_age
from ..config import Config
from ..errors import AuditError

FilterArgs = Callable[[argparse.ArgumentParser], None]
FiltersFrom = Callable[[argparse.Namespace], query.Filters]


def register(
    sub: Any, common: FilterArgs, filters: FilterArgs, filters_from: FiltersFrom, path: Callable[..., str]
) -> argparse.ArgumentParser:
    """Add ``logs delete`` to the ``logs`` sub-parsers; the helpers are audit_commands' own."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "delete",
        help="delete exchanges for good: rows, search entries and unshared blobs",
        description="Delete the matching exchanges: their rows, their full-text entries and the "
        "stored pieces no other row uses; then merge the search index, VACUUM and checkpoint, so "
        "the text is no longer in the database, its WAL or its search index. Says how many match "
        "and asks first (--yes for scripts). Safe while the proxy runs.",
        epilog="Examples: llm-proxy logs delete 17 18 ; llm-proxy logs delete --turn 12 ; "
        "llm-proxy logs delete -q 'my password' --yes ; llm-proxy logs delete --key laptop --older-than 30d",
    )
    common(parser)
    parser.add_argument("ids", type=int, nargs="*", metavar="ID", help="exchanges to delete, by id")
    filters(parser)
    parser.add_argument("--older-than", metavar="AGE", help="only exchanges older than an age such as 30d")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask (for scripts)")
    parser.add_argument("--dry-run", action="store_true", help="say how many match, delete nothing")
    parser.add_argument(
        "--no-vacuum", action="store_true",
        help="skip VACUUM (for a huge file; freed pages are still overwritten with zeros, not given back)",
    )  # fmt: skip
    parser.set_defaults(run=lambda args, config: _delete(args, config, filters_from, path))
    return parser


def _delete(
    args: argparse.Namespace, config: Config, filters_from: FiltersFrom, path_of: Callable[..., str]
) -> int:
    path = path_of(args, config)
    if is_postgres(path):
        raise AuditError(
            f"logs delete works on SQLite files; {masked(path)} is PostgreSQL, where DELETE FROM logs "
            "WHERE ... (its triggers drop search entries and unshared blobs) and VACUUM do the same"
        )
    f = filters_from(args)
    if args.older_than:
        try:
            cut = datetime.now(UTC) - parse_age(args.older_than)
        except ValueError as exc:
            raise AuditError(f"--older-than: {exc}") from None
        f.until = min(f.until, cut) if f.until else cut
    if f == query.Filters():
        raise AuditError(
            "say what to delete: ids, or filters such as --turn, --key, --model, -q, --older-than "
            "(see llm-proxy logs delete --help)"
        )
    if not os.path.exists(path):
        raise AuditError(f"no database at {path} (nothing to delete; use --db PATH or --config)")
    try:
        deletion = Deletion(path)
    except sqlite3.Error as exc:
        raise AuditError(f"cannot open {path}: {exc}") from None
    try:
        tables = {r[0] for r in deletion.conn.execute("SELECT name FROM sqlite_master")}
        reader = query.Reader(deletion.conn, tables)
        chosen = deletion.choose(reader.ids(f))
        print(_describe(chosen))
        if not chosen.count or args.dry_run:
            return 0
        if not args.yes and not _confirm(chosen.count):
            print("nothing deleted")
            return 1
        done = deletion.run(vacuum=not args.no_vacuum)
    except sqlite3.Error as exc:
        raise AuditError(f"cannot delete from {path}: {exc}") from None
    finally:
        deletion.close()
    wal = "WAL emptied" if done.wal_emptied else "the WAL is in use and empties at the next checkpoint"
    print(
        f"deleted {done.rows} exchanges and {done.blobs} stored pieces no other row used; search index "
        f"merged; {path}: {done.bytes_before / 1048576:.2f} MB → {done.bytes_after / 1048576:.2f} MB; {wal}"
    )
    return 0


def _describe(s: Selection) -> str:
    if not s.count:
        return "no exchange matches"
    what = "1 exchange matches" if s.count == 1 else f"{s.count} exchanges match"
    if s.count == 1:
        return f"{what}: id {s.first_id}, {s.first_time}"
    return f"{what}: ids {s.first_id} to {s.last_id}, {s.first_time} to {s.last_time}"


def _confirm(count: int) -> bool:
    """Ask on stdin (a terminal, or a line piped in); no answer at all is a no."""
    sys.stdout.write(f"delete {'it' if count == 1 else f'these {count}'} for good? [y/N] ")
    sys.stdout.flush()
    answer = sys.stdin.readline()
    if not answer:
        print()
        raise AuditError("not deleting without an answer: stdin is closed (add --yes for scripts)")
    return answer.strip().lower() in ("y", "yes")
