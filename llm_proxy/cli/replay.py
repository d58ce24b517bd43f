"""``llm-proxy replay``: send recorded requests again, through the running proxy, and compare.

Each selected exchange's stored client request is sent to the proxy again, to
the same endpoint (``--model`` puts another model name in it), one at a time,
with ``X-Replay-Of: ID`` so the new row's ``replay_of`` names the original, and
an ``X-Request-Id`` of its own by which the new row is then read back from the
database. Going through the proxy means the replay is recorded like any
request, mapped and translated the same way. The report puts the old and new
answer, tool calls, tokens and latency side by side, and ends with how many
answers changed and how many tool calls differ.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import os
import shutil
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from .. import __version__
from ..audit import datasets, query, reading
from ..config import Config
from ..errors import AuditError
from .formats import ms, or_dash

API_KEY_ENV = "LLM_PROXY_API_KEY"
DEFAULT_COUNT = 20
REPLAYABLE = datasets.CHAT | datasets.GENERATE
READ_CHUNK = 65536


def register(
    commands: Any,
    common: Callable[[argparse.ArgumentParser], None],
    filters: Callable[[argparse.ArgumentParser], None],
    filters_from: Callable[[argparse.Namespace], query.Filters],
    path: Callable[..., str],
) -> None:
    """Add ``replay`` to the top-level sub-parsers; the helpers are audit_commands' own."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "replay",
        help="send recorded requests again through the running proxy and compare the answers",
        description="Send the stored client requests of the selected exchanges (ids, --turn, -q or any "
        "filter of 'logs') again through the running proxy, one at a time, optionally to another "
        "model, and print the old and new answer, tool calls, tokens and latency side by side, then "
        "how many answers changed and how many tool calls differ. The replays are recorded like any "
        "request, with replay_of set to the original's id.",
        epilog="Examples: llm-proxy replay 42 --model qwen ; llm-proxy replay --turn 17 --model qwen ; "
        "llm-proxy replay -q 'kitchen light' --since 30d --model qwen --json",
    )
    common(parser)
    parser.add_argument("ids", type=int, nargs="*", metavar="ID", help="exchanges to replay, by id")
    filters(parser)
    parser.add_argument("--model", dest="to_model", metavar="M", help="send to this model instead")
    parser.add_argument(
        "-n", "--count", type=int, default=DEFAULT_COUNT, metavar="N",
        help=f"replay at most N exchanges, oldest first (default {DEFAULT_COUNT}; 0 for all)",
    )  # fmt: skip
    parser.add_argument(
        "--url", help="the running proxy (default: http://server.host:server.port from the config)"
    )
    parser.add_argument("--api-key", help=f"the API key to send (default: ${API_KEY_ENV})")
    parser.add_argument(
        "--timeout", type=float, default=300.0, metavar="S", help="seconds each replay may take (default 300)"
    )
    parser.add_argument("--json", action="store_true", help="the report as one JSON object")
    parser.set_defaults(run=lambda args, config: _replay(args, config, filters_from, path))


def _replay(
    args: argparse.Namespace,
    config: Config,
    filters_from: Callable[..., query.Filters],
    path_of: Callable[..., str],
) -> int:
    path = path_of(args, config)
    f = filters_from(args)
    if f == query.Filters():
        raise AuditError("say what to replay: ids, --turn ID, -q TEXT or another filter (see --help)")
    if not f.ids:  # a search or filter picks recorded traffic, not earlier replays of it
        f = dataclasses.replace(f, originals=True)
    if args.to_model is not None and not args.to_model.strip():
        raise AuditError("--model wants a model name")
    url = (args.url or _own_url(config)).rstrip("/")
    key = args.api_key or os.environ.get(API_KEY_ENV) or None
    reader = reading.connect(path)
    try:
        # Ids only: each row is read when its turn comes, so memory holds one body at a time.
        originals = list(itertools.islice(reader.ids(f), args.count or None))
    finally:
        reader.close()
    if not originals:
        raise AuditError("no exchange matches")
    results = asyncio.run(_send_all(originals, url, key, args.to_model, args.timeout, path))
    report = _report(results)
    if args.json:
        print(orjson.dumps(report).decode())
    else:
        _print(report)
    return 0


def _own_url(config: Config) -> str:
    host = config.server.host
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.server.port}"


# -- sending -----------------------------------------------------------------------


async def _send_all(
    originals: list[int], url: str, key: str | None, model: str | None, seconds: float, path: str
) -> list[tuple[dict[str, Any], dict[str, Any] | None, str | None]]:
    """Each original with its replay's row, or None and why there is none."""
    headers = {"User-Agent": f"llm-proxy-replay/{__version__}", "Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    out: list[tuple[dict[str, Any], dict[str, Any] | None, str | None]] = []
    client_timeout = aiohttp.ClientTimeout(total=seconds)
    async with aiohttp.ClientSession(timeout=client_timeout, headers=headers, trust_env=False) as http:
        for row_id in originals:
            row = await asyncio.to_thread(_row, path, row_id)
            why = _unreplayable(row)
            if why:
                out.append((row, None, why))
                continue
            body = orjson.loads(row["request_body"])
            if model:
                body["model"] = model
            request_id = f"replay-{uuid.uuid4().hex}"
            extra = {"X-Replay-Of": str(row["id"]), "X-Request-Id": request_id}
            try:
                async with http.post(
                    f"{url}{row['endpoint']}", data=orjson.dumps(body), headers=extra
                ) as resp:
                    while await resp.content.read(READ_CHUNK):  # the row records it; nothing is kept here
                        pass
            except aiohttp.ClientConnectorError as exc:
                raise AuditError(f"cannot reach the proxy at {url}: {exc} (is it running? --url)") from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                out.append((row, None, f"the request failed: {type(exc).__name__}: {exc}"))
                continue
            new = await asyncio.to_thread(_new_row, path, request_id)
            out.append((row, new, None if new else "its row did not appear in the database within 10 s"))
    return out


def _unreplayable(row: dict[str, Any]) -> str | None:
    if row["endpoint"] not in REPLAYABLE:
        return f"{row['endpoint']} is not replayed (only chat and generate)"
    if not row.get("request_body"):
        return "no request body stored (database.store_bodies: metadata)"
    try:
        body = orjson.loads(row["request_body"])
    except orjson.JSONDecodeError:
        return "the stored request body is not JSON (cut at database.max_body_kb?)"
    return None if isinstance(body, dict) else "the stored request body is not a JSON object"


def _row(path: str, row_id: int) -> dict[str, Any]:
    reader = reading.connect(path)
    try:
        return reader.get(row_id)
    finally:
        reader.close()


def _new_row(path: str, request_id: str, wait: float = 10.0) -> dict[str, Any] | None:
    """The replay's row, once the proxy's writer has stored it."""
    deadline = time.monotonic() + wait
    while True:
        reader = reading.connect(path)
        try:
            found = reader.conn.execute("SELECT id FROM logs WHERE request_id = ?", (request_id,)).fetchone()
            if found is not None:
                return reader.get(int(found[0]))
        finally:
            reader.close()
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


# -- comparing -----------------------------------------------------------------------


def calls_of(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A row's tool calls as ``{"name", "arguments"}`` with arguments decoded, in either API's shape."""
    text = row.get("tool_calls")
    if not text:
        return []
    try:
        calls = orjson.loads(text)
    except orjson.JSONDecodeError:
        return []
    out = []
    for c in calls if isinstance(calls, list) else []:
        function: dict[str, Any] = {}
        if isinstance(c, dict) and isinstance(c.get("function"), dict):
            function = c["function"]
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            with contextlib.suppress(orjson.JSONDecodeError):
                arguments = orjson.loads(arguments)
        out.append({"name": function.get("name"), "arguments": arguments})
    return out


def _side(row: dict[str, Any]) -> dict[str, Any]:
    kept = ("id", "model", "status_code", "error", "response", "prompt_tokens", "completion_tokens",
            "latency_ms", "ttft_ms")  # fmt: skip
    return {**{k: row.get(k) for k in kept}, "tool_calls": calls_of(row)}


def _report(results: list[tuple[dict[str, Any], dict[str, Any] | None, str | None]]) -> dict[str, Any]:
    exchanges = []
    summary = {"replayed": 0, "answers_changed": 0, "tool_calls_differ": 0, "errors": 0, "not_replayed": 0}
    for old, new, why in results:
        entry: dict[str, Any] = {"endpoint": old["endpoint"], "original": _side(old)}
        if new is None:
            entry["problem"] = why
            summary["not_replayed"] += 1
            exchanges.append(entry)
            continue
        entry["replay"] = after = _side(new)
        before = entry["original"]
        entry["answer_changed"] = (before["response"] or "").strip() != (after["response"] or "").strip()
        entry["tool_calls_differ"] = before["tool_calls"] != after["tool_calls"]
        summary["replayed"] += 1
        summary["answers_changed"] += entry["answer_changed"]
        summary["tool_calls_differ"] += entry["tool_calls_differ"]
        if after["error"] or (after["status_code"] or 0) >= 400:
            summary["errors"] += 1
        exchanges.append(entry)
    return {"exchanges": exchanges, "summary": summary}


# -- printing ------------------------------------------------------------------------


def _print(report: dict[str, Any]) -> None:
    width = max(80, shutil.get_terminal_size((120, 24)).columns)
    column = (width - 16 - 3) // 2
    for entry in report["exchanges"]:
        old = entry["original"]
        if "replay" not in entry:
            print(f"#{old['id']}  {entry['endpoint']}  not replayed: {entry['problem']}\n")
            continue
        new = entry["replay"]
        print(f"#{old['id']} → #{new['id']}  {entry['endpoint']}  {old['model']} → {new['model']}")
        rows = [
            ("", f"before (#{old['id']})", f"after (#{new['id']})", ""),
            ("status", or_dash(old["status_code"]), or_dash(new["status_code"]), ""),
            ("latency", ms(old["latency_ms"]), ms(new["latency_ms"]), ""),
            ("first token", ms(old["ttft_ms"]), ms(new["ttft_ms"]), ""),
            ("tokens", _tokens(old), _tokens(new), ""),
            ("tool calls", _calls(old["tool_calls"]), _calls(new["tool_calls"]),
             "differ" if entry["tool_calls_differ"] else "same"),
            ("answer", old["response"] or old["error"] or "", new["response"] or new["error"] or "",
             "changed" if entry["answer_changed"] else "same"),
        ]  # fmt: skip
        for label, left, right, verdict in rows:
            lefts = textwrap.wrap(" ".join(left.split()), column) or [""]
            rights = textwrap.wrap(" ".join(right.split()), column) or [""]
            lines = max(len(lefts), len(rights))
            lines = min(lines, 6)
            for i in range(lines):
                l_text = lefts[i] if i < len(lefts) else ""
                r_text = rights[i] if i < len(rights) else ""
                tag = verdict if i == 0 else ""
                print(f"  {label if i == 0 else '':13} {l_text:{column}} │ {r_text:{column}} {tag}".rstrip())
        print()
    s = report["summary"]
    print(
        f"{s['replayed']} replayed: {s['answers_changed']} "
        f"{'answer' if s['answers_changed'] == 1 else 'answers'} changed, {s['tool_calls_differ']} "
        f"with different tool calls, {s['errors']} answered with an error, {s['not_replayed']} not replayed"
    )
    sys.stdout.flush()


def _tokens(side: dict[str, Any]) -> str:
    return f"{or_dash(side['prompt_tokens'])} in, {or_dash(side['completion_tokens'])} out"


def _calls(calls: list[dict[str, Any]]) -> str:
    if not calls:
        return "none"
    return ", ".join(f"{c['name']}({orjson.dumps(c['arguments']).decode()})" for c in calls)
