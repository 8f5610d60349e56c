"""SQLite store: migrations apply once, and group commit isolates each transaction in its batch."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from station_wf.store.db import SqliteWriter, apply_migrations, connect


def test_migrations_apply_once_and_are_recorded(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db.sqlite")
    first = apply_migrations(conn)
    assert first and first[0] == "0001_core"
    assert apply_migrations(conn) == []  # re-running is a no-op
    recorded = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert recorded == first
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"workflow_definitions", "workflow_runs", "workflow_run_steps", "workflow_run_events",
            "workflow_approvals", "outbox", "timers"} <= tables
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    conn.close()


def test_group_commit_isolates_failures(tmp_path: Path) -> None:
    writer = SqliteWriter(tmp_path / "db.sqlite")
    writer.start()
    writer.run_sync(lambda c: c.execute("CREATE TABLE t (k TEXT PRIMARY KEY)"))

    def insert(key: str):
        def fn(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT INTO t (k) VALUES (?)", (key,))
            if key.startswith("bad"):
                raise ValueError(key)
            return key
        return fn

    async def burst() -> list:
        keys = [f"ok{i}" if i % 3 else f"bad{i}" for i in range(60)]
        return await asyncio.gather(*(writer.run(insert(k)) for k in keys), return_exceptions=True)

    results = asyncio.run(burst())
    ok = [r for r in results if isinstance(r, str)]
    bad = [r for r in results if isinstance(r, ValueError)]
    assert len(ok) == 40 and len(bad) == 20
    stored = {r[0] for r in writer.run_sync(lambda c: c.execute("SELECT k FROM t").fetchall())}
    assert stored == set(ok)  # a failed transaction left nothing; its neighbours committed
    assert writer.commits < writer.transactions  # several transactions shared a commit
    writer.close()
    with pytest.raises(RuntimeError):
        asyncio.run(writer.run(insert("late")))
