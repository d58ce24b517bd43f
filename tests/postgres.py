"""A real PostgreSQL server for the tests: Debian's binaries, a temporary cluster, 127.0.0.1 only.

``initdb`` and ``pg_ctl`` run as an unprivileged system user (PostgreSQL refuses
to run as root, and CI runs as root): ``llmproxy-pg``, created with ``useradd``
when missing. Not root, they run as whoever runs the tests. The cluster listens
on a free port of 127.0.0.1 only, with password authentication, so the URL the
tests use carries a password to mask. Each test gets a database of its own
(:meth:`PostgresServer.database`). Tests that take the server down (an outage)
call :meth:`stop` and :meth:`start`; the data directory stays.

``python -m tests.postgres`` starts one and prints its URL until Ctrl-C (for
trying the proxy by hand).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .process import free_port

USER = "llmproxy-pg"  # the system user the server runs as when the tests run as root
ROLE = "llmproxy"  # the database superuser the tests connect as
PASSWORD = "pg-s3cret-9f2b7e"  # in the URL: a test checks it is never printed


def binaries() -> Path:
    """The folder holding initdb and pg_ctl: $PG_BIN, else the newest /usr/lib/postgresql/*/bin."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if found:
        return Path(found[-1])
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError(
        "PostgreSQL is not installed: apt-get install postgresql (tests/install.sh does), or set PG_BIN"
    )


def _runner() -> dict[str, Any]:
    """subprocess arguments that run a command as the unprivileged user (when we are root)."""
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
            check=True, capture_output=True,
        )  # fmt: skip
    entry = pwd.getpwnam(USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


@dataclass
class PostgresServer:
    """A PostgreSQL cluster in a temporary folder, on 127.0.0.1:``port``."""

    root: Path
    port: int
    bin: Path = field(default_factory=binaries)
    _as: dict[str, Any] = field(default_factory=_runner)
    _databases: int = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout,
            check=True, cwd=self.root, **self._as,
        )  # fmt: skip

    def init(self) -> None:
        if "user" in self._as:
            os.chown(self.root, self._as["user"], self._as["group"])
        os.chmod(self.root, 0o700)
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if "user" in self._as:
            os.chown(pwfile, self._as["user"], self._as["group"])
        self._run(
            "initdb", "-D", str(self.data), "-U", ROLE, "--auth=scram-sha-256", f"--pwfile={pwfile}",
            "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"  # a test cluster
                "max_connections = 60\nshared_buffers = 32MB\n"
            )

    def start(self) -> None:
        """Start the server (again) and wait until it accepts connections."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Stop it (fast: open connections are closed, as when a server goes down)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        done = subprocess.run(
            [str(self.bin / "pg_ctl"), "-D", str(self.data), "status"], capture_output=True, **self._as
        )
        return done.returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with psql, as a user would; its output, unaligned, tuples only."""
        done = subprocess.run(
            [str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql,
             self.url(database)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(f"psql failed: {done.stderr}")
        return done.stdout

    def database(self, template: str = "template1") -> str:
        """A new database (a copy of ``template``, an empty one by default); its URL."""
        self._databases += 1
        name = f"t{os.getpid()}_{self._databases}"
        self.psql(f"CREATE DATABASE {name} TEMPLATE {template}")
        return self.url(name)


@contextlib.contextmanager
def running() -> Iterator[PostgresServer]:
    """A fresh cluster, started; stopped and removed at the end."""
    root = Path(tempfile.mkdtemp(prefix="llmproxy-pg-"))
    server = PostgresServer(root, free_port())
    try:
        server.init()
        server.start()
        yield server
    except subprocess.CalledProcessError as exc:
        log = root / "log"
        raise RuntimeError(
            f"{exc.cmd[0]} failed: {exc.stderr}\n{log.read_text() if log.exists() else ''}"
        ) from None
    finally:
        if server.running():
            with contextlib.suppress(subprocess.SubprocessError):
                server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    with running() as pg:
        print(pg.database(), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
