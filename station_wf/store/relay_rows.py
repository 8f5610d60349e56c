"""The SQL of the event relay: the event log after a position, and the relay's durable cursor.
(The outbox relay's rows are in `store/outbox.py`.)"""

from __future__ import annotations

import sqlite3

from station_wf.store.db import Readers


async def cursor(readers: Readers, name: str) -> int:
    row = await readers.fetchone("SELECT position FROM relay_cursors WHERE name = ?", (name,))
    return row["position"] if row else 0


def set_cursor(conn: sqlite3.Connection, name: str, position: int) -> None:
    conn.execute(
        "INSERT INTO relay_cursors (name, position) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET position = excluded.position",
        (name, position),
    )


async def events_after(readers: Readers, after_id: int, limit: int) -> list[sqlite3.Row]:
    return await readers.fetchall(
        "SELECT id, run_id, seq, type, step_id, payload, actor, created_at FROM workflow_run_events"
        " WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))
