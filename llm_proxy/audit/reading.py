"""Opening an audit trail to read: a SQLite file (:mod:`.query`) or a PostgreSQL URL (:mod:`.pg_query`)."""

from __future__ import annotations

from .dburl import is_postgres
from .pg_query import PgReader
from .query import Reader
from .query import connect as connect_file


def connect(target: str) -> Reader:
    """A read-only :class:`~.query.Reader` on ``target``; AuditError with one clear line if it cannot be."""
    if is_postgres(target):
        return PgReader.open(target)
    return connect_file(target)
