"""Where the audit trail lives (a SQLite file or a ``postgresql://`` URL); the URL's password unseen.

The URL's password is a credential: it is never printed. :func:`masked` is the
URL as it may be shown (``postgresql://user:***@host:5432/db``); every URL the
proxy opens is registered with :func:`remember_secret`, and :class:`MaskSecrets`
(on every log handler, and :func:`redact` on every error the proxy prints)
replaces its password wherever it still appears.
"""

from __future__ import annotations

import logging
import threading
from types import ModuleType
from urllib.parse import unquote, urlsplit, urlunsplit

from ..errors import AuditError

SCHEMES = ("postgresql://", "postgres://")
EXTRA = "pip install 'llm-proxy[postgresql]'"
MASK = "***"

_secrets: set[str] = set()
_lock = threading.Lock()


def is_postgres(target: str | None) -> bool:
    """Whether ``target`` (``database.url``, ``--db``, ``--to``) names a PostgreSQL database."""
    return bool(target) and str(target).startswith(SCHEMES)


def masked(url: str) -> str:
    """``url`` with its password replaced by ``***`` (the form every message shows)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return MASK  # a URL that cannot be parsed may hide its password anywhere
    if password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def remember_secret(url: str) -> None:
    """Register the password of ``url`` so that no log line or printed error can show it."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return
    if password:
        with _lock:
            _secrets.update({password, unquote(password)})


def redact(text: str) -> str:
    """``text`` with every registered password replaced by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class MaskSecrets(logging.Filter):
    """A handler filter: the record's message with every registered password masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            message = record.getMessage()
            clean = redact(message)
            if clean != message:
                record.msg, record.args = clean, None
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def asyncpg() -> ModuleType:
    """The asyncpg module; AuditError naming the extra to install when it is missing."""
    try:
        import asyncpg as module  # optional: imported where it is needed
    except ImportError:
        raise AuditError(
            f"PostgreSQL support is not installed: {EXTRA} (it adds the asyncpg driver)"
        ) from None
    return module
