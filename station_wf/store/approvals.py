"""Approvals and signals: the rows people act on. Approvals are decided once (the `pending` status is
the compare-and-set); signals are kept in delivery order and consumed once (`consumed_by IS NULL`)."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

from station_wf.store.jsontext import dumps

PENDING = "pending"
CLOSED = "closed"


def insert(conn: sqlite3.Connection, approval: Any, run_id: str, workflow_id: str, now: str) -> None:
    """A pending approval from a transition (`approval` is the interpreter's `NewApproval`)."""
    expires = None
    if approval.timeout_seconds:
        expires = (datetime.fromtimestamp(time.time() + approval.timeout_seconds, UTC)
                   .isoformat(timespec="microseconds").replace("+00:00", "Z"))
    conn.execute(
        f"""INSERT INTO workflow_approvals (approval_id, run_id, step_id, attempt, workflow_id, state_name, status, message,
               summary, approvers, on_reject, on_timeout, created_at, expires_at)
           VALUES (?, ?, ?, ?, ?, ?, '{PENDING}', ?, ?, ?, ?, ?, ?, ?)""",
        (approval.approval_id, run_id, approval.step_id, approval.attempt, workflow_id, approval.state_name,
         approval.message, dumps(approval.summary), dumps(approval.approvers), approval.on_reject, approval.on_timeout,
         now, expires),
    )


def load(conn: sqlite3.Connection, run_id: str, approval_id: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM workflow_approvals WHERE approval_id = ? AND run_id = ?",
                        (approval_id, run_id)).fetchone()


def decide(conn: sqlite3.Connection, approval_id: str, decision: str, decided_by: str | None, comment: str | None,
           now: str) -> None:
    conn.execute(
        f"UPDATE workflow_approvals SET status = ?, decided_by = ?, comment = ?, decided_at = ? WHERE approval_id = ? AND status = '{PENDING}'",
        (decision, decided_by, comment, now, approval_id),
    )


def close_pending(conn: sqlite3.Connection, run_id: str, now: str) -> None:
    """A finished run's open approvals can no longer be decided."""
    conn.execute(f"UPDATE workflow_approvals SET status = '{CLOSED}', decided_at = ? WHERE run_id = ? AND status = '{PENDING}'",
                 (now, run_id))


# -- signals --------------------------------------------------------------------------------------
def pending_signals(conn: sqlite3.Connection, run_id: str) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT id, name, payload FROM workflow_signals WHERE run_id = ? AND consumed_by IS NULL ORDER BY id", (run_id,)
    ).fetchall()


def signal_by_effect(conn: sqlite3.Connection, effect_id: str) -> sqlite3.Row | None:
    """The signal a retried request already delivered, if any."""
    return conn.execute("SELECT id, name, consumed_by FROM workflow_signals WHERE effect_id = ?", (effect_id,)).fetchone()


def insert_signal(conn: sqlite3.Connection, run_id: str, name: str, payload: Any, sender: str | None, now: str,
                  effect_id: str | None) -> int:
    return conn.execute(
        "INSERT INTO workflow_signals (run_id, name, payload, sender, received_at, effect_id) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        (run_id, name, dumps(payload), sender, now, effect_id),
    ).fetchone()[0]


def consume_signal(conn: sqlite3.Connection, signal_id: int, consumer: str, now: str) -> None:
    conn.execute("UPDATE workflow_signals SET consumed_by = ?, consumed_at = ? WHERE id = ? AND consumed_by IS NULL",
                 (consumer, now, signal_id))
