"""Approvals as the API reads them (the inbox, a run's approvals, one by id); the engine's approval
writes are with the transition code."""

from __future__ import annotations

import sqlite3

from station_wf.store.db import Readers

INBOX_LIMIT = 1000


async def approval_by_id(readers: Readers, approval_id: str) -> sqlite3.Row | None:
    """The approval row with this id, whichever run it belongs to (ids are unique across runs)."""
    return await readers.fetchone("SELECT * FROM workflow_approvals WHERE approval_id = ?", (approval_id,))


async def approval_of_run(readers: Readers, run_id: str, approval_id: str) -> sqlite3.Row | None:
    return await readers.fetchone("SELECT * FROM workflow_approvals WHERE approval_id = ? AND run_id = ?",
                                  (approval_id, run_id))


async def list_approvals(readers: Readers, status: str | None, workflow_id: str | None,
                         run_id: str | None = None) -> list[sqlite3.Row]:
    """Oldest first, at most `INBOX_LIMIT`; each filter applies when given."""
    where, params = [], []
    for column, value in (("status", status), ("workflow_id", workflow_id), ("run_id", run_id)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    sql = "SELECT * FROM workflow_approvals" + (" WHERE " + " AND ".join(where) if where else "")
    return await readers.fetchall(sql + f" ORDER BY created_at, approval_id LIMIT {INBOX_LIMIT}", params)
