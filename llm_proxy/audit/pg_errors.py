"""What a PostgreSQL error means to the audit writer: the server's trouble, or the rows'.

Shared by the writer (``pg_store``), the readers (``pg_query``, the web UI's
``pg_reader``), the copy (``pg_import``) and retention, which all name errors
the same way: one line, the password masked.
"""

from __future__ import annotations

from .dburl import redact

# SQLSTATE classes that are the server's trouble, not the rows': connection
# exceptions, insufficient resources, operator intervention (shutdown), system
# errors, transaction rollbacks (deadlock, serialization). Others (data
# exceptions, constraint violations) are the rows' and make the writer split.
# https://www.postgresql.org/docs/current/errcodes-appendix.html
_TRANSIENT_CLASSES = frozenset({"08", "53", "57", "58", "40"})
_TRANSIENT_CODES = frozenset({"55P03", "55006"})  # lock not available, object in use
RETRY_AT_ONCE = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure


def transient(exc: BaseException) -> bool:
    """Whether a failed write is the server's trouble (spool, retry) rather than its rows' (split them)."""
    if isinstance(exc, (OSError, TimeoutError, MemoryError, Unavailable)):
        return True
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str):
        return state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_CODES
    name = type(exc).__name__
    if name in ("InterfaceError", "InternalClientError") and "closed" in str(exc):
        return True  # asyncpg: the connection went away under the statement
    return name in ("ConnectionDoesNotExistError", "ConnectionResetError")


def describe(exc: BaseException) -> str:
    """One line naming an error, with any password masked."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return redact(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


class Unavailable(ConnectionError):
    """No connection to the server now (it is being reopened)."""
