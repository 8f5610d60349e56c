"""The audit log of policy denials (`governance/policies.py`)."""

from __future__ import annotations

import sqlite3
from typing import Any

from station_wf.store.db import utcnow
from station_wf.store.runs import append_event


def insert(conn: sqlite3.Connection, action: str, principal: str, workflow_id: str | None, run_id: str | None,
           policy: str, message: str) -> None:
    conn.execute("INSERT INTO governance_denials (at, principal, action, workflow_id, run_id, policy, message)"
                 " VALUES (?, ?, ?, ?, ?, ?, ?)", (utcnow(), principal, action, workflow_id, run_id, policy, message))
    if run_id is not None and conn.execute("SELECT 1 FROM workflow_runs WHERE run_id = ?", (run_id,)).fetchone():
        append_event(conn, run_id, "policy.denied", {"action": action, "policy": policy, "message": message}, actor=principal)


async def recent(readers: Any, limit: int, before_id: int | None) -> list[Any]:
    if before_id is None:
        return await readers.fetchall("SELECT * FROM governance_denials ORDER BY id DESC LIMIT ?", (limit,))
    return await readers.fetchall("SELECT * FROM governance_denials WHERE id < ? ORDER BY id DESC LIMIT ?", (before_id, limit))
