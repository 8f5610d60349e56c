"""The runs as the API reads them: one run, its steps, a page of the run list.

The engine's own run SQL (load, transitions, steps) is in `store/runs.py`; these are the readers'
queries, on the aiosqlite pool, never on the writer thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from typing import Any

from station_wf.store import context_patches, dialect
from station_wf.store.db import Readers
from station_wf.store.dialect import per_dialect

_RUN = per_dialect(lambda d: f"SELECT *, {context_patches.patches_of_run(d)} AS context_patches FROM workflow_runs WHERE run_id = ?")


async def run_row(readers: Readers, run_id: str) -> sqlite3.Row | dict[str, Any] | None:
    """The run's row, its `context` the blob with the patches written since its compaction folded in
    (read in one statement: one snapshot)."""
    return context_patches.fold_row(await readers.fetchone(_RUN[dialect.of(readers)], (run_id,)))


async def run_known(readers: Readers, run_id: str) -> bool:
    return await readers.fetchone("SELECT 1 FROM workflow_runs WHERE run_id = ?", (run_id,)) is not None


async def run_steps(readers: Readers, run_id: str) -> list[sqlite3.Row]:
    """Every step row of the run (all attempts), in creation order."""
    return await readers.fetchall("SELECT * FROM workflow_run_steps WHERE run_id = ? ORDER BY id", (run_id,))


async def list_runs(readers: Readers, workflow_id: str | None, statuses: Collection[str] | None, before_id: int | None,
                    limit: int, parent_run_id: str | None = None,
                    extra: tuple[list[str], list[Any]] = ([], [])) -> list[sqlite3.Row]:
    """Newest first (their `context` column is the blob without its patches: not for showing); `before_id` is the page cursor (the last row id of the previous page). `statuses`
    None is every status; an empty collection matches no run."""
    where, params = [], []
    if workflow_id:
        where.append("workflow_id = ?")
        params.append(workflow_id)
    if statuses is not None:
        where.append(f"status IN ({','.join('?' * len(statuses))})")
        params.extend(statuses)
    if parent_run_id:
        where.append("parent_run_id = ?")
        params.append(parent_run_id)
    if before_id is not None:
        where.append("id < ?")
        params.append(before_id)
    where.extend(extra[0])  # issue 18: correlation id, tags, start times (store/governance_runs.list_filters)
    params.extend(extra[1])
    sql = "SELECT * FROM workflow_runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?"
    return await readers.fetchall(sql, (*params, limit))


def run_exists(conn: sqlite3.Connection, run_id: str) -> bool:
    """Inside a writer transaction: did an earlier attempt of this request already create the run?"""
    return conn.execute("SELECT 1 FROM workflow_runs WHERE run_id = ?", (run_id,)).fetchone() is not None
