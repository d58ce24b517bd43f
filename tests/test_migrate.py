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
    assert "llm_proxy/migrations/0001_logs.sql" in names
