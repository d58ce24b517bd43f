"""Numbered SQL migrations: applied once each, atomically, from a checkout or a wheel."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from llm_proxy.audit.migrate import available, migrate, migrations_dir

GO_COLUMNS = [
    "id", "timestamp", "endpoint", "method", "model", "prompt", "response",
    "status_code", "latency_ms", "stream", "backend_type", "error",
]  # fmt: skip


def columns(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [row[1] for row in conn.execute("PRAGMA table_info(logs)")]


def test_fresh_database_gets_the_go_columns_first(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    every = [p.name for p in available()]
    assert migrate(str(db)) == every
    assert columns(db)[: len(GO_COLUMNS)] == GO_COLUMNS
    assert migrate(str(db)) == []  # applied once
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY name")] == every


def test_an_older_database_upgrades_in_place(tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), folder)
    db = tmp_path / "old.db"
    migrate(str(db), folder)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO logs (timestamp, endpoint, method) VALUES (?, ?, ?)",
            ("2026-01-01T00:00:00.000Z", "/api/chat", "POST"),
        )
    (folder / "9999_extra.sql").write_text(
        "ALTER TABLE logs ADD COLUMN extra TEXT;\nCREATE INDEX logs_extra ON logs (extra);\n"
    )
    assert migrate(str(db), folder) == ["9999_extra.sql"]
    assert "extra" in columns(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT endpoint FROM logs").fetchall() == [("/api/chat",)]


def test_a_failing_migration_leaves_no_trace(tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), folder)
    db = tmp_path / "a.db"
    migrate(str(db), folder)
    (folder / "9999_broken.sql").write_text("ALTER TABLE logs ADD COLUMN half TEXT;\nTHIS IS NOT SQL;\n")
    with pytest.raises(sqlite3.OperationalError):
        migrate(str(db), folder)
    assert "half" not in columns(db)
    with sqlite3.connect(db) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY name")]
    assert names == [p.name for p in available()]


def test_migrations_are_numbered_and_in_order() -> None:
    names = [p.name for p in available()]
    assert names == sorted(names) and names[0] == "0001_logs.sql"
    numbers = [int(n[:4]) for n in names]
    assert len(set(numbers)) == len(numbers)  # no two migrations share a number


def test_migrate_command(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    run = [sys.executable, "-m", "llm_proxy", "migrate", "--db", str(db)]
    first = subprocess.run(run, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    expected = "\n".join(f"applied {p.name}" for p in available())
    assert first.returncode == 0 and first.stdout.strip() == expected
    again = subprocess.run(run, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_the_wheel_carries_the_migrations(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(root)],
        check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    [wheel] = tmp_path.glob("llm_proxy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "llm_proxy/migrations/sqlite/0001_logs.sql" in names
    assert "llm_proxy/migrations/postgresql/0001_logs.sql" in names
    assert "llm_proxy/migrations/postgresql/views.sql" in names


# The Go LLM Proxy's schema, exactly as its README documents it (it keeps no migrations table).
GO_SCHEMA = """
CREATE TABLE logs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  timestamp DATETIME NOT NULL,
  endpoint TEXT NOT NULL,
  method TEXT NOT NULL,
  model TEXT,
  prompt TEXT,
  response TEXT,
  status_code INTEGER,
  latency_ms INTEGER,
  stream BOOLEAN,
  backend_type TEXT,
  error TEXT
);
"""
GO_ROWS = [
    # Go's sqlite driver writes time.Time as text like this; it leaves NULLs where it knows nothing.
    ("2026-11-30 10:00:00.123456789+00:00", "/api/chat", "POST", "llama3.2", "why is the sky blue",
     "Rayleigh scattering", 200, 812, 1, "openai", None),
    ("2026-11-30 10:01:00+00:00", "/api/tags", "GET", None, None, None, 200, 3, 0, "openai", None),
    ("2026-11-30 10:02:00+00:00", "/api/generate", "POST", "qwen", "hello", None, 502, 40, None,
     "ollama", "backend unavailable"),
]  # fmt: skip


def go_database(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.executescript(GO_SCHEMA)
        conn.executemany(
            "INSERT INTO logs (timestamp, endpoint, method, model, prompt, response, status_code, "
            "latency_ms, stream, backend_type, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            GO_ROWS,
        )
    conn.close()


def test_a_go_proxy_database_is_adopted_in_place(tmp_path: Path) -> None:
    db = tmp_path / "llm_proxy.db"
    go_database(db)
    run = [sys.executable, "-m", "llm_proxy", "migrate", "--db", str(db)]
    done = subprocess.run(run, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "adopted the Go proxy's logs table: 3 rows kept" in done.stdout
    assert columns(db)[: len(GO_COLUMNS)] == GO_COLUMNS
    assert set(columns(db)) >= {"request_id", "api", "turn_id", "key_name"}
    with sqlite3.connect(db) as conn:
        # Every old row, unchanged, through the Go README's own queries.
        old = conn.execute(
            "SELECT timestamp, endpoint, method, model, prompt, response, status_code, latency_ms, "
            "stream, backend_type, error FROM logs ORDER BY id"
        ).fetchall()
        assert old == GO_ROWS
        by_model = conn.execute(
            "SELECT model, AVG(latency_ms), COUNT(*) FROM logs WHERE error IS NULL "
            "GROUP BY model ORDER BY model"
        ).fetchall()
        assert by_model == [(None, 3.0, 1), ("llama3.2", 812.0, 1)]
        assert conn.execute("SELECT DISTINCT api FROM logs").fetchall() == [("ollama",)]
        # The search index covers the old rows too.
        hits = conn.execute("SELECT rowid FROM logs_fts WHERE logs_fts MATCH 'Rayleigh'").fetchall()
        assert hits == [(1,)]
        # New rows follow the old ones.
        conn.execute(
            "INSERT INTO logs (timestamp, endpoint, method) VALUES ('2026-12-01T00:00:00.000Z', '/', 'GET')"
        )
        assert conn.execute("SELECT max(id) FROM logs").fetchone() == (4,)
    again = subprocess.run(run, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_the_audit_commands_read_an_adopted_go_database(tmp_path: Path) -> None:
    db = tmp_path / "llm_proxy.db"
    go_database(db)
    migrate(str(db))
    for args, expected in (
        (["logs", "--db", str(db)], "why is the sky blue"),
        (["logs", "--db", str(db), "-q", "Rayleigh"], "llama3.2"),
        (["logs", "show", "1", "--db", str(db)], "Rayleigh scattering"),
        (["stats", "--db", str(db)], "qwen"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "llm_proxy", *args],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
        )
        assert done.returncode == 0, (args, done.stderr)
        assert expected in done.stdout, (args, done.stdout)


def test_a_foreign_logs_table_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE logs (line TEXT)")
    conn.close()
    with pytest.raises(sqlite3.DatabaseError, match="neither llm-proxy's nor the Go proxy's"):
        migrate(str(db))
    assert columns(db) == ["line"]
