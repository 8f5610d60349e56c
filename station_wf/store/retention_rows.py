"""The SQL of retention: delete finished runs' history a bounded number of rows per transaction."""

from __future__ import annotations

import sqlite3

from station_wf.core import model
from station_wf.store import dialect

FINISHED = tuple(sorted(model.TERMINAL_RUN_STATUSES))
CHILD_TABLES = ("workflow_run_context_patches", "workflow_run_events", "workflow_run_steps", "workflow_approvals",
                "workflow_signals", "timers")


def prune_some(conn: sqlite3.Connection, cutoff: str, runs: int, rows: int) -> tuple[int, int]:
    """Delete at most `rows` history rows of up to `runs` expired runs, then those runs once their
    history is gone. Returns (history rows deleted, runs deleted); (0, 0) means nothing is left."""
    ids = [r[0] for r in conn.execute(
        f"SELECT run_id FROM workflow_runs WHERE status IN ({','.join('?' * len(FINISHED))}) AND completed_at < ? LIMIT ?",
        (*FINISHED, cutoff, runs))]
    if not ids:
        return 0, 0
    marks = ",".join("?" * len(ids))
    budget = rows
    rowid = dialect.of(conn).rowid
    for table in CHILD_TABLES:
        budget -= conn.execute(
            f"DELETE FROM {table} WHERE {rowid} IN (SELECT {rowid} FROM {table} WHERE run_id IN ({marks}) LIMIT ?)",
            (*ids, budget)).rowcount
        if budget <= 0:
            return rows, 0  # more history left: the next transaction goes on
    deleted = conn.execute(f"DELETE FROM workflow_runs WHERE run_id IN ({marks})", ids).rowcount
    return rows - budget, deleted
