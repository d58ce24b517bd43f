"""systemd's readiness protocol (sd_notify): plain datagrams to ``$NOTIFY_SOCKET``.

The protocol is a few ``KEY=value`` lines per datagram on an ``AF_UNIX``
``SOCK_DGRAM`` socket (https://www.freedesktop.org/software/systemd/man/sd_notify.html);
writing it here is shorter than any dependency. A leading ``@`` in the address
means Linux's abstract namespace. Without ``$NOTIFY_SOCKET`` (not run by systemd)
every method does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping

from aiohttp import web

log = logging.getLogger("llm_proxy")


class Notifier:
    """Sends state changes to systemd, when systemd is listening."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address or None
        # Seconds within which systemd wants a WATCHDOG=1, or None for no watchdog.
        self.watchdog = watchdog_usec / 1_000_000 if watchdog_usec else None
        self._failing = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """The notifier systemd's environment variables describe."""
        usec: int | None = None
        raw = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process the watchdog is meant for; a child that
        # inherited the variables must not ping on its parent's behalf.
        if raw.isdigit() and int(raw) > 0 and (not pid or pid == str(os.getpid())):
            usec = int(raw)
        return cls(environ.get("NOTIFY_SOCKET"), usec)

    def send(self, *lines: str) -> bool:
        """Send one datagram of ``KEY=value`` lines; False when nobody listens or it failed."""
        if self.address is None:
            return False
        address = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        message = "\n".join(lines)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(address)
                sock.sendall(message.encode())
        except OSError as exc:
            # systemd gone or the socket not ours to write: serving matters more.
            # Said once per outage, not at every watchdog ping.
            if not self._failing:
                log.warning("cannot notify systemd at %s: %s", self.address, exc)
                self._failing = True
            return False
        if self._failing:
            log.info("notifying systemd at %s works again", self.address)
            self._failing = False
        return True

    def ready(self, status: str = "") -> bool:
        """READY=1: the port is bound and the database migrated."""
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> bool:
        """STOPPING=1: shutdown has begun."""
        return self.send("STOPPING=1", "STATUS=shutting down")

    def ping(self) -> bool:
        """WATCHDOG=1: the event loop is alive."""
        return self.send("WATCHDOG=1")


NOTIFIER = web.AppKey("notifier", Notifier)


def setup(app: web.Application, notifier: Notifier) -> None:
    """Announce shutdown and keep the watchdog fed for ``app``'s lifetime."""
    app[NOTIFIER] = notifier
    app.on_shutdown.append(_stopping)
    app.cleanup_ctx.append(_watchdog)


async def _stopping(app: web.Application) -> None:
    app[NOTIFIER].stopping()


async def _watchdog(app: web.Application) -> AsyncIterator[None]:
    notifier = app[NOTIFIER]
    task = None
    if notifier.address is not None and notifier.watchdog is not None:
        task = asyncio.create_task(_feed(notifier, notifier.watchdog / 2), name="sd-watchdog")
    try:
        yield
    finally:
        if task is not None:
            task.cancel()


async def _feed(notifier: Notifier, every: float) -> None:
    """Ping at half the watchdog interval, as sd_watchdog_enabled(3) advises."""
    while True:
        notifier.ping()
        await asyncio.sleep(every)
