"""Durable timers (invariant 5): writing them, the due ones, firing one by compare-and-set, recording a
failed firing, and closing the timers a transition made moot. The timer loop is `engine/timers.py`."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from station_wf.core import model
from station_wf.store import dialect
from station_wf.store.db import Readers, utcnow
from station_wf.store.jsontext import dumps

STEP_TIMEOUT = "step_timeout"
APPROVAL_TIMEOUT = "approval_timeout"
SIGNAL_TIMEOUT = "signal_timeout"


def add(conn: sqlite3.Connection, run_id: str, kind: str, delay: float, step: str | None = None,
        attempt: int | None = None, payload: dict[str, Any] | None = None) -> None:
    """A durable timer: fired by the timer loop, which re-checks state before acting."""
    body = dict(payload or {})
    if attempt is not None:
        body["attempt"] = attempt
    conn.execute(
        "INSERT INTO timers (run_id, step_id, kind, due_at, payload, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        (run_id, step, kind, time.time() + delay, dumps(body), utcnow()),
    )


async def due_ids(readers: Readers, now: float, limit: int) -> list[int]:
    """Due, unfired timers of runs that are not paused (a paused run's timers fire on resume)."""
    rows = await readers.fetchall(
        f"""SELECT t.id FROM timers t JOIN workflow_runs r ON r.run_id = t.run_id
           WHERE t.fired_at IS NULL AND t.due_at <= ? AND r.status != '{model.PAUSED}' ORDER BY t.due_at LIMIT ?""",
        (now, limit),
    )
    return [r["id"] for r in rows]


async def backlog(readers: Readers, now: float) -> int:
    """Timers due and not fired yet (a gauge: a growing number means the loop falls behind)."""
    row = await readers.fetchone("SELECT COUNT(*) AS n FROM timers WHERE fired_at IS NULL AND due_at <= ?", (now,))
    return row["n"] if row else 0


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


def close_for_step(conn: sqlite3.Connection, run_id: str, step: str, kind: str, now: str | None = None) -> None:
    """The wait a timer guards ended another way (decided, signalled): it will never fire."""
    conn.execute("UPDATE timers SET fired_at = ? WHERE run_id = ? AND step_id = ? AND kind = ? AND fired_at IS NULL",
                 (now or utcnow(), run_id, step, kind))


def close_for_run(conn: sqlite3.Connection, run_id: str, now: str) -> None:
    """A finished run's timers will never fire."""
    conn.execute("UPDATE timers SET fired_at = ? WHERE run_id = ? AND fired_at IS NULL", (now, run_id))


def step_timeout_left(conn: sqlite3.Connection, run_id: str, step: str, attempt: int) -> float | None:
    """Seconds until the attempt's durable timeout (negative: overdue), or None without one."""
    row = conn.execute(
        f"""SELECT due_at FROM timers WHERE run_id = ? AND step_id = ? AND kind = '{STEP_TIMEOUT}' AND fired_at IS NULL
             AND {dialect.of(conn).payload_attempt} = ? ORDER BY id LIMIT 1""", (run_id, step, attempt)).fetchone()
    return None if row is None else row["due_at"] - time.time()


def close_step_timeout(conn: sqlite3.Connection, run_id: str, step: str, attempt: int) -> None:
    conn.execute(f"""UPDATE timers SET fired_at = ? WHERE run_id = ? AND step_id = ? AND kind = '{STEP_TIMEOUT}'
                      AND fired_at IS NULL AND {dialect.of(conn).payload_attempt} = ?""", (utcnow(), run_id, step, attempt))
