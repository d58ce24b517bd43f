"""``llm-proxy migrate --to postgresql://…``: the copy's progress bar and its counts."""

from __future__ import annotations

import sys
import time

from ..audit import pg_import
from ..audit.dburl import is_postgres, masked
from ..errors import AuditError

BAR = 30  # characters of the progress bar


class ProgressBar:
    """``copying [#####-----] 1,500/3,000 rows  50%`` on stderr (on a terminal; else a line a tenth)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.shown = -1
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        share = done / total if total else 1.0
        tenth = int(share * 10)
        now = time.monotonic()
        if self.tty:
            if done < total and now - self.last < 0.1:
                return
            self.last = now
            filled = int(share * BAR)
            end = "\n" if done >= total else ""
            line = f"copying [{'#' * filled}{'-' * (BAR - filled)}] {done:,}/{total:,} rows {share:4.0%}"
            print(f"\r{line}", end=end, file=sys.stderr, flush=True)
        elif tenth != self.shown:
            self.shown = tenth
            print(f"copying: {done:,}/{total:,} rows ({share:.0%})", file=sys.stderr, flush=True)


def copy_trail(path: str, url: str) -> int:
    """Copy, print the counts on both sides; 0 when every row of the file is in PostgreSQL."""
    if not is_postgres(url):
        raise AuditError(f"--to wants a postgresql:// URL, got {masked(url)!r}")
    shown = masked(url)
    print(f"copying {path} into {shown}", file=sys.stderr)
    try:
        result = pg_import.copy(path, url, ProgressBar())
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to carry on where it stopped", file=sys.stderr)
        return 130
    if result.resumed and result.this_run < result.copied:
        print(f"carried on from an earlier run: {result.copied - result.this_run:,} rows were there already")
    print(f"{path}: {result.source_rows:,} rows")
    print(f"{shown}: {result.copied:,} rows copied from it ({result.this_run:,} in this run), "
          f"{result.target_rows:,} rows in all")  # fmt: skip
    if result.id_offset:
        print(f"ids were taken: copied ids (and turn ids) are the file's plus {result.id_offset:,}")
    return 0 if result.copied == result.source_rows else 1
