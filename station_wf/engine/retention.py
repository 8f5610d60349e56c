"""Retention: finished runs older than STATION_RETENTION_DAYS are deleted with their history.

Runs that are still going are never touched, however old. Deletion goes in small transactions so the
writer is never held for long.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from datetime import UTC, datetime, timedelta

from station_wf.store.db import SqliteWriter

log = logging.getLogger(__name__)

BATCH = 200
CHILD_TABLES = ("workflow_run_events", "workflow_run_steps", "workflow_approvals", "workflow_signals", "timers")


def _prune_batch(conn: sqlite3.Connection, cutoff: str) -> int:
    ids = [r[0] for r in conn.execute(
        "SELECT run_id FROM workflow_runs WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED', 'TIMED_OUT')"
        " AND completed_at < ? LIMIT ?", (cutoff, BATCH))]
    if not ids:
        return 0
    marks = ",".join("?" * len(ids))
    for table in CHILD_TABLES:
        conn.execute(f"DELETE FROM {table} WHERE run_id IN ({marks})", ids)
    conn.execute(f"DELETE FROM workflow_runs WHERE run_id IN ({marks})", ids)
    return len(ids)


async def prune_once(writer: SqliteWriter, days: float) -> int:
    cutoff = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="microseconds").replace("+00:00", "Z")
    total = 0
    while True:
        n = await writer.run(lambda conn: _prune_batch(conn, cutoff))
        total += n
        if n < BATCH:
            return total


async def retention_loop(writer: SqliteWriter, days: float, interval: float = 3600.0) -> None:
    while True:
        try:
            pruned = await prune_once(writer, days)
            if pruned:
                log.info("retention: deleted %d finished run(s) older than %s days", pruned, days)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - try again next period
            log.exception("retention")
        await asyncio.sleep(interval)
