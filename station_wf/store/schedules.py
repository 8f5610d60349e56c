"""Cron schedules: the table kept in step with each workflow's latest definition, the schedules that
may fire, and claiming a tick by compare-and-set on `last_fire_at` (so a tick starts one run, ever)."""

from __future__ import annotations

import sqlite3
from typing import Any

from station_wf.store import dialect
from station_wf.store.db import Readers, utcnow
from station_wf.store.jsontext import dumps


def sync(conn: sqlite3.Connection, workflow_id: str, wanted: list[dict[str, Any]], now: float) -> None:
    """Make the rows match `wanted` (the definition's schedules); a new or moved schedule starts from
    `now` (no back-fill), one no longer defined is kept but marked `defined = 0`."""
    stamp = utcnow()
    for idx, sched in enumerate(wanted):
        sid = f"{workflow_id}:{idx}"
        row = conn.execute("SELECT cron, timezone FROM workflow_schedules WHERE schedule_id = ?", (sid,)).fetchone()
        values = (sched["cron"], sched.get("timezone") or "UTC", dumps(sched.get("input") or {}))
        if row is None:
            conn.execute(
                """INSERT INTO workflow_schedules (schedule_id, workflow_id, idx, cron, timezone, input, enabled, last_fire_at,
                       created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (sid, workflow_id, idx, *values, 1 if sched.get("enabled", True) else 0, now, stamp, stamp),
            )
        else:
            moved = (row["cron"], row["timezone"]) != values[:2]
            conn.execute(
                "UPDATE workflow_schedules SET cron = ?, timezone = ?, input = ?, defined = 1, updated_at = ?"
                + (f", last_fire_at = {dialect.of(conn).greatest}(last_fire_at, ?)" if moved else "") + " WHERE schedule_id = ?",
                (*values, stamp, *((now,) if moved else ()), sid),
            )
    conn.execute("UPDATE workflow_schedules SET defined = 0, updated_at = ? WHERE workflow_id = ? AND idx >= ?",
                 (stamp, workflow_id, len(wanted)))


async def live(readers: Readers) -> list[sqlite3.Row]:
    """Enabled, defined schedules of active workflows: the ones that may fire."""
    return await readers.fetchall(
        """SELECT s.* FROM workflow_schedules s WHERE s.enabled = 1 AND s.defined = 1 AND EXISTS (
               SELECT 1 FROM workflow_definitions d WHERE d.workflow_id = s.workflow_id AND d.status = 'active')"""
    )


def claim_tick(conn: sqlite3.Connection, schedule_id: str, tick: float, previous: float) -> bool:
    """Record `tick` as fired if no one recorded another since `previous` (compare-and-set)."""
    return conn.execute(
        "UPDATE workflow_schedules SET last_fire_at = ?, updated_at = ? WHERE schedule_id = ? AND last_fire_at = ?",
        (tick, utcnow(), schedule_id, previous),
    ).rowcount == 1


def set_error(conn: sqlite3.Connection, schedule_id: str, error: dict[str, Any]) -> None:
    conn.execute("UPDATE workflow_schedules SET last_error = ? WHERE schedule_id = ?", (dumps(error), schedule_id))


def set_error_for_cron(conn: sqlite3.Connection, schedule_id: str, cron: str, error: dict[str, Any]) -> None:
    """The error of a cron that cannot be parsed, unless the cron was changed meanwhile."""
    conn.execute("UPDATE workflow_schedules SET last_error = ?, updated_at = ? WHERE schedule_id = ? AND cron = ?",
                 (dumps(error), utcnow(), schedule_id, cron))


def set_started(conn: sqlite3.Connection, schedule_id: str, run_id: str) -> None:
    conn.execute("UPDATE workflow_schedules SET last_run_id = ?, last_error = NULL WHERE schedule_id = ?",
                 (run_id, schedule_id))
