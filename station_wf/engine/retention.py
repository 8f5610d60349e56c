"""Retention: finished runs older than STATION_RETENTION_DAYS are deleted with their history.

Runs that are still going are never touched, however old. Deletion goes in transactions bounded in
rows (not in runs: one run may have millions of events), so the writer is never held for long.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from station_wf.loop import Loop
from station_wf.store.db import Writer
from station_wf.store.leases import FencedWriter
from station_wf.store.retention_rows import prune_some

log = logging.getLogger(__name__)

RUNS_PER_TX = 200
ROWS_PER_TX = 5000  # history rows one transaction deletes: the writer is never held for long


async def prune_once(writer: Writer | FencedWriter, days: float, rows_per_tx: int = ROWS_PER_TX,
                     runs_per_tx: int = RUNS_PER_TX) -> int:
    """Delete finished runs older than `days`, in transactions of at most `rows_per_tx` rows each."""
    cutoff = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="microseconds").replace("+00:00", "Z")
    total = 0
    while True:
        rows, runs = await writer.run(lambda conn: prune_some(conn, cutoff, runs_per_tx, rows_per_tx))
        total += runs
        if rows == 0 and runs == 0:
            return total


class Retention(Loop):
    """Prunes every `interval` seconds (STATION_RETENTION_INTERVAL_SECONDS), on the lease holder (the
    daemon hands it the lease's `FencedWriter`)."""

    name = "retention"

    def __init__(self, writer: Writer | FencedWriter, days: float, interval: float = 3600.0) -> None:
        super().__init__(interval, logger=log)
        self.writer = writer
        self.days = days

    async def run_once(self) -> int:
        pruned = await prune_once(self.writer, self.days)
        if pruned:
            log.info("retention: deleted %d finished run(s) older than %s days", pruned, self.days)
        return pruned
