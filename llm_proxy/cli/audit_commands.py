"""The audit-trail commands: ``llm-proxy logs [show|export|delete]``, ``stats`` and ``prune``.

``logs``, ``logs show``, ``logs export`` and ``stats`` only read: they open the
database read-only and never create or migrate it. ``prune`` and ``logs
delete`` (cli/delete_command.py) write. Each takes a SQLite file or a
PostgreSQL URL (``--db postgresql://…``, ``database.url``).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sqlite3
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from ..audit import pg_query, query, reading
from ..audit.dburl import is_postgres, masked
from ..audit.migrate import migrate
from ..audit.retention import prune
from ..audit.when import parse_age, parse_when, stamp
from ..config import Config
from ..errors import AuditError
from . import dataset_export, delete_command, formats, replay, stats_command

COMMANDS = ("logs", "stats", "prune", "replay")
DEFAULT_COUNT = 20


def register(commands: Any, add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the commands to the top-level sub-parsers."""
    logs = commands.add_parser(
        "logs",
        help="list recorded exchanges (newest first); 'logs show ID', 'logs export'",
        description="List recorded exchanges, newest first (best match first with -q).",
        epilog="Examples: llm-proxy logs -n 5 --model llama3.2 ; "
        "llm-proxy logs -q 'kitchen light' --since 2h",
    )
    _common(logs, add_config)
    logs.add_argument(
        "-n", "--count", type=int, default=DEFAULT_COUNT, metavar="N",
        help=f"how many to show (default {DEFAULT_COUNT}; 0 for all)",
    )  # fmt: skip
    _filters(logs)
    out = logs.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object per line, every column")
    out.add_argument("--full", action="store_true", help="the whole prompt, answer, tool calls and error")
    logs.set_defaults(run=_logs)
    sub = logs.add_subparsers(dest="logs_command", metavar="{show,export,delete}")

    show = sub.add_parser(
        "show",
        help="one exchange in full",
        description="One exchange in full: client request, backend request, answer, tool calls, "
        "thinking, timings, tokens and error.",
    )
    _common(show, add_config)
    show.add_argument("id", type=int, help="the exchange's id (first column of 'llm-proxy logs')")
    what = show.add_mutually_exclusive_group()
    what.add_argument("--json", action="store_true", help="the whole row as one JSON object")
    what.add_argument(
        "--request", action="store_true", help="only the client's request body, byte for byte as received"
    )
    what.add_argument("--backend-request", action="store_true", help="only the request sent to the backend")
    show.set_defaults(run=_show)

    export = sub.add_parser(
        "export",
        help="every matching exchange as JSON lines or CSV, or as training examples",
        description="Write every matching exchange, complete, oldest first, as JSON lines or CSV, "
        "or as training examples (--format openai-chat or sharegpt: messages, tools and the answer "
        "with its tool calls). Rows are streamed, so memory stays flat however large the database is.",
        epilog="Examples: llm-proxy logs export --since 7d > week.jsonl ; "
        "llm-proxy logs export --format openai-chat --per turn --model assistant -o train.jsonl",
    )
    _common(export, add_config)
    _filters(export)
    export.add_argument(
        "--format", choices=("jsonl", "csv", *dataset_export.FORMATS), default="jsonl",
        help="jsonl (default) and csv: every column; openai-chat: OpenAI's chat fine-tuning format; "
        "sharegpt: LLaMA-Factory's ShareGPT layout",
    )  # fmt: skip
    export.add_argument(
        "--per", choices=("exchange", "turn"), default="exchange",
        help="openai-chat/sharegpt: an example per exchange (default), or per turn (its last round)",
    )  # fmt: skip
    export.add_argument(
        "--include-errors", action="store_true",
        help="openai-chat/sharegpt: keep failed exchanges and 499s (left out by default)",
    )  # fmt: skip
    export.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    export.add_argument(
        "-n", "--count", type=int, default=0, metavar="N", help="at most N rows (default all)"
    )
    export.set_defaults(run=_export)
    delete = delete_command.register(sub, lambda p: _common(p, add_config), _filters, _filters_from, _path)
    _inherit(logs, (show, export, delete))

    stats = commands.add_parser(
        "stats",
        help="requests, errors, latency, time to first token, tokens and cache hits per model, endpoint, key",
        description="Per model and per endpoint (or per API key with --by key): requests, errors, latency "
        "p50/p95/p99, time to first token p50/p95, prompt and completion tokens, completion tokens per "
        "second of request time, and the answer cache's hits and hit rate.",
        epilog="Example: llm-proxy stats --since 7d; llm-proxy stats --by key --since 1d",
    )
    _common(stats, add_config)
    _filters(stats)
    stats.add_argument("--json", action="store_true", help="the numbers as one JSON object")
    stats.add_argument(
        "--by", action="append", choices=stats_command.BY, metavar="{" + ",".join(stats_command.BY) + "}",
        help="the tables to print: per model, endpoint, API key or backend (repeatable; default model and "
        "endpoint; --json: all of them)",
    )  # fmt: skip
    stats.set_defaults(run=lambda args, config: stats_command.run(args, config, _filters_from, _path))

    prune_cmd = commands.add_parser(
        "prune",
        help="delete old exchanges and shrink the database file",
        description="Delete exchanges older than --older-than and/or the oldest ones beyond "
        "--max-size-mb, in small batches (safe while the proxy runs), then shrink the file.",
        epilog="Example: llm-proxy prune --older-than 30d",
    )
    _common(prune_cmd, add_config)
    prune_cmd.add_argument("--older-than", metavar="AGE", help="an age such as 12h, 30d or 8w")
    prune_cmd.add_argument(
        "--max-size-mb", type=int, metavar="MB", help="delete the oldest rows beyond this size"
    )
    prune_cmd.add_argument("--dry-run", action="store_true", help="count what --older-than would delete")
    prune_cmd.set_defaults(run=_prune)
    replay.register(
        commands, lambda p: _common(p, add_config), lambda p: _filters(p, model=False), _filters_from, _path
    )


def _inherit(parent: argparse.ArgumentParser, children: Iterable[argparse.ArgumentParser]) -> None:
    """Let options given before a sub-command count (``logs --db X show 1``).

    argparse fills a sub-command's defaults in over what the parent parsed, so
    the options both define get no default in the child. ``--count`` is left
    alone: ``logs`` shows 20 by default, ``logs export`` everything.
    """
    shared = {a.dest for a in parent._actions} - {"count", "help"}
    for child in children:
        for action in child._actions:
            if action.dest in shared:
                action.default = argparse.SUPPRESS


def _common(parser: argparse.ArgumentParser, add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    add_config(parser)
    parser.add_argument(
        "--db", metavar="PATH|URL",
        help="database file or postgresql:// URL (overrides database.path and database.url)",
    )  # fmt: skip


def _filters(parser: argparse.ArgumentParser, model: bool = True) -> None:
    if model:  # replay's --model names the model to send to instead
        parser.add_argument("-m", "--model", help="only this model (as the client or the backend named it)")
    parser.add_argument("--endpoint", help="only this endpoint: /api/chat, or just chat")
    parser.add_argument("--status", help="only this status: 404, or a class such as 5xx")
    parser.add_argument("--errors", action="store_true", help="only failed exchanges")
    parser.add_argument("--since", metavar="WHEN", help="from: an age (2h, 7d) or an ISO date/time (UTC)")
    parser.add_argument("--until", metavar="WHEN", help="before: an age (2h, 7d) or an ISO date/time (UTC)")
    parser.add_argument("-q", "--query", metavar="TEXT", help="full-text search in prompts and answers")
    parser.add_argument("--turn", type=int, metavar="ID", help="only the rounds of this conversation turn")
    parser.add_argument("--backend", metavar="NAME", help="only those answered by this named backend")
    parser.add_argument("--key", metavar="NAME", help="only requests made with this API key (auth.keys name)")


def _filters_from(args: argparse.Namespace) -> query.Filters:
    try:
        since = parse_when(args.since) if args.since else None
        until = parse_when(args.until) if args.until else None
    except ValueError as exc:
        raise AuditError(str(exc)) from None
    return query.Filters(
        model=getattr(args, "model", None), endpoint=args.endpoint, status=args.status, errors=args.errors,
        since=since, until=until, query=args.query, turn=args.turn, key=args.key, backend=args.backend,
        ids=tuple(getattr(args, "ids", None) or ()),
    )  # fmt: skip


def _path(args: argparse.Namespace, config: Config) -> str:
    return str(args.db or config.database.url or config.database.path)


# -- logs ------------------------------------------------------------------------


def _logs(args: argparse.Namespace, config: Config) -> int:
    reader = reading.connect(_path(args, config))
    try:
        f = _filters_from(args)
        rows = reader.rows(f, limit=args.count or None, oldest_first=f.turn is not None)
        if args.json:
            for row in rows:
                sys.stdout.write(orjson.dumps(row).decode() + "\n")
        elif args.full:
            _print_full(rows)
        else:
            _print_table(rows)
    finally:
        reader.close()
    return 0


def _print_table(rows: Iterable[dict[str, Any]]) -> None:
    width = shutil.get_terminal_size((120, 24)).columns
    header = f"{'ID':>6}  {'TIME (UTC)':19}  {'MODEL':16}  {'ENDPOINT':14}  {'STATUS':>6}  {'MS':>7}  "
    print(header + "PROMPT → RESPONSE")
    room = max(20, width - len(header))
    for r in rows:
        text = f"{formats.flat(r['prompt'])} → {formats.flat(r['response'] or r['error'])}"
        if r.get("tool_calls"):
            text += f" [tools: {', '.join(_tool_names(r['tool_calls']))}]"
        if len(text) > room:
            text = text[: room - 1] + "…"
        print(
            f"{r['id']:>6}  {formats.time(r['timestamp']):19}  {formats.cut(r['model'] or '-', 16):16}  "
            f"{formats.cut(r['endpoint'], 14):14}  {formats.or_dash(r['status_code']):>6}  "
            f"{formats.or_dash(r['latency_ms']):>7}  {text}"
        )


def _print_full(rows: Iterable[dict[str, Any]]) -> None:
    for r in rows:
        print(
            f"## {r['id']}  {r['timestamp']}  {r['method']} {r['endpoint']}  {r['model'] or '-'}  "
            f"status {formats.or_dash(r['status_code'])}  {formats.or_dash(r['latency_ms'])} ms"
        )
        for label, column in (("prompt", "prompt"), ("response", "response"), ("error", "error")):
            if r.get(column):
                print(f"{label}:\n{r[column]}")
        if r.get("tool_calls"):
            print(f"tool calls:\n{_pretty(r['tool_calls'])}")
        print()


# -- logs show -------------------------------------------------------------------


def _show(args: argparse.Namespace, config: Config) -> int:
    reader = reading.connect(_path(args, config))
    try:
        row = reader.get(args.id)
    finally:
        reader.close()
    if args.request or args.backend_request:
        text = row["request_body"] if args.request else row["backend_request"]
        if text is None:
            what = "client request body" if args.request else "backend request"
            raise AuditError(f"exchange {args.id} has no stored {what}")
        sys.stdout.flush()
        sys.stdout.buffer.write(text.encode("utf-8"))
        sys.stdout.buffer.flush()
        return 0
    if args.json:
        print(orjson.dumps(row).decode())
        return 0
    r = row
    status = formats.or_dash(r["status_code"])
    print(f"exchange {r['id']}  {r['timestamp']}  {r['method']} {r['endpoint']}  status {status}")
    model = r["model"] or "-"
    if r.get("backend_model") and r["backend_model"] != r["model"]:
        model += f" → {r['backend_model']}"
    print(f"model:      {model}  ({r['backend_type']} backend, {r.get('api', 'ollama')} API, "
          f"stream: {formats.yes(r['stream'])})")  # fmt: skip
    if r.get("backend_name") or r.get("attempts"):
        print(f"backend:    {r.get('backend_name') or '-'}{_attempts(r.get('attempts'))}")
    client = f"{r['client_addr'] or '-'}  {r['user_agent'] or '-'}"
    print(f"client:     {client}  request id {r['request_id'] or '-'}")
    if r.get("trace_id"):
        # replace, not format(): trace viewers' URLs (Grafana's) carry braces of their own.
        link = config.telemetry.trace_url.replace("{trace_id}", r["trace_id"])
        print(f"trace:      {r['trace_id']}" + (f"  {link}" if link else ""))
    if r.get("turn_id") is not None:
        print(f"turn:       {r['turn_id']}  (llm-proxy logs --turn {r['turn_id']})")
    print(f"timings:    latency {formats.ms(r['latency_ms'])}, first byte {formats.ms(r['ttfb_ms'])}, "
          f"first token {formats.ms(r['ttft_ms'])}")  # fmt: skip
    tokens = f"tokens:     prompt {formats.or_dash(r['prompt_tokens'])}, "
    tokens += f"completion {formats.or_dash(r['completion_tokens'])}"
    if r["completion_tokens"] and r["latency_ms"]:
        tokens += f", {r['completion_tokens'] * 1000 / r['latency_ms']:.1f} tokens/s"
    print(tokens)
    if r.get("cache_hit") == 1:
        print(f"cache:      hit, sparing the backend {formats.ms(r.get('cache_saved_ms'))} and "
              f"{formats.or_dash(r.get('cache_saved_tokens'))} tokens")  # fmt: skip
    elif r.get("cache_hit") == 0:
        print("cache:      miss (the backend answered)")
    if r["done_reason"]:
        print(f"done:       {r['done_reason']}")
    if r["error"]:
        print(f"error:      {r['error']}")
    sections = (
        ("client request", r["request_body"]), ("backend request", r["backend_request"]),
        ("thinking", r["thinking"]), ("response", r["response"]),
        ("tool calls", r["tool_calls"] and _pretty(r["tool_calls"])),
        ("response body", r["response_body"]),
    )  # fmt: skip
    for title, text in sections:
        if text:
            print(f"\n--- {title} ---\n{text}")
    return 0


# -- export ----------------------------------------------------------------------


def _export(args: argparse.Namespace, config: Config) -> int:
    reader = reading.connect(_path(args, config))
    if args.format in dataset_export.FORMATS:
        try:
            return _export_examples(args, reader)
        finally:
            reader.close()
    try:
        rows = reader.rows(_filters_from(args), limit=args.count or None, oldest_first=True)
        if args.output:
            with open(args.output, "w", encoding="utf-8", newline="") as out:
                n = _write_export(rows, reader.shown, args.format, out)
            print(f"exported {n} exchanges to {args.output}", file=sys.stderr)
        else:
            _write_export(rows, reader.shown, args.format, sys.stdout)
    finally:
        reader.close()
    return 0


def _export_examples(args: argparse.Namespace, reader: query.Reader) -> int:
    f, limit = _filters_from(args), args.count or None
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            done = dataset_export.write(reader, f, args.format, out, args.per, args.include_errors, limit)
        print(f"{done.summary()} to {args.output}", file=sys.stderr)
    else:
        done = dataset_export.write(reader, f, args.format, sys.stdout, args.per, args.include_errors, limit)
        print(done.summary(), file=sys.stderr)
    return 0


def _write_export(rows: Iterable[dict[str, Any]], columns: list[str], fmt: str, out: IO[str]) -> int:
    n = 0
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.get(c) for c in columns])
            n += 1
    else:
        for row in rows:
            out.write(orjson.dumps(row).decode() + "\n")
            n += 1
    return n


# -- prune -----------------------------------------------------------------------


def _attempts(text: str | None) -> str:
    """The tries of a request, when there was more than one: ``  (tried: gpu 502 …, laptop 200 12ms)``."""
    try:
        tries = orjson.loads(text) if text else []
    except orjson.JSONDecodeError:
        return f"  (attempts: {text})"
    if not isinstance(tries, list) or len(tries) < 2:
        return ""
    shown = []
    for t in tries:
        if not isinstance(t, dict):
            continue
        part = f"{t.get('backend')}{' (' + str(t['model']) + ')' if t.get('model') else ''} {t.get('status')}"
        part += f" {t.get('ms')}ms"
        if t.get("error"):
            part += f" ({formats.cut(formats.flat(str(t['error'])), 80)})"
        shown.append(part)
    return "  (tried: " + ", ".join(shown) + ")"


def _prune(args: argparse.Namespace, config: Config) -> int:
    path = _path(args, config)
    if not args.older_than and not args.max_size_mb:
        raise AuditError("say what to delete: --older-than AGE (e.g. 30d) and/or --max-size-mb MB")
    if is_postgres(path):
        return _prune_postgres(args, path)
    if not os.path.exists(path):
        raise AuditError(f"no database at {path} (nothing to prune; use --db PATH or --config)")
    try:
        before = stamp(datetime.now(UTC) - parse_age(args.older_than)) if args.older_than else None
    except ValueError as exc:
        raise AuditError(f"--older-than: {exc}") from None
    try:
        if not args.dry_run:
            migrate(path)  # the triggers that free blobs and search entries come with the schema
        result = prune(path, before, (args.max_size_mb or 0) * 1024 * 1024, dry_run=args.dry_run)
    except sqlite3.Error as exc:
        raise AuditError(f"cannot prune {path}: {exc}") from None
    if args.dry_run:
        print(f"would delete {result.deleted} exchanges older than {before}")
    else:
        print(
            f"deleted {result.deleted} exchanges; {path}: "
            f"{formats.mb(result.bytes_before)} → {formats.mb(result.bytes_after)}"
        )
    return 0


def _prune_postgres(args: argparse.Namespace, url: str) -> int:
    if args.max_size_mb:
        raise AuditError("--max-size-mb applies to a SQLite file only; with PostgreSQL use --older-than")
    try:
        before = stamp(datetime.now(UTC) - parse_age(args.older_than))
    except ValueError as exc:
        raise AuditError(f"--older-than: {exc}") from None
    result = pg_query.prune(url, before, dry_run=args.dry_run)
    if args.dry_run:
        print(f"would delete {result.deleted} exchanges older than {before}")
    else:
        print(
            f"deleted {result.deleted} exchanges; {masked(url)}: "
            f"{formats.mb(result.bytes_before)} → {formats.mb(result.bytes_after)} "
            "(the space is reused, not returned)"
        )
    return 0


# -- formatting --------------------------------------------------------------------


def _pretty(text: str) -> str:
    try:
        return orjson.dumps(orjson.loads(text), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        return text


def _tool_names(text: str) -> list[str]:
    try:
        calls = orjson.loads(text)
    except orjson.JSONDecodeError:
        return []
    return [str((c.get("function") or {}).get("name")) for c in calls if isinstance(c, dict)]
