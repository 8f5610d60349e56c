"""Concurrency slots and queues (issue 18): the SQL of `governance/admission.py`.

A run of a limited workflow (or any run, when an overall maximum is set) holds a row: `queued = 0`
while it holds a slot, `queued = 1` while it waits; the row goes when the run ends, and in that
same transaction the oldest waiting runs that now fit get their slot and their run task. Counting
from these rows (never from memory) is what makes the limits hold across a kill -9 and replicas
(every writer transaction is serialised: SQLite's one writer, Postgres' deployment write lock).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from station_wf.protocol import run_task
from station_wf.store import outbox
from station_wf.store.db import utcnow

PROMOTE_SCAN = 200
"""Waiting rows looked at per release when an overall maximum is set (the oldest first)."""


def _count(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> int:
    return int(conn.execute(sql, params).fetchone()[0])


def running_for_key(conn: sqlite3.Connection, workflow_id: str, key: str) -> int:
    return _count(conn, "SELECT COUNT(*) FROM governance_slots WHERE workflow_id = ? AND slot_key = ? AND queued = 0",
                  (workflow_id, key))


def running_overall(conn: sqlite3.Connection) -> int:
    return _count(conn, "SELECT COUNT(*) FROM governance_slots WHERE queued = 0", ())


def waiting_for_key(conn: sqlite3.Connection, workflow_id: str, key: str) -> bool:
    return conn.execute("SELECT 1 FROM governance_slots WHERE workflow_id = ? AND slot_key = ? AND queued = 1 LIMIT 1",
                        (workflow_id, key)).fetchone() is not None


def hold(conn: sqlite3.Connection, run_id: str, workflow_id: str, key: str, limit: int | None, queued: bool) -> None:
    conn.execute("INSERT INTO governance_slots (run_id, workflow_id, slot_key, slot_limit, queued, created_at)"
                 " VALUES (?, ?, ?, ?, ?, ?)", (run_id, workflow_id, key, limit, 1 if queued else 0, utcnow()))


def is_queued(conn: sqlite3.Connection, run_id: str) -> bool:
    """Inside a writer transaction: is this run waiting for a slot (its run task must not start it)?"""
    return conn.execute("SELECT 1 FROM governance_slots WHERE run_id = ? AND queued = 1", (run_id,)).fetchone() is not None


def release(conn: sqlite3.Connection, run_id: str, overall_max: int) -> list[str]:
    """The run ended: drop its row and give freed slots to the oldest waiting runs that fit, each
    with its run task (published when this transaction commits). Returns the runs promoted."""
    row = conn.execute("SELECT workflow_id, slot_key FROM governance_slots WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        return []
    conn.execute("DELETE FROM governance_slots WHERE run_id = ?", (run_id,))
    if overall_max <= 0:  # only this key's queue can move
        rows = conn.execute("SELECT id, run_id, workflow_id, slot_key, slot_limit FROM governance_slots"
                            " WHERE workflow_id = ? AND slot_key = ? AND queued = 1 ORDER BY id LIMIT 1",
                            (row["workflow_id"], row["slot_key"])).fetchall()
    else:
        rows = conn.execute("SELECT id, run_id, workflow_id, slot_key, slot_limit FROM governance_slots WHERE queued = 1"
                            " ORDER BY id LIMIT ?", (PROMOTE_SCAN,)).fetchall()
    return _promote(conn, rows, overall_max)


def _promote(conn: sqlite3.Connection, rows: list[Any], overall_max: int) -> list[str]:
    overall = running_overall(conn) if overall_max > 0 else 0
    running: dict[tuple[str, str], int] = {}
    blocked: set[tuple[str, str]] = set()
    promoted: list[str] = []
    for r in rows:
        if overall_max > 0 and overall >= overall_max:
            break
        key = (r["workflow_id"], r["slot_key"])
        if key in blocked:
            continue  # an older run of this key waits: order is kept within a key
        if r["slot_limit"] is not None:
            if key not in running:
                running[key] = running_for_key(conn, *key)
            if running[key] >= r["slot_limit"]:
                blocked.add(key)
                continue
            running[key] += 1
        conn.execute("UPDATE governance_slots SET queued = 0 WHERE id = ?", (r["id"],))
        run = conn.execute("SELECT traceparent FROM workflow_runs WHERE run_id = ?", (r["run_id"],)).fetchone()
        if run is not None:
            outbox.enqueue_task(conn, run_task(r["run_id"], run["traceparent"], "slot"))
        overall += 1
        promoted.append(r["run_id"])
    return promoted


async def queue_position(readers: Any, run_id: str) -> dict[str, Any] | None:
    """`{"key", "position", "limit"}` (1 = next) for a waiting run; None when it is not waiting."""
    row = await readers.fetchone("SELECT id, workflow_id, slot_key, slot_limit FROM governance_slots"
                                 " WHERE run_id = ? AND queued = 1", (run_id,))
    if row is None:
        return None
    ahead = await readers.fetchone("SELECT COUNT(*) AS n FROM governance_slots WHERE workflow_id = ? AND slot_key = ?"
                                   " AND queued = 1 AND id <= ?", (row["workflow_id"], row["slot_key"], row["id"]))
    return {"key": row["slot_key"], "position": int(ahead["n"]), "limit": row["slot_limit"]}
