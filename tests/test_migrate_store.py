"""`station-wf migrate-store`: a real daemon's SQLite database copied into a real Postgres, then served from it.

The runs a single node left (completed, parked on an approval, waiting for a signal) must be there on
Postgres and go on: the approval approved through the new daemon completes its run, the signal resumes
the other, and new rows get ids past every copied one. The refusals change nothing.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from station_wf.store.db import apply_migrations, connect
from tests.conftest import PLAIN, WAITS, Daemon, wait_until

GATED = """
id: gated
start: ask
states:
  - { name: ask, type: operation, action: human.approval, input: { message: "Go?" }, resultPath: decision, next: done }
  - { name: done, type: inject, data: { shipped: true }, end: true }
"""


def migrate_store(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "station_wf.cli", "migrate-store", *args],
                          capture_output=True, text=True, timeout=120)


def pg_rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


def with_workflows(d: Daemon) -> Daemon:
    for name, text in (("plain", PLAIN), ("waits", WAITS), ("gated", GATED)):
        d.add_workflow(name, text)
    return d


def pending_approval(d: Daemon, run_id: str) -> dict:
    return wait_until(lambda: next(iter(d.request("GET", f"/api/v1/workflow-runs/{run_id}/approvals").json()["approvals"]),
                                   None), what="the approval")


def test_sqlite_runs_move_to_postgres_and_go_on_there(daemon_factory: Callable[..., Daemon], postgres_db: str) -> None:
    old = with_workflows(daemon_factory("sqlite"))
    old.start()
    done = [old.start_run("plain")["id"] for _ in range(5)]
    for run_id in done:
        old.wait_status(run_id)
    gated = old.start_run("gated")["id"]
    approval = pending_approval(old, gated)
    waiting = old.start_run("waits")["id"]
    old.wait_status(waiting, "WAITING_SIGNAL")
    assert old.stop() == 0
    db = old.data_dir / "station-wf.db"
    with sqlite3.connect(db) as conn:
        source_counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
                         for t in ("workflow_runs", "workflow_run_events", "workflow_run_steps", "workflow_approvals")}
        max_event_id = conn.execute("SELECT max(id) FROM workflow_run_events").fetchone()[0]
        max_run_id = conn.execute("SELECT max(id) FROM workflow_runs").fetchone()[0]
        (old_token,) = conn.execute("SELECT token FROM leases WHERE name = 'singletons'").fetchone()

    result = migrate_store("--from", str(db), "--to", postgres_db)
    assert result.returncode == 0, result.stderr
    for table, count in source_counts.items():
        assert f"{table} " in result.stdout and f" {count:,} rows" in result.stdout, result.stdout
        assert pg_rows(postgres_db, f"SELECT count(*) FROM {table}") == [(count,)]

    new = with_workflows(daemon_factory("postgres"))
    new.env["STATION_DATABASE_URL"] = postgres_db
    new.start()
    # the singleton lease carried over: the new holder's fencing token is past the old node's
    lease = f"SELECT holder IS NOT NULL, token > {int(old_token)} FROM leases WHERE name = 'singletons'"
    wait_until(lambda: pg_rows(postgres_db, lease) == [(True, True)], what="the new daemon to take the lease")
    for run_id in done:
        assert new.run(run_id)["status"] == "COMPLETED"
    assert [e["seq"] for e in new.events(done[0])] == list(range(1, len(new.events(done[0])) + 1))
    inbox = new.request("GET", "/api/v1/workflow-approvals").json()["approvals"]
    assert [a["id"] for a in inbox] == [approval["id"]]
    ok = new.request("POST", f"/api/v1/workflow-runs/{gated}/approvals/{approval['id']}/approve", json={"comment": "go"})
    assert ok.status_code == 200, ok.text
    assert new.wait_status(gated)["context"]["shipped"] is True
    sent = new.request("POST", f"/api/v1/workflow-runs/{waiting}/signals", json={"name": "go", "payload": {"n": 1}})
    assert sent.status_code in (200, 201, 202), sent.text
    assert new.wait_status(waiting)["context"]["got"] == {"n": 1}
    fresh = new.start_run("plain")["id"]
    new.wait_status(fresh)
    # identity sequences moved past the copied ids: new rows never reuse an id (event ids are SSE cursors)
    assert pg_rows(postgres_db, f"SELECT min(id) FROM workflow_runs WHERE run_id = '{fresh}'")[0][0] > max_run_id
    assert pg_rows(postgres_db, f"SELECT min(id) FROM workflow_run_events WHERE run_id = '{fresh}'")[0][0] > max_event_id
    assert new.stop() == 0


def fresh_sqlite(path: Path) -> Path:
    """An empty station-wf database at this code's schema (what a daemon's first start leaves)."""
    conn = connect(path)
    apply_migrations(conn)
    conn.close()
    return path


def test_refuses_a_target_that_holds_rows(tmp_path: Path, postgres_db: str) -> None:
    db = fresh_sqlite(tmp_path / "data" / "station-wf.db")
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO relay_cursors (name, position) VALUES ('outbox', 7)")
    first = migrate_store("--from", str(db), "--to", postgres_db)
    assert first.returncode == 0, first.stderr
    again = migrate_store("--from", str(db), "--to", postgres_db)
    assert again.returncode == 1
    assert "the target database is not empty (table relay_cursors has rows)" in again.stderr
    assert pg_rows(postgres_db, "SELECT name, position FROM relay_cursors") == [("outbox", 7)]


def test_refuses_while_the_source_daemon_runs_then_copies_after_its_crash(daemon_factory: Callable[..., Daemon],
                                                                           postgres_db: str) -> None:
    d = with_workflows(daemon_factory("live"))
    d.start()
    db = d.data_dir / "station-wf.db"
    result = migrate_store("--from", str(db), "--to", postgres_db)
    assert result.returncode == 1
    assert "another station-wf daemon (pid" in result.stderr and "stop it first" in result.stderr
    assert pg_rows(postgres_db, "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()") == [(0,)]
    run_id = d.wait_status(d.start_run("plain")["id"])["id"]  # the running daemon was not disturbed
    d.kill()  # kill -9: the lock dies with it, the last commits may sit in the -wal file
    assert (db.parent / "station-wf.db-wal").exists()
    after = migrate_store("--from", str(db), "--to", postgres_db)
    assert after.returncode == 0, after.stderr
    assert pg_rows(postgres_db, f"SELECT status FROM workflow_runs WHERE run_id = '{run_id}'") == [("COMPLETED",)]


@pytest.mark.parametrize(("tamper", "message"), [
    ("DELETE FROM schema_migrations WHERE version = (SELECT max(version) FROM schema_migrations)",
     "is older than this version (missing"),
    ("INSERT INTO schema_migrations (version, applied_at) VALUES ('9999_from_the_future', 'x')",
     "was migrated by a newer station-wf (it has 9999_from_the_future"),
])
def test_refuses_a_source_of_another_schema_version(tamper: str, message: str, tmp_path: Path, postgres_db: str) -> None:
    db = fresh_sqlite(tmp_path / "data" / "station-wf.db")
    with sqlite3.connect(db) as conn:
        conn.execute(tamper)
    result = migrate_store("--from", str(db), "--to", postgres_db)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert pg_rows(postgres_db, "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()") == [(0,)]


def test_refuses_bad_arguments(tmp_path: Path, postgres_db: str) -> None:
    missing = migrate_store("--from", str(tmp_path / "nope.db"), "--to", postgres_db)
    assert missing.returncode == 1 and "no SQLite database at" in missing.stderr
    assert not (tmp_path / "nope.db").exists()
    not_pg = migrate_store("--from", str(tmp_path / "nope.db"), "--to", "mysql://x/y")
    assert not_pg.returncode == 1 and "--to must be a postgresql:// URL" in not_pg.stderr
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    bad = migrate_store("--from", str(garbage), "--to", postgres_db)
    assert bad.returncode == 1 and "is not a readable SQLite database" in bad.stderr
    unreachable = migrate_store("--from", str(fresh_sqlite(tmp_path / "d" / "station-wf.db")), "--to",
                                "postgresql://postgres@127.0.0.1:9/none")
    assert unreachable.returncode == 1 and "cannot connect to the target database" in unreachable.stderr


def test_sequences_pass_ids_sqlite_handed_out_and_deleted(tmp_path: Path, postgres_db: str) -> None:
    """Retention deletes rows; SQLite's AUTOINCREMENT never hands their ids out again, nor may Postgres."""
    db = fresh_sqlite(tmp_path / "data" / "station-wf.db")
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO outbox (subject, msg_id, payload, created_at) VALUES ('s', ?, '{}', 'now')",
                         [(f"m{i}",) for i in range(5)])
        conn.execute("DELETE FROM outbox WHERE id < 5")  # id 5 survives; 1-4 are gone
        conn.execute("INSERT INTO relay_cursors (name, position) VALUES ('gone', 1)")
        conn.execute("INSERT INTO outbox (subject, msg_id, payload, created_at) VALUES ('s', 'm5', '{}', 'now')")
        conn.execute("DELETE FROM outbox WHERE id = 6")  # the highest id ever handed out is gone too
    result = migrate_store("--from", str(db), "--to", postgres_db)
    assert result.returncode == 0, result.stderr
    assert pg_rows(postgres_db, "SELECT id FROM outbox") == [(5,)]
    with psycopg.connect(postgres_db, autocommit=True) as conn:
        new_id = conn.execute("INSERT INTO outbox (subject, msg_id, payload, created_at) VALUES ('s', 'x', '{}', 'now')"
                              " RETURNING id").fetchone()[0]
        first_timer = conn.execute("SELECT nextval(pg_get_serial_sequence('timers', 'id'))").fetchone()[0]
    assert new_id == 7
    assert first_timer == 1  # a table SQLite never wrote starts at 1
