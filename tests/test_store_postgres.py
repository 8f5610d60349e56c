"""The Postgres store against a real server: one schema from the one migration source, replicas'
writers serialised by the deployment's lock, commit-ordered event ids, a writer that outlives its
connection, and the change notices replicas wake each other with."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import psycopg
import pytest

from station_wf.store import pg
from station_wf.store.db import Writer, apply_migrations, connect, open_readers
from station_wf.store.storage_errors import StorageError

SEED_DEFINITION = ("INSERT INTO workflow_definitions (workflow_id, version, content_hash, source, definition, created_at)"
                   " VALUES ('w', 1, 'h', 'api', '{}', '2000-01-01')")
SEED_RUN = ("INSERT INTO workflow_runs (run_id, workflow_id, workflow_version, content_hash, status, input, context,"
            " created_at, updated_at) VALUES (?, 'w', 1, 'h', 'RUNNING', '{}', '{}', '2000', '2000')")


def _pg_columns(url: str) -> dict[str, dict[str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT table_name, column_name, data_type FROM information_schema.columns"
                            " WHERE table_schema = 'public'").fetchall()
    out: dict[str, dict[str, str]] = {}
    for table, column, kind in rows:
        out.setdefault(table, {})[column] = {"bigint": "INTEGER", "text": "TEXT", "double precision": "REAL"}[kind]
    return out


def _sqlite_columns(path: Path) -> dict[str, dict[str, str]]:
    conn = connect(path)
    apply_migrations(conn)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    out = {t: {r["name"]: r["type"] for r in conn.execute(f"PRAGMA table_info({t})")} for t in tables}
    conn.close()
    return out


def test_both_dialects_get_the_same_schema_from_the_one_migration_source(tmp_path: Path, postgres_db: str) -> None:
    writer = Writer(postgres_db)
    writer.start()
    writer.close()
    assert _pg_columns(postgres_db) == _sqlite_columns(tmp_path / "db.sqlite")
    with psycopg.connect(postgres_db) as conn:
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
        collations = {r[0] for r in conn.execute("SELECT DISTINCT collation_name FROM information_schema.columns"
                                                 " WHERE table_schema = 'public' AND data_type = 'text'")}
    assert {"workflow_runs_by_status", "timers_due", "workflow_signals_effect"} <= indexes
    assert collations == {"C"}  # text sorts by bytes, as SQLite compares it


def test_replicas_starting_together_migrate_once(postgres_db: str) -> None:
    writers = [Writer(postgres_db) for _ in range(3)]
    threads = [threading.Thread(target=w.start) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    versions = writers[0].run_sync(lambda c: [r[0] for r in c.execute("SELECT version FROM schema_migrations")])
    assert versions and len(versions) == len(set(versions))
    for w in writers:
        w.close()


def test_two_replicas_writers_never_interleave_a_read_modify_write(postgres_db: str) -> None:
    """Each transaction reads a counter and writes it back plus one, on two writers at once: with the
    deployment's write lock no increment is lost (READ COMMITTED alone would lose many)."""
    a, b = Writer(postgres_db), Writer(postgres_db)
    a.start()
    b.start()
    a.run_sync(lambda c: c.execute("CREATE TABLE counter (n BIGINT NOT NULL)"))
    a.run_sync(lambda c: c.execute("INSERT INTO counter (n) VALUES (0)"))

    def bump(conn: pg.PgConnection) -> None:
        n = conn.execute("SELECT n FROM counter").fetchone()[0]
        time.sleep(0.0005)  # widen the window a lost update needs
        conn.execute("UPDATE counter SET n = ?", (n + 1,))

    async def both() -> None:
        await asyncio.gather(*(w.run(bump) for w in (a, b) for _ in range(150)))

    asyncio.run(both())
    assert a.run_sync(lambda c: c.execute("SELECT n FROM counter").fetchone()[0]) == 300
    a.close()
    b.close()


def test_event_ids_are_commit_ordered_across_replicas(postgres_db: str) -> None:
    """A reader that pages `id > cursor` (the hub, the relays) while two writers append events must
    see every event: an id committed after a higher one would be skipped for good."""
    a, b = Writer(postgres_db), Writer(postgres_db)
    a.start()
    b.start()
    a.run_sync(lambda c: (c.execute(SEED_DEFINITION), c.execute(SEED_RUN, ("ra",)), c.execute(SEED_RUN, ("rb",))))
    seq = {"ra": 0, "rb": 0}

    def append(run_id: str):
        def fn(conn: pg.PgConnection) -> None:
            seq[run_id] += 1
            conn.execute("INSERT INTO workflow_run_events (run_id, seq, type, created_at) VALUES (?, ?, 't', '2000')",
                         (run_id, seq[run_id]))
            time.sleep(0.0002)
        return fn

    async def go() -> list[int]:
        readers = open_readers(postgres_db)
        await readers.open()
        seen: list[int] = []
        cursor = 0
        writes = asyncio.gather(*(w.run(append(r)) for _ in range(120) for w, r in ((a, "ra"), (b, "rb"))))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = await readers.fetchall("SELECT id FROM workflow_run_events WHERE id > ? ORDER BY id", (cursor,))
            seen += [r["id"] for r in rows]
            cursor = seen[-1] if seen else cursor
            if writes.done() and not rows:
                break
            await asyncio.sleep(0)
        await writes
        await readers.close()
        return seen

    seen = asyncio.run(go())
    stored = a.run_sync(lambda c: [r[0] for r in c.execute("SELECT id FROM workflow_run_events ORDER BY id")])
    assert len(stored) == 240 and seen == stored
    a.close()
    b.close()


def test_the_writer_outlives_a_lost_connection(postgres_db: str) -> None:
    """The server ends the writer's session (a failover, a restart): that group answers 503, the next
    one reconnects, and nothing of the failed one was stored."""
    writer = Writer(postgres_db)
    writer.start()
    writer.run_sync(lambda c: c.execute("CREATE TABLE t (k TEXT PRIMARY KEY)"))
    pid = writer.run_sync(lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0])
    with psycopg.connect(postgres_db, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    async def after() -> list[object]:
        out: list[object] = []
        for key in ("lost", "kept"):
            try:
                out.append(await writer.run(lambda c, k=key: c.execute("INSERT INTO t (k) VALUES (?)", (k,)) and k))
            except StorageError as exc:
                out.append(exc.status)
        return out

    outcome = asyncio.run(after())
    assert outcome in ([503, "kept"], ["lost", "kept"])
    stored = writer.run_sync(lambda c: sorted(r[0] for r in c.execute("SELECT k FROM t")))
    assert stored == (["kept"] if outcome[0] == 503 else ["kept", "lost"])
    assert writer.run_sync(lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0]) != pid
    writer.close()


def test_a_commit_on_one_replica_wakes_the_others(postgres_db: str) -> None:
    writer = Writer(postgres_db)
    writer.start()

    async def go() -> int:
        woke = asyncio.Event()
        feed = pg.ChangeFeed(postgres_db, "another-replica", woke.set)
        task = asyncio.create_task(feed.run())
        await asyncio.wait_for(woke.wait(), 10)  # the first call: after (re)connecting, once
        woke.clear()
        await writer.run(lambda c: c.execute("SELECT 1"))
        await asyncio.wait_for(woke.wait(), 10)
        feed.stop()
        task.cancel()
        return feed.notices

    assert asyncio.run(go()) >= 1
    writer.close()


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT ? AS a", "SELECT %s AS a"),
    ("SELECT '50%' WHERE x = ?", "SELECT '50%%' WHERE x = %s"),
    ("SELECT 'why?' , \"q?\" FROM t WHERE a % 2 = ?", "SELECT 'why?' , \"q?\" FROM t WHERE a %% 2 = %s"),
])
def test_placeholders_are_translated_outside_quoted_text_only(sql: str, expected: str) -> None:
    assert pg.translate(sql) == expected


def test_rows_read_by_index_and_name_and_flags_stored_as_integers(postgres_db: str) -> None:
    writer = Writer(postgres_db)
    writer.start()
    row = writer.run_sync(lambda c: c.execute("SELECT ? AS flag, SUM(x) AS total, 'v' AS name FROM (SELECT 2 AS x) s",
                                              (True,)).fetchone())
    assert row[0] == 1 and row["flag"] == 1 and row["total"] == 2 and isinstance(row["total"], int)
    assert dict(row) == {"flag": 1, "total": 2, "name": "v"}
    writer.close()
