"""Durable cron schedules: the loop that starts runs on their ticks, exactly once per tick.

The tick a run was started for is recorded (`last_fire_at`) in the same transaction that creates the
run, with compare-and-set on the previous value, so a restart can never start a tick twice. After
downtime only the latest missed tick fires (once), as a scheduler that was never down would have
ended up doing.
"""

from __future__ import annotations

import asyncio
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

from station_wf.schedules.cron import CronError, CronSchedule
from station_wf.store.db import SqliteReaders, SqliteWriter, utcnow
from station_wf.store.jsontext import dumps
from station_wf.telemetry.metrics import runs_started_total
from station_wf.telemetry.tracing import new_run_traceparent

log = logging.getLogger(__name__)

POLL_S = 1.0


def test_clock() -> Callable[[], float]:
    """`STATION_TEST_CLOCK=<ISO time>` starts the scheduler's clock there (tests only); it then runs in real time."""
    start = os.environ.get("STATION_TEST_CLOCK")
    if not start:
        return time.time
    offset = datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp() - time.time()
    return lambda: time.time() + offset


# One clock for the loop, sync and the API (fixed at import, i.e. at daemon start).
schedule_clock = test_clock()


def sync_schedules(conn: sqlite3.Connection, workflow_id: str, defn: dict[str, Any], now: float | None = None) -> None:
    """Make the table match the workflow's latest definition; a new schedule starts from now (no back-fill)."""
    now = schedule_clock() if now is None else now
    stamp = utcnow()
    wanted = defn.get("schedules") or []
    for idx, sched in enumerate(wanted):
        sid = f"{workflow_id}:{idx}"
        row = conn.execute("SELECT cron, timezone FROM workflow_schedules WHERE schedule_id = ?", (sid,)).fetchone()
        values = (sched["cron"], sched.get("timezone") or "UTC", dumps(sched.get("input") or {}))
        if row is None:
            conn.execute(
                """INSERT INTO workflow_schedules (schedule_id, workflow_id, idx, cron, timezone, input, enabled, last_fire_at,
                       created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (sid, workflow_id, idx, *values, 1 if sched.get("enabled", True) else 0, now, stamp, stamp),
            )
        else:
            moved = (row["cron"], row["timezone"]) != values[:2]
            conn.execute(
                "UPDATE workflow_schedules SET cron = ?, timezone = ?, input = ?, defined = 1, updated_at = ?"
                + (", last_fire_at = MAX(last_fire_at, ?)" if moved else "") + " WHERE schedule_id = ?",
                (*values, stamp, *((now,) if moved else ()), sid),
            )
    conn.execute("UPDATE workflow_schedules SET defined = 0, updated_at = ? WHERE workflow_id = ? AND idx >= ?",
                 (stamp, workflow_id, len(wanted)))


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


class ScheduleLoop:
    def __init__(self, writer: SqliteWriter, readers: SqliteReaders, on_commit: Callable[[], None],
                 clock: Callable[[], float] | None = None, poll: float = POLL_S) -> None:
        self.writer = writer
        self.readers = readers
        self.on_commit = on_commit
        self.clock = clock or schedule_clock
        self.poll = poll
        self.started = 0

    async def run(self) -> None:
        while True:
            try:
                await self.fire_due()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - try again next tick
                log.exception("schedule loop")
            await asyncio.sleep(self.poll)

    async def fire_due(self) -> int:
        now = self.clock()
        rows = await self.readers.fetchall(
            """SELECT s.* FROM workflow_schedules s WHERE s.enabled = 1 AND s.defined = 1 AND EXISTS (
                   SELECT 1 FROM workflow_definitions d WHERE d.workflow_id = s.workflow_id AND d.status = 'active')"""
        )
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
                fired += 1
                log.info("schedule %s started run %s for tick %s", row["schedule_id"], run_id, tick.isoformat())
        if fired:
            self.started += fired
            self.on_commit()
        return fired

    async def _report_unparsable(self, row: sqlite3.Row, exc: CronError) -> None:
        """A cron the scheduler cannot parse never fires: say so once (log and `lastError`), not every tick."""
        error = {"message": f"cron {row['cron']!r} (timezone {row['timezone']!r}) cannot be parsed: {exc}; "
                            "this schedule never fires", "cron": row["cron"]}
        if row["last_error"] is not None and json.loads(row["last_error"]).get("cron") == row["cron"]:
            return
        log.error("schedule %s: %s", row["schedule_id"], error["message"])
        await self.writer.run(functools.partial(_tx_set_error, schedule_id=row["schedule_id"], cron=row["cron"], error=error))

    def _tx_fire(self, conn: sqlite3.Connection, row: sqlite3.Row, tick: float, run_id: str) -> bool:
        from station_wf.services.runs import input_problems, insert_new_run

        claimed = conn.execute(
            "UPDATE workflow_schedules SET last_fire_at = ?, updated_at = ? WHERE schedule_id = ? AND last_fire_at = ?",
            (tick, utcnow(), row["schedule_id"], row["last_fire_at"]),
        ).rowcount
        if not claimed:
            return False
        defn_row = conn.execute(
            "SELECT * FROM workflow_definitions WHERE workflow_id = ? ORDER BY version DESC LIMIT 1", (row["workflow_id"],)
        ).fetchone()
        defn = json.loads(defn_row["definition"])
        run_input = json.loads(row["input"])
        problems = input_problems(defn.get("inputSchema"), run_input)
        if problems:
            conn.execute("UPDATE workflow_schedules SET last_error = ? WHERE schedule_id = ?",
                         (dumps({"message": "schedule input does not match the input schema", "problems": problems}),
                          row["schedule_id"]))
            return False
        triggered = datetime.fromtimestamp(tick, UTC).isoformat().replace("+00:00", "Z")
        traceparent = new_run_traceparent(None, {"workflow.id": row["workflow_id"], "workflow.version": defn_row["version"],
                                                 "run.id": run_id, "schedule.id": row["schedule_id"]})
        insert_new_run(conn, defn_row, defn, run_id, run_input, traceparent, {"_cronTriggeredAt": triggered})
        runs_started_total.inc(workflow=row["workflow_id"])
        conn.execute("UPDATE workflow_schedules SET last_run_id = ?, last_error = NULL WHERE schedule_id = ?",
                     (run_id, row["schedule_id"]))
        return True


def _tx_set_error(conn: sqlite3.Connection, schedule_id: str, cron: str, error: dict[str, Any]) -> None:
    conn.execute("UPDATE workflow_schedules SET last_error = ?, updated_at = ? WHERE schedule_id = ? AND cron = ?",
                 (dumps(error), utcnow(), schedule_id, cron))
