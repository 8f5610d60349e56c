"""Run storage: the transaction functions that commit transitions, their events and their tasks together.

Every function here takes the writer's connection and runs inside the writer's transaction; together
with the outbox they are what makes invariants 1, 2 and 7 hold.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from station_wf.core import limits, model
from station_wf.core.children import RUN_CHILD
from station_wf.protocol import run_task, step_task
from station_wf.store import approvals, outbox, run_cache, timers
from station_wf.store import vocab as v
from station_wf.store.db import Readers, utcnow
from station_wf.store.jsontext import dumps, loads
from station_wf.store.run_unit import RunUnit, load_state, step_view


@dataclass(frozen=True)
class RunRow:
    """A run as one transaction read it. `context` and `engine` may be shared with the writer's cache
    (store/run_cache.py): read them, never write into them."""

    run_id: str
    workflow_id: str
    workflow_version: int
    status: str
    context: dict[str, Any]
    engine: dict[str, Any]
    traceparent: str | None
    version: int = -1


def load_run(conn: sqlite3.Connection, run_id: str) -> RunRow | None:
    row = conn.execute(
        "SELECT run_id, workflow_id, workflow_version, status, version, traceparent FROM workflow_runs WHERE run_id = ?",
        (run_id,),
    ).fetchone()
    if row is None:
        return None
    state = load_state(conn, run_id, row["version"])
    return RunRow(row["run_id"], row["workflow_id"], row["workflow_version"], row["status"],
                  state.context, state.engine, row["traceparent"], row["version"])


def open_steps(conn: sqlite3.Connection, run_id: str) -> tuple[model.StepView, ...]:
    rows = conn.execute(
        f"SELECT * FROM workflow_run_steps WHERE run_id = ? AND status IN {v.OPEN_STEPS}",
        (run_id,),
    ).fetchall()
    return tuple(step_view(r) for r in rows)


def pending_signals(conn: sqlite3.Connection, run_id: str) -> tuple[model.Signal, ...]:
    return tuple(model.Signal(r["id"], r["name"], loads(r["payload"])) for r in approvals.pending_signals(conn, run_id))


def run_state(conn: sqlite3.Connection, run: RunRow) -> model.RunState:
    """Everything the interpreter may look at, read inside the writer's transaction."""
    return model.RunState(run.run_id, run.context, run.engine, open_steps(conn, run.run_id), utcnow(),
                       pending_signals(conn, run.run_id), rules=limits.LIMITS.rules)


def append_event(
    conn: sqlite3.Connection, run_id: str, kind: str, payload: dict[str, Any], step: str | None = None,
    actor: str | None = None, now: str | None = None,
) -> int:
    """Assign the next gap-free seq inside the caller's transaction (invariant 7)."""
    seq = conn.execute(
        "UPDATE workflow_runs SET event_seq = event_seq + 1 WHERE run_id = ? RETURNING event_seq", (run_id,)
    ).fetchone()[0]
    conn.execute(
        "INSERT INTO workflow_run_events (run_id, seq, type, step_id, payload, actor, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (run_id, seq, kind, step, dumps(payload), actor, now or utcnow()),
    )
    return seq


def enqueue_step_task(conn: sqlite3.Connection, run: RunRow, step: str, attempt: int, key: str,
                      redispatch: str | None = None) -> None:
    """A step attempt's task in the outbox; `redispatch` gives a deliberate second dispatch (resume) its
    own Nats-Msg-Id, so the broker's de-duplication window does not swallow it."""
    outbox.enqueue_task(conn, step_task(run.run_id, step, attempt, key, run.traceparent, redispatch))


def enqueue_run_task(conn: sqlite3.Connection, run_id: str, traceparent: str | None, redispatch: str | None = None) -> None:
    outbox.enqueue_task(conn, run_task(run_id, traceparent, redispatch))


def insert_run(
    conn: sqlite3.Connection, run_id: str, workflow_id: str, version: int, digest: str, run_input: dict[str, Any],
    context: dict[str, Any], traceparent: str | None, now: str, run_task: bool = True,
) -> None:
    """The run's row and its `run.created` event, and its run task unless the caller starts it here."""
    conn.execute(
        """INSERT INTO workflow_runs (run_id, workflow_id, workflow_version, content_hash, status, input, context,
               traceparent, created_at, updated_at) VALUES (?, ?, ?, ?, 'PENDING', ?, ?, ?, ?, ?)""",
        (run_id, workflow_id, version, digest, dumps(run_input), dumps(context), traceparent, now, now),
    )
    append_event(conn, run_id, "run.created", {"workflowId": workflow_id, "version": version, "input": run_input}, now=now)
    if run_task:
        enqueue_run_task(conn, run_id, traceparent)


def apply_transition(conn: sqlite3.Connection, run: RunRow, t: model.Transition, step: model.StepView | None = None,
                     inline: list[tuple[str, int]] | None = None, *, checked: bool = True) -> int:
    """Commit one transition: steps, run, context, engine state, events, new steps with their tasks or
    timers, and timers. Returns the number of tasks enqueued. With an `inline` list, new steps that
    need no executor are put there (to be decided in this same transaction) instead of getting a task.
    A transition that would take the run past a cap (core/limits.py) is replaced by one that fails
    the run naming the cap; `step` is the attempt that caused it (it fails with the cap's error).
    A chain of transitions of one run uses a `RunUnit` directly (engine/commit.py): one load, one flush."""
    unit = RunUnit.load(conn, run)
    if unit is None:
        return 0
    tasks = unit.apply(conn, t, step, inline, checked=checked)
    unit.flush(conn)
    return tasks


def load_step(conn: sqlite3.Connection, run_id: str, step: str, attempt: int) -> sqlite3.Row | None:
    return conn.execute(
        "SELECT * FROM workflow_run_steps WHERE run_id = ? AND step_id = ? AND attempt = ?", (run_id, step, attempt)
    ).fetchone()


def mark_running(conn: sqlite3.Connection, run: RunRow, row: sqlite3.Row, executor: str, rendered: dict[str, Any],
                 timeout_s: float | None = None) -> None:
    """Record that an attempt is executing, with exactly the input it was given. With `timeout_s`, the
    attempt's durable `step_timeout` timer is written the first time (a redelivery keeps the first deadline)."""
    redelivered = row["status"] == model.RUNNING
    now = utcnow()
    if timeout_s is not None and timers.step_timeout_left(conn, run.run_id, row["step_id"], row["attempt"]) is None:
        timers.add(conn, run.run_id, "step_timeout", timeout_s, row["step_id"], row["attempt"], {"timeoutSeconds": timeout_s})
    conn.execute(
        """UPDATE workflow_run_steps SET status = 'RUNNING', executor = ?, input = ?, started_at = COALESCE(started_at, ?)
           WHERE id = ?""",
        (executor, dumps(rendered), now, row["id"]),
    )
    append_event(
        conn, run.run_id, "step.started",
        {"attempt": row["attempt"], "executor": executor, "input": rendered, "redelivered": redelivered,
         "idempotencyKey": row["idempotency_key"]},
        row["step_id"], now=now,
    )


# -- the step timeout, the recorded result and the delivery budget (issue 11) ----------------------
def record_result(conn: sqlite3.Connection, run_id: str, step: str, attempt: int, result_json: str,
                  metadata_json: str | None) -> bool:
    """Store an executor's outcome on its RUNNING attempt (compare-and-set); False if it was closed meanwhile."""
    cur = conn.execute(
        """UPDATE workflow_run_steps SET result = ?, metadata = COALESCE(?, metadata)
           WHERE run_id = ? AND step_id = ? AND attempt = ? AND status = 'RUNNING' AND result IS NULL""",
        (result_json, metadata_json, run_id, step, attempt))
    return cur.rowcount == 1


def count_step_delivery(conn: sqlite3.Connection, run_id: str, step: str, attempt: int, cause: str | None,
                        increment: bool = True) -> int | None:
    """One more failed or interrupted handling of an open attempt's task; returns the count (None: not open)."""
    row = conn.execute(
        f"""UPDATE workflow_run_steps SET deliveries = deliveries + {int(increment)}, delivery_error = COALESCE(?, delivery_error)
            WHERE run_id = ? AND step_id = ? AND attempt = ? AND status IN {v.DISPATCHABLE_STEPS} RETURNING deliveries""",
        (cause, run_id, step, attempt)).fetchone()
    return None if row is None else row[0]


def count_run_delivery(conn: sqlite3.Connection, run_id: str, cause: str | None, increment: bool = True) -> int | None:
    """The same for a run's start task (while the run is PENDING)."""
    row = conn.execute(
        f"""UPDATE workflow_runs SET deliveries = deliveries + {int(increment)}, delivery_error = COALESCE(?, delivery_error)
            WHERE run_id = ? AND status = 'PENDING' RETURNING deliveries""", (cause, run_id)).fetchone()
    return None if row is None else row[0]


def run_deliveries(conn: sqlite3.Connection, run_id: str) -> tuple[int, str | None]:
    row = conn.execute("SELECT deliveries, delivery_error FROM workflow_runs WHERE run_id = ?", (run_id,)).fetchone()
    return (0, None) if row is None else (row["deliveries"], row["delivery_error"])


def run_counts(conn: sqlite3.Connection, run_id: str) -> tuple[int, int]:
    """(steps created, events appended) by the run: what the per-run caps are checked against."""
    row = conn.execute("SELECT step_count, event_seq FROM workflow_runs WHERE run_id = ?", (run_id,)).fetchone()
    return (0, 0) if row is None else (row["step_count"], row["event_seq"])


def run_status(conn: sqlite3.Connection, run_id: str) -> str | None:
    row = conn.execute("SELECT status FROM workflow_runs WHERE run_id = ?", (run_id,)).fetchone()
    return None if row is None else row["status"]


# -- control: pause, resume and what they re-dispatch --------------------------------------------
def mark_paused(conn: sqlite3.Connection, run_id: str, paused_from: str, now: str) -> None:
    """PAUSED, remembering the status to return to (in the engine state)."""
    _set_status(conn, run_id, model.PAUSED, now, paused_from)


def mark_resumed(conn: sqlite3.Connection, run_id: str, status: str, now: str) -> None:
    _set_status(conn, run_id, status, now, None)


def _set_status(conn: sqlite3.Connection, run_id: str, status: str, now: str, paused_from: str | None) -> None:
    """The engine state's `pausedFrom` set (or dropped) in Python, as every engine-state write is: the
    text keeps its key order and numbers on both databases (Postgres's jsonb would reorder them)."""
    row = conn.execute("SELECT engine_state FROM workflow_runs WHERE run_id = ?", (run_id,)).fetchone()
    engine = loads(row["engine_state"]) if row is not None else {}
    if paused_from is None:
        engine.pop("pausedFrom", None)
    else:
        engine["pausedFrom"] = paused_from
    conn.execute("UPDATE workflow_runs SET status = ?, version = version + 1, updated_at = ?, engine_state = ? "
                 "WHERE run_id = ?", (status, now, dumps(engine), run_id))


def touch(conn: sqlite3.Connection, run_id: str, now: str) -> None:
    """The run changed without a transition (a buffered signal): readers see a new version."""
    conn.execute("UPDATE workflow_runs SET version = version + 1, updated_at = ? WHERE run_id = ?", (now, run_id))


def steps_waiting_signal(conn: sqlite3.Connection, run_id: str) -> list[sqlite3.Row]:
    return conn.execute(
        f"SELECT * FROM workflow_run_steps WHERE run_id = ? AND status = '{model.WAITING_SIGNAL}' ORDER BY id", (run_id,)
    ).fetchall()


# Open attempts that need a task to progress: not a container or sleep RUNNING on purpose, nor a step
# waiting for its child run (the child's end records its result and enqueues its task), and not held
# by a timer of their own (a retry back-off, a wait timeout); a step timeout holds nothing.
_NEEDS_TASK = f"""s.status IN {v.DISPATCHABLE_STEPS}
    AND NOT (s.status = '{model.RUNNING}' AND s.state_type IN {v.HELD_TYPES})
    AND NOT (s.status = '{model.RUNNING}' AND s.executor = '{RUN_CHILD}' AND s.result IS NULL)
    AND NOT EXISTS (SELECT 1 FROM timers t WHERE t.run_id = s.run_id AND t.step_id = s.step_id
                    AND t.fired_at IS NULL AND t.kind != '{timers.STEP_TIMEOUT}')"""


def steps_needing_tasks(conn: sqlite3.Connection, run_id: str) -> list[sqlite3.Row]:
    """What resume re-dispatches (tasks dropped while the run was paused)."""
    return conn.execute(f"SELECT s.* FROM workflow_run_steps s WHERE s.run_id = ? AND {_NEEDS_TASK}", (run_id,)).fetchall()


async def lost_task_candidates(readers: Readers, created_before: str) -> list[sqlite3.Row]:
    """The reconciler's list: attempts of active runs, older than the cutoff, that need a task."""
    return await readers.fetchall(
        f"""SELECT s.run_id, s.step_id, s.attempt, s.idempotency_key, r.traceparent
           FROM workflow_run_steps s JOIN workflow_runs r ON r.run_id = s.run_id
           WHERE r.status IN {v.ACTIVE_RUNS} AND s.created_at < ? AND {_NEEDS_TASK}""",
        (created_before,),
    )


async def unstarted_runs(readers: Readers, created_before: str) -> list[sqlite3.Row]:
    """PENDING runs whose run task may be lost; not those waiting for a concurrency slot (issue 18:
    they have no task on purpose, the run that frees a slot gives them one)."""
    return await readers.fetchall(
        f"SELECT run_id, traceparent FROM workflow_runs WHERE status = '{model.PENDING}' AND created_at < ?"
        " AND NOT EXISTS (SELECT 1 FROM governance_slots g WHERE g.run_id = workflow_runs.run_id AND g.queued = 1)",
        (created_before,))


async def count_unfinished_by_status(readers: Readers) -> dict[str, int]:
    rows = await readers.fetchall(
        f"SELECT status, COUNT(*) AS n FROM workflow_runs WHERE status NOT IN {v.TERMINAL_RUNS} GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


class Savepoint:
    """A nested savepoint inside the writer's transaction whose undo also drops the decoded run state
    staged inside it (the cache is never ahead of the database), for callers that decide per error."""

    def __init__(self, conn: sqlite3.Connection, name: str) -> None:
        self.conn, self.name = conn, name
        conn.execute(f"SAVEPOINT {name}")
        self.mark = run_cache.checkpoint()

    def undo(self) -> None:
        run_cache.rollback_to(self.mark)
        self.conn.execute(f"ROLLBACK TO {self.name}")
        self.conn.execute(f"RELEASE {self.name}")

    def keep(self) -> None:
        self.conn.execute(f"RELEASE {self.name}")


@contextlib.contextmanager
def savepoint(conn: sqlite3.Connection, name: str) -> Iterator[None]:
    """A nested savepoint inside the writer's transaction: undo one attempt at a change and try another."""
    point = Savepoint(conn, name)
    try:
        yield
    except BaseException:
        point.undo()
        raise
    point.keep()
