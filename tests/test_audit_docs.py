"""docs/audit-trail.md and the README tell the truth: the schema, the queries, the commands."""

from __future__ import annotations

import argparse
import re
import shlex
import sqlite3
from contextlib import closing
from pathlib import Path

import ollama
import pytest

from llm_proxy.audit.migrate import migrate
from llm_proxy.cli import audit_commands
from llm_proxy.cli.main import build_parser, main

from .conftest import MakeProxy, Proxy
from .ollama_double import OllamaDouble
from .postgres import PostgresServer
from .trail import Trail

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "audit-trail.md").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")


def commands(parser: argparse.ArgumentParser, above: tuple[str, ...] = ()) -> list[list[str]]:
    """Every command and sub-command the parser knows, as the words that name it."""
    found = []
    for action in parser._actions:  # argparse lists sub-parsers nowhere public
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [[*above, name], *commands(sub, (*above, name))]
    return found


ALL_COMMANDS = commands(build_parser())
# The audit trail's commands: docs/audit-trail.md documents them too.
COMMANDS = [c for c in ALL_COMMANDS if c[0] in audit_commands.COMMANDS]
# The README's table of commands, one row per command.
TABLE = [
    line for line in README.split("## Commands", 1)[1].split("\n## ", 1)[0].splitlines() if line[:1] == "|"
]


def schema(db: Path) -> str:
    """What the migrations created, as the doc prints it (FTS5 shadow tables left out)."""
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'"
            " AND NOT (type = 'table' AND name LIKE 'logs_fts_%') ORDER BY rowid"
        ).fetchall()
    return "\n\n".join(f"{sql};" for (sql,) in rows)


def test_the_documented_schema_is_what_the_migrations_create(tmp_path: Path) -> None:
    db = tmp_path / "fresh.db"
    migrate(str(db))
    match = re.search(r"<!-- schema:start -->\n```sql\n(.*?)\n```\n<!-- schema:end -->", DOC, re.S)
    assert match, "docs/audit-trail.md lost its schema markers"
    actual = schema(db)
    assert match[1] == actual, f"update the schema in docs/audit-trail.md to:\n{actual}"


def sql_blocks(text: str, after: str) -> list[str]:
    section = text.split(after, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, re.S)


async def test_the_example_queries_run(proxy: Proxy) -> None:
    c = ollama.AsyncClient(host=proxy.url)
    system = {"role": "system", "content": "You control the lights of this house. " * 40}
    for text in ("Turn on the kitchen light", "And the hallway", "hello"):  # the prompt is resent each time
        await c.chat(model="llama2", messages=[system, {"role": "user", "content": text}])
    await proxy.wait_rows(3)
    queries = sql_blocks(DOC, "## Example queries") + sql_blocks(DOC, "## How it is stored")
    assert len(queries) >= 6
    with closing(sqlite3.connect(proxy.db)) as conn:
        for query in queries:
            conn.execute(query).fetchall()
        whole, stored = conn.execute(queries[-2]).fetchone()  # the savings query
        assert stored < whole
        [(row_id, body)] = conn.execute(queries[-1].replace("id = 42", "id = 1")).fetchall()
        assert row_id == 1 and "kitchen light" in body


def assert_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """``llm-proxy COMMAND --help`` exits 0 and prints that command's usage."""
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: llm-proxy {' '.join(command)}")


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_and_a_readme_example(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert_help(command, capsys)
    assert f"llm-proxy {' '.join(command)}" in README
    assert f"llm-proxy {' '.join(command)}" in DOC


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=" ".join)
def test_every_command_has_help_and_a_row_in_the_readme_table(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert_help(command, capsys)
    # In a row's first cell, and not as the start of a longer command (`logs` in `logs show`).
    named = re.compile(rf"`llm-proxy {re.escape(' '.join(command))}(`| [^a-z])")
    rows = [row for row in TABLE if named.search(row.split("|")[1])]
    assert rows, f"README's table of commands has no row for llm-proxy {' '.join(command)}"


def test_the_commands_are_found() -> None:
    """The parser walk finds what a user can type, sub-commands included."""
    assert {"serve", "migrate", "demo"} <= {c[0] for c in ALL_COMMANDS}
    assert ["logs", "show"] in ALL_COMMANDS and len(COMMANDS) >= 5


async def test_the_readme_commands_work(proxy: Proxy, capsys: pytest.CaptureFixture[str]) -> None:
    c = ollama.AsyncClient(host=proxy.url)
    await c.chat(model="llama2", messages=[{"role": "user", "content": "Turn on the kitchen light"}])
    await proxy.wait_rows(1)
    block = README.split("## Reading the audit trail", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [shlex.split(line) for line in block.strip().splitlines()]
    assert len(lines) >= 8 and all(line[0] == "llm-proxy" for line in lines)
    outputs = []
    for line in lines:
        assert main([*line[1:], "--db", str(proxy.db)]) == 0, line
        outputs.append(capsys.readouterr().out)
    assert "kitchen light" in outputs[1]  # the search found the request


# What marks an example query as SQLite's own (docs/audit-trail.md spells those for PostgreSQL).
SQLITE_ONLY = (
    "time(timestamp)", "strftime(", "logs_fts", "json_extract(", "GROUP_CONCAT(", "SUM(status_code",
)  # fmt: skip
# The Go LLM Proxy's README's query examples, verbatim.
GO_QUERIES = (
    "SELECT timestamp, endpoint, model, latency_ms \nFROM logs \nORDER BY timestamp DESC \nLIMIT 10;",
    "SELECT model, AVG(latency_ms) as avg_latency_ms, COUNT(*) as request_count\nFROM logs \n"
    "WHERE error IS NULL\nGROUP BY model;",
)


async def test_the_example_queries_run_on_postgresql(
    make_proxy: MakeProxy, ollama_double: tuple[OllamaDouble, str], postgres: PostgresServer, migrated: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The PostgreSQL spellings, the queries that need none, and the Go proxy's own, on a real server."""
    trail = Trail("postgresql", postgres.database(migrated), tmp_path / "spool.db", postgres)
    proxy = await make_proxy(ollama_double[1], trail=trail, models={"mappings": {"llama2": "llama3.2"}})
    c = ollama.AsyncClient(host=proxy.url)
    system = {"role": "system", "content": "You control the lights of this house. " * 40}
    for text in ("Turn on the kitchen light", "And the hallway", "hello"):
        await c.chat(model="llama2", messages=[system, {"role": "user", "content": text}])
    await proxy.wait_rows(3)
    spelled = sql_blocks(DOC, "### Example queries in PostgreSQL")
    examples = sql_blocks(DOC, "## Example queries")
    sqlite_only = [q for q in examples if any(f in q for f in SQLITE_ONLY)]
    assert len(spelled) == len(sqlite_only) == 6  # each has its PostgreSQL spelling
    unchanged = [q for q in examples if q not in sqlite_only] + sql_blocks(DOC, "## How it is stored")
    for query in spelled + unchanged:
        trail.query(query)
    [found] = trail.query(spelled[2])  # the search
    assert found["prompt"] == "Turn on the kitchen light"
    [tokens] = trail.query(spelled[1])
    assert (tokens["model"], tokens["requests"]) == ("llama2", 3)
    turns = trail.query(spelled[3])  # three spoken requests of one round each
    assert [(t["turn_id"], t["rounds"]) for t in turns] == [(3, 1), (2, 1), (1, 1)]
    [saved] = trail.query(unchanged[-2])
    assert saved["stored_bytes"] < saved["whole_bytes"]
    [row] = trail.query(unchanged[-1].replace("id = 42", "id = 1"))
    assert row["id"] == 1 and "kitchen light" in row["full_request_body"]
    recent, average = (trail.query(q) for q in GO_QUERIES)
    assert [r["endpoint"] for r in recent] == ["/api/chat"] * 3
    assert [(r["model"], r["request_count"]) for r in average] == [("llama2", 3)]
