"""Approvals found by id alone (Station's REST paths carry no run id)."""

from __future__ import annotations

import sqlite3

from station_wf.store.db import SqliteReaders

__all__ = ["approval_by_id"]


async def approval_by_id(readers: SqliteReaders, approval_id: str) -> sqlite3.Row | None:
    """The approval row with this id, whichever run it belongs to (ids are unique across runs)."""
    return await readers.fetchone("SELECT * FROM workflow_approvals WHERE approval_id = ?", (approval_id,))
