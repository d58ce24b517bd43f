"""The command line: ``llm-proxy [serve|migrate|logs|stats|prune] ...``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sqlite3
import sys
from collections.abc import Sequence

from .. import __version__
from .. import config as config_mod
from ..audit.migrate import migrate
from ..config import Config
from ..errors import AuditError, ConfigError
from . import PROG, audit_commands, demo


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="An Ollama-compatible proxy that records every exchange in SQLite.",
        epilog="Without a command, 'serve' runs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the proxy (the default command)",
        description="Run the proxy until SIGTERM or Ctrl-C.",
    )
    _add_config(serve)
    serve.add_argument("--host", help="address to listen on (overrides server.host)")
    serve.add_argument("--port", type=int, help="port to listen on (overrides server.port)")

    mig = commands.add_parser(
        "migrate",
        help="create or upgrade the database, then exit",
        description="Apply pending migrations to the database and print what was done.",
    )
    _add_config(mig)
    mig.add_argument("--db", metavar="PATH", help="database file (overrides database.path)")
    audit_commands.register(commands, _add_config)
    demo.add_parser(commands)
    return parser


def _add_config(parser: argparse.ArgumentParser) -> None:
    # "-config" is how the Go proxy spelled it; its users' scripts keep working.
    parser.add_argument(
        "--config", "-config", metavar="PATH",
        help=f"config file, YAML or JSON (default: ${config_mod.ENV_VAR}, else ./{config_mod.DEFAULT_FILE})",
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    known = ("serve", "migrate", "demo", *audit_commands.COMMANDS, "-h", "--help", "--version")
    if not args_list or args_list[0] not in known:
        args_list.insert(0, "serve")
    args = build_parser().parse_args(args_list)
    try:
        if args.command == "demo":  # self-contained: no config file
            return demo.run(args)
        config = config_mod.load(config_mod.find_config_file(args.config))
        if args.command == "migrate":
            return _migrate(config, args.db)
        if args.command in audit_commands.COMMANDS:
            return int(args.run(args, config))
        config = config_mod.replace(config, host=args.host, port=args.port)
        return _serve(config)
    except ConfigError as exc:
        print(f"{PROG}: config error: {exc}", file=sys.stderr)
        return 2
    except AuditError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


def _migrate(config: Config, db: str | None) -> int:
    path = db or config.database.path
    try:
        names = migrate(path)
    except (sqlite3.Error, OSError) as exc:
        print(f"{PROG}: cannot migrate {path}: {exc}", file=sys.stderr)
        return 1
    if names:
        for name in names:
            print(f"applied {name}")
    else:
        print(f"{path} is up to date")
    return 0


def event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when it is installed (markedly faster), else asyncio's.

    ``LLM_PROXY_EVENT_LOOP=asyncio`` forces asyncio's, e.g. to compare the two.
    """
    if os.environ.get("LLM_PROXY_EVENT_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _serve(config: Config, banner: str | None = None) -> int:
    from ..server import connections, logging_setup, state
    from ..server.app import create_app
    from ..server.auth import exposure_warning
    from ..server.notify import Notifier

    logging_setup.setup(config.server.log_format)
    notifier = Notifier.from_environ()
    app = create_app(config, notifier)
    server = config.server
    warning = exposure_warning(config)
    if warning:
        print(f"{PROG}: {warning}", file=sys.stderr, flush=True)

    def announce() -> None:
        # Everything made so far (modules, the app, its connections) lives as
        # long as the process: out of the collector's sight, a full collection
        # no longer walks it. One took 13 ms here, a stall every request then
        # in flight would have waited out.
        gc.collect()
        gc.freeze()
        # Called once the port is bound (and migrations ran, at startup): the
        # moment systemd may send traffic.
        print(
            f"{PROG} {__version__} listening on http://{server.host}:{server.port} "
            f"→ {_backend_target(config)}; "
            f"audit trail in {config.database.path}",
            flush=True,
        )
        notifier.ready(f"listening on {server.host}:{server.port}")
        if banner:
            print(banner, flush=True)

    try:
        # web.run_app, with a bound on client connections (see connections.py).
        connections.run(
            app,
            app[state.CONNECTIONS],
            host=server.host,
            port=server.port,
            loop=event_loop(),
            on_listening=announce,
            shutdown_timeout=server.shutdown_timeout,
            keepalive_timeout=server.keepalive_timeout,
            access_log=None,
            handler_cancellation=False,  # what web.run_app does; handlers meet a departure as a failed write
        )
    except OSError as exc:
        print(f"{PROG}: cannot listen on {server.host}:{server.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except sqlite3.Error as exc:
        print(f"{PROG}: cannot open the database {config.database.path}: {exc}", file=sys.stderr)
        return 1
    return 0


def _backend_target(config: Config) -> str:
    backend = config.backend
    if backend.type == "llamacpp":
        return f"llama-server on demand for {', '.join(backend.models)}"
    return f"{backend.type} backend at {backend.endpoint}"
