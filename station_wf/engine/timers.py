"""The timer loop (invariant 5): one loop fires due rows of the `timers` table.

Each timer is fired by compare-and-set inside a write transaction (`fired_at IS NULL`), and what it
does re-checks the run and step first, so a timer firing after its wait already ended is a no-op.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable

from station_wf.core import interpreter as ip
from station_wf.core import model
from station_wf.deferral import Deferred
from station_wf.engine import control
from station_wf.engine.commit import commit_transition, decide_and_commit
from station_wf.faults import fault_error
from station_wf.loop import Loop
from station_wf.store import runs as rs
from station_wf.store import timers as timer_store
from station_wf.store.db import Readers, Writer, utcnow
from station_wf.store.definitions import DefinitionCache
from station_wf.store.leases import FencedWriter

log = logging.getLogger(__name__)

POLL_S = 0.1
BATCH = 500
MAX_ATTEMPTS = 5
BACKOFF_S = (1.0, 300.0)   # first retry after 1 s, doubling, at most 5 minutes
ERROR_BACKOFF_S = (0.1, 5.0)  # the loop itself (a failing read or write): never spin


class TimerLoop(Loop):
    """Fires due timers. Each timer fires in its own savepoint: one that raises is rolled back alone,
    retried with back-off and, after `max_attempts` failures, quarantined with its error (fired_at set,
    error kept), while the rest of the batch fires.

    It polls (every 100 ms) and is not kicked: every timer is written due in the future, so a kick at
    write time would find nothing due, and resume's held-back timers are due at the next poll.

    The daemon hands it the lease's `FencedWriter` (engine/lease.py): timers fire on the lease holder
    only, and a batch fired under a token that is no longer current rolls back whole."""

    name = "timers"
    batch = BATCH

    def __init__(self, writer: Writer | FencedWriter, readers: Readers, definitions: DefinitionCache,
                 on_commit: Callable[[], None], poll: float = POLL_S, max_attempts: int = MAX_ATTEMPTS) -> None:
        super().__init__(poll, backoff=ERROR_BACKOFF_S, logger=log)
        self.writer = writer
        self.readers = readers
        self.definitions = definitions
        self.on_commit = on_commit
        self.max_attempts = max(1, max_attempts)

    async def run_once(self) -> int:
        return await self.fire_due()

    async def fire_due(self) -> int:
        ids = await timer_store.due_ids(self.readers, time.time(), BATCH)
        if not ids:
            return 0
        await self.writer.run(lambda conn: self._tx_fire(conn, ids))
        self.on_commit()
        return len(ids)

    def _tx_fire(self, conn: sqlite3.Connection, ids: list[int]) -> None:
        deferred: Deferred | None = None
        for timer_id in ids:
            row = timer_store.load_unfired(conn, timer_id)
            if row is None or row["run_status"] == model.PAUSED:
                continue  # fired meanwhile, or paused since the read: it fires on resume
            point = rs.Savepoint(conn, "timer")
            try:
                timer_store.mark_fired(conn, timer_id)
                if fault_error(f"timer.fire.{row['workflow_id']}"):  # tests: a poisonous workflow's timers
                    raise RuntimeError(f"fault injected at timer.fire.{row['workflow_id']}")
                self._fire(conn, row)
            except Deferred as needs:  # needs an expression evaluated: collect, so one re-run serves the batch
                point.undo()
                deferred = needs if deferred is None else deferred.merge(needs)
            except Exception as exc:  # noqa: BLE001 - this timer alone; the others fire
                if not conn.in_transaction:
                    raise  # SQLite undid the whole transaction: the writer fails the group
                point.undo()
                self._timer_failed(conn, row, exc)
            else:
                point.keep()
        if deferred is not None:
            raise deferred  # the writer evaluates what the batch needs, then fires it again

    def _timer_failed(self, conn: sqlite3.Connection, row: sqlite3.Row, exc: Exception) -> None:
        """One timer raised (named apart from the loop base's `_failed`, which handles a whole failed pass)."""
        attempts = row["attempts"] + 1
        error = {"type": type(exc).__name__, "message": str(exc)[:2000], "at": utcnow()}
        if attempts >= self.max_attempts:
            log.error("timer %s (%s, run %s) failed %d times; quarantined: %s: %s", row["id"], row["kind"],
                      row["run_id"], attempts, error["type"], error["message"])
            timer_store.record_failure(conn, row["id"], error, None)
            try:
                with rs.savepoint(conn, "timer_quarantine"):
                    self._fail_run(conn, row, error, attempts)
            except Exception:  # noqa: BLE001 - the timer stays quarantined; the run keeps its state
                log.exception("timer %s: could not fail run %s", row["id"], row["run_id"])
            return
        retry_in = min(BACKOFF_S[0] * 2 ** (attempts - 1), BACKOFF_S[1])
        log.warning("timer %s (%s, run %s) failed (attempt %d of %d), retrying in %.0fs: %s: %s", row["id"],
                    row["kind"], row["run_id"], attempts, self.max_attempts, retry_in, error["type"], error["message"])
        timer_store.record_failure(conn, row["id"], error, retry_in)

    def _fail_run(self, conn: sqlite3.Connection, row: sqlite3.Row, error: dict, attempts: int) -> None:
        """A quarantined timer would leave its run waiting forever: fail the run, without the definition."""
        run = rs.load_run(conn, row["run_id"])
        if run is None or run.status in model.TERMINAL_RUN_STATUSES:
            return
        step_row = None
        if row["step_id"] is not None:
            step_row = rs.load_step(conn, run.run_id, row["step_id"], json.loads(row["payload"]).get("attempt", 1))
        view = rs.step_view(step_row) if step_row is not None and step_row["status"] in model.OPEN_STEP_STATUSES else None
        failure = {"type": "engine_error", "message": f"{row['kind']} timer failed {attempts} times: "
                                                      f"{error['type']}: {error['message']}"}
        commit_transition(conn, self.definitions, run, ip.engine_failure(rs.run_state(conn, run), view, failure), view,
                          checked=False)

    def _fire(self, conn: sqlite3.Connection, timer: sqlite3.Row) -> None:
        run = rs.load_run(conn, timer["run_id"])
        if run is None or run.status in model.TERMINAL_RUN_STATUSES:
            return
        payload = json.loads(timer["payload"])
        step_row = None
        if timer["step_id"] is not None:
            step_row = rs.load_step(conn, run.run_id, timer["step_id"], payload.get("attempt", 1))
            if step_row is None or step_row["status"] not in model.OPEN_STEP_STATUSES:
                return
        if timer["kind"] == "retry":
            if step_row is not None and step_row["status"] == model.PENDING and run.status in model.ACTIVE_RUN_STATUSES:
                rs.enqueue_step_task(conn, run, step_row["step_id"], step_row["attempt"], step_row["idempotency_key"])
            return
        if timer["kind"] == timer_store.APPROVAL_TIMEOUT:
            control.fire_approval_timeout(conn, self.definitions, run.run_id, payload["approvalId"])
            return
        view = rs.step_view(step_row) if step_row is not None else None
        decide_and_commit(conn, self.definitions, run, lambda defn, state: ip.timer_fired(defn, state, timer["kind"], view), view)
