"""The timer loop (invariant 5): one loop fires due rows of the `timers` table.

Each timer is fired by compare-and-set inside a write transaction (`fired_at IS NULL`), and what it
does re-checks the run and step first, so a timer firing after its wait already ended is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable

from station_wf.engine import control
from station_wf.engine import interpreter as ip
from station_wf.engine.commit import commit_transition
from station_wf.store import runs as rs
from station_wf.store.db import SqliteReaders, SqliteWriter, utcnow
from station_wf.store.definitions import DefinitionCache

log = logging.getLogger(__name__)

POLL_S = 0.1
BATCH = 500


class TimerLoop:
    def __init__(self, writer: SqliteWriter, readers: SqliteReaders, definitions: DefinitionCache,
                 on_commit: Callable[[], None], poll: float = POLL_S) -> None:
        self.writer = writer
        self.readers = readers
        self.definitions = definitions
        self.on_commit = on_commit
        self.poll = poll
        self.fired = 0
        self._wake = asyncio.Event()

    def kick(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                while await self.fire_due() == BATCH:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep firing; the rows stay due
                log.exception("timer loop")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll)
            self._wake.clear()

    async def fire_due(self) -> int:
        # A paused run's timers wait (still due) and fire on resume.
        rows = await self.readers.fetchall(
            """SELECT t.id FROM timers t JOIN workflow_runs r ON r.run_id = t.run_id
               WHERE t.fired_at IS NULL AND t.due_at <= ? AND r.status != 'PAUSED' ORDER BY t.due_at LIMIT ?""",
            (time.time(), BATCH),
        )
        if not rows:
            return 0
        ids = [r["id"] for r in rows]
        await self.writer.run(lambda conn: self._tx_fire(conn, ids))
        self.fired += len(ids)
        self.on_commit()
        return len(ids)

    def _tx_fire(self, conn: sqlite3.Connection, ids: list[int]) -> None:
        for timer_id in ids:
            row = conn.execute("SELECT * FROM timers WHERE id = ? AND fired_at IS NULL", (timer_id,)).fetchone()
            if row is None or rs.run_status(conn, row["run_id"]) == ip.PAUSED:
                continue  # paused since it was read (review L2): it stays due and fires on resume
            conn.execute("UPDATE timers SET fired_at = ? WHERE id = ?", (utcnow(), timer_id))
            self._fire(conn, row)

    def _fire(self, conn: sqlite3.Connection, timer: sqlite3.Row) -> None:
        run = rs.load_run(conn, timer["run_id"])
        if run is None or run.status in ip.TERMINAL_RUN_STATUSES:
            return
        payload = json.loads(timer["payload"])
        step_row = None
        if timer["step_id"] is not None:
            step_row = rs.load_step(conn, run.run_id, timer["step_id"], payload.get("attempt", 1))
            if step_row is None or step_row["status"] not in ip.OPEN_STEP_STATUSES:
                return
        if timer["kind"] == "retry":
            if step_row is not None and step_row["status"] == ip.PENDING and run.status in ip.ACTIVE_RUN_STATUSES:
                rs.enqueue_step_task(conn, run, step_row["step_id"], step_row["attempt"], step_row["idempotency_key"])
            return
        if timer["kind"] == "approval_timeout":
            control.fire_approval_timeout(conn, self.definitions, run.run_id, payload["approvalId"])
            return
        defn = self.definitions.get(conn, run.workflow_id, run.workflow_version)
        view = rs.step_view(step_row) if step_row is not None else None
        t = ip.timer_fired(defn, rs.run_state(conn, run), timer["kind"], view)
        if t is not None:
            commit_transition(conn, self.definitions, run, t, view)
