"""ScheduleService: the cron schedules as the API lists them, and the operator's enable/disable switch.

The loop that fires them is `engine/schedules.py`; this service only reads the table and flips
`enabled`, on the same clock as the loop (so `nextFireAt` is what the loop will do).
"""

from __future__ import annotations

from typing import Any

from station_wf.engine.schedules import schedule_clock, schedule_to_api
from station_wf.errors import not_found
from station_wf.store import schedule_reads as store
from station_wf.store.db import Readers, Writer


class ScheduleService:
    def __init__(self, writer: Writer, readers: Readers) -> None:
        self.writer = writer
        self.readers = readers

    async def list(self, workflow_id: str | None = None) -> list[dict[str, Any]]:
        rows = await store.defined_schedules(self.readers, workflow_id or None)
        now = schedule_clock()
        return [schedule_to_api(r, now) for r in rows]

    async def set_enabled(self, schedule_id: str, enabled: bool) -> dict[str, Any]:
        """404 for an unknown schedule; the schedule as it is now otherwise."""
        row = await self.writer.run(lambda c: store.set_enabled(c, schedule_id, enabled))
        if row is None:
            raise not_found("schedule", schedule_id)
        return schedule_to_api(row, schedule_clock())
