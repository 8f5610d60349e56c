"""Reads the API needs beyond the engine's own: small, named, and kept with the rest of the SQL."""

from __future__ import annotations

import sqlite3


def run_exists(conn: sqlite3.Connection, run_id: str) -> bool:
    return conn.execute("SELECT 1 FROM workflow_runs WHERE run_id = ?", (run_id,)).fetchone() is not None


def definition_status(conn: sqlite3.Connection, workflow_id: str, version: int) -> str | None:
    """The status a start must see inside its own transaction (a workflow disabled meanwhile cannot start)."""
    row = conn.execute("SELECT status FROM workflow_definitions WHERE workflow_id = ? AND version = ?",
                       (workflow_id, version)).fetchone()
    return None if row is None else row["status"]
