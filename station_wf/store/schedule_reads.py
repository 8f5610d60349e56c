"""The schedule table as the API sees it: the list, one schedule, and the operator's enable switch.

The loop's SQL (sync with the definitions, claiming a tick) is in `store/schedules.py`.
"""

from __future__ import annotations

import sqlite3

from station_wf.store.db import Readers, utcnow


async def defined_schedules(readers: Readers, workflow_id: str | None = None) -> list[sqlite3.Row]:
    """Schedules the latest definitions still declare, by id."""
    if workflow_id:
        return await readers.fetchall("SELECT * FROM workflow_schedules WHERE defined = 1 AND workflow_id = ?"
                                       " ORDER BY schedule_id", (workflow_id,))
    return await readers.fetchall("SELECT * FROM workflow_schedules WHERE defined = 1 ORDER BY schedule_id")


def set_enabled(conn: sqlite3.Connection, schedule_id: str, enabled: bool) -> sqlite3.Row | None:
    """Switch a schedule on or off (a writer transaction); its row afterwards, None when unknown."""
    conn.execute("UPDATE workflow_schedules SET enabled = ?, updated_at = ? WHERE schedule_id = ?",
                 (int(enabled), utcnow(), schedule_id))
    return conn.execute("SELECT * FROM workflow_schedules WHERE schedule_id = ?", (schedule_id,)).fetchone()
