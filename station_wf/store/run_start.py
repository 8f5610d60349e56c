"""SQL of starting a run in the transaction that creates it (`engine/runs.py`): reading the run back,
as it is about to be committed, for the answer."""

from __future__ import annotations

import sqlite3
from typing import Any

from station_wf.store import context_patches, dialect
from station_wf.store.dialect import per_dialect

_RUN = per_dialect(lambda d: f"SELECT *, {context_patches.patches_of_run(d)} AS context_patches FROM workflow_runs WHERE run_id = ?")


def run_with_steps(conn: sqlite3.Connection, run_id: str) -> tuple[sqlite3.Row | dict[str, Any] | None, list[sqlite3.Row]]:
    """Inside the writer's transaction: the run as it is about to be committed (its context with the
    patches of this transaction folded in), with its steps."""
    row = context_patches.fold_row(conn.execute(_RUN[dialect.of(conn)], (run_id,)).fetchone())
    steps = conn.execute("SELECT * FROM workflow_run_steps WHERE run_id = ? ORDER BY id", (run_id,)).fetchall()
    return row, steps
