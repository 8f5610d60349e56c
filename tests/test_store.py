"""The store: migrations apply once, and group commit isolates each transaction in its batch (the
tests taking `store_target` run on SQLite and on Postgres)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from station_wf.store.db import Writer, apply_migrations, connect, open_readers


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


def test_group_commit_isolates_failures(store_target: Path | str) -> None:
    writer = Writer(store_target)
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


def test_a_group_sqlite_rolled_back_fails_every_future_and_the_writer_keeps_serving(tmp_path: Path) -> None:
    """SQLITE_FULL for real (a page cap): SQLite rolls the whole group back, savepoints included, so the
    transactions already released with it must fail too; the thread then serves the next group."""
    from station_wf.store.storage_errors import StorageError

    writer = Writer(tmp_path / "db.sqlite", max_bytes=1)  # capped at the pages migrations left
    writer.start()
    lost: list[str] = []
    gate = threading.Event()

    def small(key: str):
        def fn(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT INTO relay_cursors (name, position) VALUES (?, 1)", (key,))
            return key
        return fn

    def huge(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO relay_cursors (name, position) VALUES (?, 1)", ("x" * 200_000,))

    entered = threading.Event()

    async def group() -> list:
        held = asyncio.ensure_future(writer.run(lambda c: (entered.set(), gate.wait(10))))  # hold the thread ...
        assert await asyncio.to_thread(entered.wait, 10)
        writer.ride_along("r+", lambda c: None, on_lost=lambda: lost.append("r"))
        futures = [asyncio.ensure_future(writer.run(fn)) for fn in (small("a"), huge, small("b"))]
        for _ in range(500):
            if writer._queue.qsize() == 3:
                break
            await asyncio.sleep(0.01)
        gate.set()  # ... so that the rider and these three share the next group
        await held
        return await asyncio.gather(*futures, return_exceptions=True)

    results = asyncio.run(group())
    assert all(isinstance(r, StorageError) and r.status == 507 and r.code == "storage_full" for r in results), results
    assert lost == ["r"]  # the rider's owner hears that its work was rolled back
    health = writer.health()
    assert not health.ok and health.failures_in_row == 1 and "database or disk is full" in (health.last_error or "")
    names = writer.run_sync(lambda c: [r[0] for r in c.execute("SELECT name FROM relay_cursors")])
    assert names == []  # "a" was released before "huge" broke the group: rolled back, and its caller knows
    assert writer.run_sync(small("c")) == "c" and writer.health().failures_in_row == 0  # still serving
    writer.close()


def test_repeated_fatal_errors_stop_the_writer_and_call_on_fatal(tmp_path: Path) -> None:
    from station_wf.store.db import FATAL_AFTER, WriterClosed
    from station_wf.store.storage_errors import StorageError, injected_ioerr

    fatal: list[BaseException] = []
    writer = Writer(tmp_path / "db.sqlite", on_fatal=fatal.append)
    writer.start()

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("ROLLBACK")  # as SQLite does on an I/O error: the transaction is gone
        raise injected_ioerr("test")

    for _ in range(FATAL_AFTER):
        with pytest.raises(StorageError) as err:
            writer.run_sync(broken)
        assert err.value.status == 503
    assert len(fatal) == 1 and "disk I/O error" in str(fatal[0])
    assert writer.health().stopped is not None and not writer.health().ok
    with pytest.raises(WriterClosed):
        asyncio.run(writer.run(lambda c: None))
    writer.close()


def test_retention_deletes_bounded_batches_of_rows_not_whole_runs(store_target: Path | str) -> None:
    """A finished run with 12,000 events goes in transactions of at most 1,000 rows; a running one stays."""
    from station_wf.engine.retention import prune_once
    from station_wf.store.retention_rows import prune_some

    writer = Writer(store_target)
    writer.start()

    def seed(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO workflow_definitions (workflow_id, version, content_hash, source, definition, created_at)"
                     " VALUES ('w', 1, 'h', 'api', '{}', '2000-01-01')")
        for run_id, status in (("old", "COMPLETED"), ("live", "RUNNING")):
            conn.execute("INSERT INTO workflow_runs (run_id, workflow_id, workflow_version, content_hash, status, input,"
                         " context, created_at, updated_at, completed_at) VALUES (?, 'w', 1, 'h', ?, '{}', '{}',"
                         " '2000-01-01', '2000-01-01', '2000-01-01')", (run_id, status))
        conn.executemany("INSERT INTO workflow_run_events (run_id, seq, type, created_at) VALUES (?, ?, 't', '2000')",
                         [(r, i) for r in ("old", "live") for i in range(1, 12_001)])

    writer.run_sync(seed)
    events = "SELECT run_id, COUNT(*) FROM workflow_run_events GROUP BY run_id ORDER BY run_id"
    assert writer.run_sync(lambda c: prune_some(c, "2001-01-01", 200, 1000)) == (1000, 0)
    assert writer.run_sync(lambda c: [tuple(r) for r in c.execute(events)]) == [("live", 12_000), ("old", 11_000)]
    before = writer.transactions
    assert asyncio.run(prune_once(writer, 1.0, rows_per_tx=1000)) == 1
    assert writer.transactions - before >= 12  # 11,000 rows, 1,000 per transaction, then the run itself
    runs = writer.run_sync(lambda c: [r[0] for r in c.execute("SELECT run_id FROM workflow_runs")])
    assert runs == ["live"]
    assert writer.run_sync(lambda c: [tuple(r) for r in c.execute(events)]) == [("live", 12_000)]
    writer.close()


def test_a_cron_the_scheduler_cannot_parse_is_reported_once(store_target: Path | str, caplog: pytest.LogCaptureFixture) -> None:
    """An old row (or one the loader let through) with a cron the scheduler rejects: logged and shown as
    `lastError` on the schedule, once, instead of being skipped in silence on every tick."""
    from station_wf.engine.schedules import ScheduleLoop, schedule_to_api

    writer = Writer(store_target)
    writer.start()
    writer.run_sync(lambda c: (
        c.execute("INSERT INTO workflow_definitions (workflow_id, version, content_hash, source, definition, created_at)"
                  " VALUES ('w', 1, 'h', 'api', '{}', '2000-01-01')"),
        c.execute("INSERT INTO workflow_schedules (schedule_id, workflow_id, idx, cron, timezone, last_fire_at, created_at,"
                  " updated_at) VALUES ('w:0', 'w', 0, '*/0 * * * *', 'UTC', 0, '2000', '2000')")))

    async def go() -> list[int]:
        readers = open_readers(store_target)
        await readers.open()
        loop = ScheduleLoop(writer, readers, on_commit=lambda: None)
        fired = [await loop.fire_due() for _ in range(3)]
        await readers.close()
        return fired

    with caplog.at_level("ERROR", logger="station_wf.engine.schedules"):
        assert asyncio.run(go()) == [0, 0, 0]
    assert [r.getMessage() for r in caplog.records if "cannot be parsed" in r.getMessage()] == [
        "schedule w:0: cron '*/0 * * * *' (timezone 'UTC') cannot be parsed: "
        + caplog.records[0].getMessage().split("cannot be parsed: ")[1]]
    row = writer.run_sync(lambda c: c.execute("SELECT * FROM workflow_schedules").fetchone())
    shown = schedule_to_api(row, 0.0)
    assert "cannot be parsed" in shown["lastError"]["message"] and shown["nextFireAt"] is None
    writer.close()


def test_a_timer_of_a_run_paused_since_the_read_does_not_fire(store_target: Path | str) -> None:
    """The timer loop reads due timers outside the transaction; a pause that commits in between must win."""
    from station_wf.engine.timers import TimerLoop
    from station_wf.store.definitions import DefinitionCache

    writer = Writer(store_target)
    writer.start()

    def seed(conn: sqlite3.Connection) -> list[int]:
        conn.execute("INSERT INTO workflow_definitions (workflow_id, version, content_hash, source, definition, created_at)"
                     " VALUES ('w', 1, 'h', 'api', '{}', '2000-01-01')")
        ids = []
        for run_id, status in (("paused", "PAUSED"), ("done", "COMPLETED")):
            conn.execute("INSERT INTO workflow_runs (run_id, workflow_id, workflow_version, content_hash, status, input,"
                         " context, created_at, updated_at) VALUES (?, 'w', 1, 'h', ?, '{}', '{}', '2000', '2000')",
                         (run_id, status))
            ids.append(conn.execute("INSERT INTO timers (run_id, kind, due_at, created_at) VALUES (?, 'sleep', 0, '2000')"
                                    " RETURNING id", (run_id,)).fetchone()[0])
        return ids

    ids = writer.run_sync(seed)
    loop = TimerLoop(writer, None, DefinitionCache(), on_commit=lambda: None)  # type: ignore[arg-type]
    writer.run_sync(lambda conn: loop._tx_fire(conn, ids))
    fired = dict(writer.run_sync(lambda c: [tuple(r) for r in c.execute("SELECT run_id, fired_at IS NOT NULL FROM timers")]))
    assert fired == {"paused": 0, "done": 1}  # the paused run's timer waits for resume; the other was consumed
    writer.close()


def test_after_commit_runs_only_for_committed_attempts(store_target: Path | str) -> None:
    """A metric counted in a transaction must not count a rolled-back attempt (review 1.9)."""
    from station_wf.deferral import after_commit

    writer = Writer(store_target)
    writer.start()
    seen: list[str] = []

    def tx(key: str, fail: bool):
        def fn(conn: sqlite3.Connection) -> None:
            after_commit(lambda: seen.append(key))
            if fail:
                raise ValueError(key)
        return fn

    async def main() -> None:
        await writer.run(tx("ok", False))
        with pytest.raises(ValueError):
            await writer.run(tx("rolled-back", True))

    asyncio.run(main())
    writer.close()
    assert seen == ["ok"]
