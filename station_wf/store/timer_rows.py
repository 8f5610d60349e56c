"""The SQL of the timer loop: due timers, firing one by compare-and-set, and recording a failure."""

from __future__ import annotations

import sqlite3
import time

from station_wf.store.db import SqliteReaders, utcnow
from station_wf.store.jsontext import dumps


async def due_ids(readers: SqliteReaders, now: float, limit: int) -> list[int]:
    """Due, unfired timers of runs that are not paused (a paused run's timers fire on resume)."""
    rows = await readers.fetchall(
        """SELECT t.id FROM timers t JOIN workflow_runs r ON r.run_id = t.run_id
           WHERE t.fired_at IS NULL AND t.due_at <= ? AND r.status != 'PAUSED' ORDER BY t.due_at LIMIT ?""",
        (now, limit),
    )
    return [r["id"] for r in rows]


def load_unfired(conn: sqlite3.Connection, timer_id: int) -> sqlite3.Row | None:
    """The timer with its run's status now (inside the transaction, so a pause that just committed counts)."""
    return conn.execute(
        """SELECT t.*, r.status AS run_status, r.workflow_id AS workflow_id FROM timers t LEFT JOIN workflow_runs r ON r.run_id = t.run_id
           WHERE t.id = ? AND t.fired_at IS NULL""", (timer_id,)).fetchone()


def mark_fired(conn: sqlite3.Connection, timer_id: int) -> None:
    conn.execute("UPDATE timers SET fired_at = ? WHERE id = ?", (utcnow(), timer_id))


def record_failure(conn: sqlite3.Connection, timer_id: int, error: dict[str, str], retry_in: float | None) -> None:
    """Count a failed firing: due again after `retry_in` seconds, or (None) quarantined for good."""
    if retry_in is None:
        conn.execute("UPDATE timers SET attempts = attempts + 1, error = ?, fired_at = ? WHERE id = ?",
                     (dumps(error), utcnow(), timer_id))
    else:
        conn.execute("UPDATE timers SET attempts = attempts + 1, error = ?, due_at = ? WHERE id = ?",
                     (dumps(error), time.time() + retry_in, timer_id))

