"""The command line: its parser, ``llm-proxy migrate``, and the dispatch to every other command."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Sequence

from .. import __version__
from .. import config as config_mod
from ..audit import pg_query
from ..audit.dburl import is_postgres, masked, redact
from ..audit.migrate import migrate
from ..config import Config
from ..errors import AuditError, ConfigError
from . import PROG, audit_commands, demo
from .copy_trail import copy_trail


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
    mig.add_argument(
        "--db", metavar="PATH|URL",
        help="database file or postgresql:// URL (overrides database.path and database.url)",
    )  # fmt: skip
    mig.add_argument(
        "--to", metavar="URL",
        help="copy the SQLite trail (--db or database.path) into this postgresql:// database, resumably",
    )  # fmt: skip
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
            if args.to:
                return copy_trail(args.db or config.database.path, args.to)
            return _migrate(config, args.db)
        if args.command in audit_commands.COMMANDS:
            return int(args.run(args, config))
        config = config_mod.replace(config, host=args.host, port=args.port)
        from .serve import serve  # the server's modules, imported only to serve

        return serve(config)
    except ConfigError as exc:
        print(f"{PROG}: config error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except AuditError as exc:
        print(f"{PROG}: {redact(str(exc))}", file=sys.stderr)
        return 1


def _migrate(config: Config, db: str | None) -> int:
    path = db or config.database.url or config.database.path
    if is_postgres(path):
        names = pg_query.migrate(path)  # AuditError, masked, when it cannot
        for name in names:
            print(f"applied {name}")
        if not names:
            print(f"{masked(path)} is up to date")
        return 0
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
