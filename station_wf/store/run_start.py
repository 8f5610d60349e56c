"""SQL of starting a run in the transaction that creates it (`engine/runs.py`): withdrawing the run
task its insert queued once the start was decided there, and reading the run back for the answer."""

from __future__ import annotations

import sqlite3
from typing import Any

from station_wf.protocol import run_task, task_msg_id
from station_wf.store import context_patches


def outbox_mark(conn: sqlite3.Connection) -> int:
    """The outbox's last id before the insert: the run task is looked for only among later rows."""
    return conn.execute("SELECT COALESCE(MAX(id), 0) FROM outbox").fetchone()[0]


def withdraw_run_task(conn: sqlite3.Connection, after_id: int, run_id: str, traceparent: str | None) -> int:
    """Delete the run's start task queued in this transaction (nobody saw it: it is not committed)."""
    msg_id = task_msg_id(run_task(run_id, traceparent))
    return conn.execute("DELETE FROM outbox WHERE id > ? AND msg_id = ?", (after_id, msg_id)).rowcount


_RUN = f"SELECT *, {context_patches.PATCHES_OF_RUN} AS context_patches FROM workflow_runs WHERE run_id = ?"


def run_with_steps(conn: sqlite3.Connection, run_id: str) -> tuple[sqlite3.Row | dict[str, Any] | None, list[sqlite3.Row]]:
    """Inside the writer's transaction: the run as it is about to be committed (its context with the
    patches of this transaction folded in), with its steps."""
    row = context_patches.fold_row(conn.execute(_RUN, (run_id,)).fetchone())
    steps = conn.execute("SELECT * FROM workflow_run_steps WHERE run_id = ? ORDER BY id", (run_id,)).fetchall()
    return row, steps
