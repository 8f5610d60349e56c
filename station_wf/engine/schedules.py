"""Durable cron schedules: the loop that starts runs on their ticks, exactly once per tick.

The tick a run was started for is recorded (`last_fire_at`) in the same transaction that creates the
run, with compare-and-set on the previous value, so a restart can never start a tick twice. After
downtime only the latest missed tick fires (once), as a scheduler that was never down would have
ended up doing.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from station_wf.engine.runs import input_problems, insert_new_run
from station_wf.expr.cron import CronError, CronSchedule
from station_wf.loop import Loop
from station_wf.store import definitions as defs_store
from station_wf.store import schedules as store
from station_wf.store.db import Readers, Writer
from station_wf.store.leases import FencedWriter
from station_wf.telemetry.metrics import runs_started_total
from station_wf.telemetry.tracing import new_run_traceparent

log = logging.getLogger(__name__)

POLL_S = 1.0


def clock_from_env() -> Callable[[], float]:
    """`STATION_TEST_CLOCK=<ISO time>` starts the scheduler's clock there (tests only); it then runs in real time."""
    start = os.environ.get("STATION_TEST_CLOCK")
    if not start:
        return time.time
    offset = datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp() - time.time()
    return lambda: time.time() + offset


# One clock for the loop, sync and the API (fixed at import, i.e. at daemon start).
schedule_clock = clock_from_env()


def sync_schedules(conn: sqlite3.Connection, workflow_id: str, defn: dict[str, Any], now: float | None = None) -> None:
    """Make the table match the workflow's latest definition; a new schedule starts from now (no back-fill)."""
    store.sync(conn, workflow_id, defn.get("schedules") or [], schedule_clock() if now is None else now)


def schedule_to_api(row: sqlite3.Row, now: float) -> dict[str, Any]:
    try:
        nxt = CronSchedule.parse(row["cron"], row["timezone"]).next_after(datetime.fromtimestamp(now, UTC))
        next_at = nxt.isoformat().replace("+00:00", "Z")
    except CronError:
        next_at = None
    return {
        "id": row["schedule_id"], "workflowId": row["workflow_id"], "cron": row["cron"], "timezone": row["timezone"],
        "input": json.loads(row["input"]), "enabled": bool(row["enabled"]), "defined": bool(row["defined"]),
        "lastFireAt": datetime.fromtimestamp(row["last_fire_at"], UTC).isoformat().replace("+00:00", "Z"),
        "lastRunId": row["last_run_id"], "lastError": None if row["last_error"] is None else json.loads(row["last_error"]), "nextFireAt": next_at if row["enabled"] and row["defined"] else None,
    }


class ScheduleLoop(Loop):
    """Runs on the lease holder (the daemon hands it the lease's `FencedWriter`): a tick claimed under a
    token that is no longer current rolls back with its run."""

    name = "schedules"

    def __init__(self, writer: Writer | FencedWriter, readers: Readers, on_commit: Callable[[], None],
                 clock: Callable[[], float] | None = None, poll: float = POLL_S) -> None:
        super().__init__(poll, logger=log)
        self.writer = writer
        self.readers = readers
        self.on_commit = on_commit
        self.clock = clock or schedule_clock

    async def run_once(self) -> int:
        return await self.fire_due()

    async def fire_due(self) -> int:
        now = self.clock()
        rows = await store.live(self.readers)
        fired = 0
        for row in rows:
            try:
                sched = CronSchedule.parse(row["cron"], row["timezone"])
            except CronError as exc:
                await self._report_unparsable(row, exc)
                continue
            tick = sched.latest_at_or_before(datetime.fromtimestamp(now, UTC))
            if tick is None or tick.timestamp() <= row["last_fire_at"]:
                continue
            run_id = str(uuid.uuid4())
            if await self.writer.run(functools.partial(self._tx_fire, row=row, tick=tick.timestamp(), run_id=run_id)):
                runs_started_total.inc(workflow=row["workflow_id"])  # after the commit: a rolled-back group starts nothing
                fired += 1
                log.info("schedule %s started run %s for tick %s", row["schedule_id"], run_id, tick.isoformat())
        if fired:
            self.on_commit()
        return fired

    async def _report_unparsable(self, row: sqlite3.Row, exc: CronError) -> None:
        """A cron the scheduler cannot parse never fires: say so once (log and `lastError`), not every tick."""
        error = {"message": f"cron {row['cron']!r} (timezone {row['timezone']!r}) cannot be parsed: {exc}; "
                            "this schedule never fires", "cron": row["cron"]}
        if row["last_error"] is not None and json.loads(row["last_error"]).get("cron") == row["cron"]:
            return
        log.error("schedule %s: %s", row["schedule_id"], error["message"])
        await self.writer.run(functools.partial(store.set_error_for_cron, schedule_id=row["schedule_id"], cron=row["cron"],
                                                error=error))

    def _tx_fire(self, conn: sqlite3.Connection, row: sqlite3.Row, tick: float, run_id: str) -> bool:
        if not store.claim_tick(conn, row["schedule_id"], tick, row["last_fire_at"]):
            return False
        defn_row = defs_store.latest_row(conn, row["workflow_id"])
        assert defn_row is not None  # `live` lists schedules of workflows that have a definition
        defn = json.loads(defn_row["definition"])
        run_input = json.loads(row["input"])
        problems = input_problems(defn.get("inputSchema"), run_input)
        if problems:
            store.set_error(conn, row["schedule_id"],
                            {"message": "schedule input does not match the input schema", "problems": problems})
            return False
        triggered = datetime.fromtimestamp(tick, UTC).isoformat().replace("+00:00", "Z")
        traceparent = new_run_traceparent(None, {"workflow.id": row["workflow_id"], "workflow.version": defn_row["version"],
                                                 "run.id": run_id, "schedule.id": row["schedule_id"]})
        insert_new_run(conn, defn_row, defn, run_id, run_input, traceparent, {"_cronTriggeredAt": triggered})
        store.set_started(conn, row["schedule_id"], run_id)
        return True
