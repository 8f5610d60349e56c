"""The worker's transactions: begin a step, record its executor's result, decide what follows, and the
delivery budget that ends poison tasks (DESIGN 6).

They run on the writer thread with no awaits and no I/O outside the connection, so the writer may run
one again (after rolling it back) without side effects. Recording the result and deciding are two
transactions on purpose: a decision that fails leaves the result stored, and is decided again from it
without calling the executor again. A task whose handling failed or was interrupted `max_deliveries`
times is not decided again: its attempt is committed FAILED with type `engine_error`.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from typing import Any

from station_wf.core import interpreter as ip
from station_wf.core import model
from station_wf.core.children import ACTIONS as child_actions
from station_wf.core.limits import LIMITS
from station_wf.engine import children
from station_wf.engine.commit import commit_transition, decide_and_commit
from station_wf.executors.base import StepCall
from station_wf.faults import crash_point, fault_error
from station_wf.governance import admission, agents
from station_wf.protocol import Task
from station_wf.store import runs as rs
from station_wf.store import timers
from station_wf.store.definitions import DefinitionCache
from station_wf.store.jsontext import loads

LOGGED_MARK = "_logged"  # issue 20 review M3: a tool-call entry already written as its event (never stored)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skip:
    reason: str
    later: float | None = None  # issue 18: give the task back, to be tried again this many seconds later


@dataclass(frozen=True)
class Unknown:
    """The run is not in this database: the task is not ours to drop (review C2)."""


@dataclass(frozen=True)
class Committed:
    tasks: int


@dataclass(frozen=True)
class Run:
    call: StepCall
    attrs: dict[str, Any]
    timeout_s: float  # the attempt's whole timeout (call.timeout_seconds is what is left of it)


def encode_result(output: Any, error: dict[str, Any] | None) -> str:
    """The stored form of an executor's outcome; an output that cannot be stored becomes an error."""
    try:
        return rs.dumps({"output": output, "error": error})
    except (TypeError, ValueError, RecursionError, OverflowError) as exc:
        return rs.dumps({"output": None, "error": {"type": "engine_error",
                                                    "message": f"the executor's output cannot be stored: {type(exc).__name__}: {exc}"}})


def _engine_error(row_state: str, deliveries: int, cause: str | None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": "engine_error",
                             "message": f"state {row_state!r}: gave up after {deliveries} failed or interrupted deliveries of its task"
                                        f" (STATION_MAX_DELIVERIES={LIMITS.max_deliveries})"}
    if cause:
        error["cause"] = cause
    return error


class StepTransactions:
    def __init__(self, definitions: DefinitionCache) -> None:
        self.definitions = definitions

    # -- run tasks ----------------------------------------------------------------------------
    def start_run(self, conn: sqlite3.Connection, run_id: str) -> int | Unknown:
        run = rs.load_run(conn, run_id)
        if run is None:
            return Unknown()
        if run.status != model.PENDING or not admission.may_start(conn, run_id):
            return 0  # started already, or (issue 18) waiting for a concurrency slot
        deliveries, cause = rs.run_deliveries(conn, run_id)
        if deliveries > LIMITS.max_deliveries:
            error = _engine_error("(start)", deliveries, cause)
            error["message"] = (f"the run's start task failed or was interrupted {deliveries} times"
                                f" (STATION_MAX_DELIVERIES={LIMITS.max_deliveries})")
            return commit_transition(conn, self.definitions, run, ip.engine_failure(rs.run_state(conn, run), None, error),
                                     checked=False)
        def start(defn: dict[str, Any], state: model.RunState) -> model.Transition:
            crash_point("worker.start_run")
            return ip.start_run(defn, state)

        return decide_and_commit(conn, self.definitions, run, start)

    def count_delivery(self, conn: sqlite3.Connection, task: Task, cause: str | None, increment: bool = True) -> int | None:
        if task.kind == "step":
            return rs.count_step_delivery(conn, task.run_id, task.step_id, task.attempt, cause, increment)
        return rs.count_run_delivery(conn, task.run_id, cause, increment)

    # -- step tasks ---------------------------------------------------------------------------
    def begin_step(self, conn: sqlite3.Connection, run_id: str, step: str, attempt: int) -> Skip | Unknown | Committed | Run:
        run = rs.load_run(conn, run_id)
        if run is None:
            return Unknown()
        if run.status not in model.ACTIVE_RUN_STATUSES:
            return Skip(f"run is {run.status}")  # paused runs get their tasks again on resume
        row = rs.load_step(conn, run_id, step, attempt)
        if row is None:
            return Skip("unknown step attempt")
        if row["status"] not in model.OPEN_STEP_STATUSES:
            return Skip(f"step attempt is {row['status']}")
        if row["deliveries"] > LIMITS.max_deliveries:
            return Committed(self.quarantine(conn, run, row))
        if row["status"] == model.RUNNING and row["result"] is not None:
            return Committed(self.decide(conn, run_id, step, attempt)[0])  # executed already: only decide again
        defn = self.definitions.get(conn, run.workflow_id, run.workflow_version)
        view = rs.step_view(row)
        decided = ip.begin_step(defn, rs.run_state(conn, run), view)
        if decided is None:
            return Skip(f"step attempt is already {row['status']}")
        if isinstance(decided, model.Transition):
            return Committed(commit_transition(conn, self.definitions, run, decided, view))
        if decided.action in child_actions:  # a run that starts a run: begun here, in this transaction
            explicit = LIMITS.rules.step_timeout(decided.timeout_seconds) if decided.timeout_seconds else None
            return Committed(children.begin(conn, self.definitions, run, row, view, decided.action, decided.input, explicit))
        timeout = LIMITS.rules.step_timeout(decided.timeout_seconds)
        left = timers.step_timeout_left(conn, run_id, step, attempt)
        if left is not None and left <= 0:  # the deadline passed while no process was executing it
            t = ip.step_failed(defn, rs.run_state(conn, run), view, ip.step_timeout_error(row["state_name"], timeout))
            timers.close_step_timeout(conn, run_id, step, attempt)
            return Committed(commit_transition(conn, self.definitions, run, t, view))
        if not agents.take_slot(conn, row["id"], run_id, decided.action, decided.input):  # issue 18: maxConcurrency
            return Skip("its agent runs maxConcurrency steps already", later=agents.RETRY_DELAY_S)
        rs.mark_running(conn, run, row, decided.action, decided.input, timeout)
        return Run(StepCall(
            run_id=run_id, step_id=step, attempt=attempt, idempotency_key=row["idempotency_key"],
            state_name=row["state_name"], action=decided.action, input=decided.input,
            timeout_seconds=timeout if left is None else left, traceparent=run.traceparent, context=run.context,
        ), {"workflow.id": run.workflow_id, "workflow.version": run.workflow_version, "run.id": run_id,
            "state.name": row["state_name"], "state.type": row["state_type"], "step.id": step, "attempt": attempt,
            "executor": decided.action}, timeout)

    def record(self, conn: sqlite3.Connection, run_id: str, step: str, attempt: int, result_json: str,
               metadata: dict[str, Any] | None) -> bool:
        pending = _unlogged((metadata or {}).get("toolCalls"))
        if metadata and isinstance(metadata.get("toolCalls"), list):  # the marks are never stored
            metadata = {**metadata, "toolCalls": [_unmarked(c) for c in metadata["toolCalls"]]}
        recorded = rs.record_result(conn, run_id, step, attempt, result_json, rs.dumps(metadata) if metadata else None)
        for call in pending if recorded else ():  # issue 20: the agent's tool calls, in the result's own transaction
            rs.append_event(conn, run_id, "agent.tool_called", {"attempt": attempt, **call}, step)
        return recorded

    def log_tool_call(self, conn: sqlite3.Connection, run_id: str, step: str, attempt: int,
                      call: dict[str, Any]) -> bool:
        """Issue 20 review M3: one tool call as it happens, so a delivery that dies (kill -9) leaves its trace;
        False when the attempt is no longer open (cancelled, recorded): its record says what happened."""
        row = rs.load_step(conn, run_id, step, attempt)
        if row is None or row["status"] != model.RUNNING or row["result"] is not None:
            return False
        rs.append_event(conn, run_id, "agent.tool_called", {"attempt": attempt, **call}, step)
        return True

    def record_interrupted_tool_calls(self, conn: sqlite3.Connection, run_id: str, step: str, attempt: int,
                                      calls: list[dict[str, Any]]) -> int:
        """Issue 20 review M3: the tool calls of a delivery the worker gave up on when stopping (its grace ran
        out), as `agent.tool_called` events; the attempt stays open and runs again on the redelivery."""
        row = rs.load_step(conn, run_id, step, attempt)
        if row is None or row["status"] != model.RUNNING or row["result"] is not None:
            return 0  # recorded or closed meanwhile: its own record says what happened
        calls = _unlogged(calls)
        for call in calls:
            rs.append_event(conn, run_id, "agent.tool_called",
                            {"attempt": attempt, **call, "interrupted": "the worker stopped during the step"}, step)
        return len(calls)

    def decide(self, conn: sqlite3.Connection, run_id: str, step: str, attempt: int) -> tuple[int, bool]:
        """What follows the recorded result; returns (tasks enqueued, whether a failed attempt will be retried)."""
        run = rs.load_run(conn, run_id)
        if run is None or run.status in model.TERMINAL_RUN_STATUSES:
            return 0, False
        row = rs.load_step(conn, run_id, step, attempt)
        if row is None or row["status"] != model.RUNNING or row["result"] is None:  # closed meanwhile, or not recorded
            return 0, False
        result = loads(row["result"])
        view = rs.step_view(row)
        decided: list[model.Transition] = []

        def follow(defn: dict[str, Any], state: model.RunState) -> model.Transition:
            crash_point("worker.decide")
            if fault_error("worker.decide"):  # tests: a decision that fails every time (a poison)
                raise RuntimeError("fault injected at worker.decide")
            if result.get("error") is not None:
                t = ip.step_failed(defn, state, view, result["error"])
            else:
                t = ip.step_succeeded(defn, state, view, result.get("output"))
            decided.append(t)
            return t

        timers.close_step_timeout(conn, run_id, step, attempt)  # the interpreter never reads timers
        tasks = decide_and_commit(conn, self.definitions, run, follow, view)
        will_retry = any(e.type == "step.failed" and e.payload.get("willRetry") for e in decided[0].events)
        return tasks, will_retry

    def quarantine(self, conn: sqlite3.Connection, run: rs.RunRow, row: sqlite3.Row) -> int:
        """Past the delivery budget: FAILED with engine_error, no retry. If even deciding that failure
        through the definition fails, the attempt and the run fail without it."""
        error = _engine_error(row["state_name"], row["deliveries"], row["delivery_error"])
        view = rs.step_view(row)
        log.error("worker: run %s step %s#%d: %s", run.run_id, row["step_id"], row["attempt"], error["message"])
        timers.close_step_timeout(conn, run.run_id, row["step_id"], row["attempt"])
        try:
            with rs.savepoint(conn, "quarantine"):
                return decide_and_commit(conn, self.definitions, run,
                                         lambda defn, state: ip.step_failed(defn, state, view, error, retry=False), view)
        except Exception as exc:  # noqa: BLE001 - the definition's failure path is poisoned too
            log.error("worker: failing run %s outright: %s: %s", run.run_id, type(exc).__name__, exc)
            t = ip.engine_failure(rs.run_state(conn, run), view, {**error, "decision": f"{type(exc).__name__}: {exc}"})
            return commit_transition(conn, self.definitions, run, t, view, checked=False)


def _unlogged(calls: Any) -> list[dict[str, Any]]:
    """The tool-call entries not yet written as events (the worker marks those it logged as they happened).
    Pure: the writer may run a transaction again."""
    if not isinstance(calls, list):
        return []
    return [_unmarked(c) for c in calls if isinstance(c, dict) and not c.get(LOGGED_MARK)]


def _unmarked(call: Any) -> Any:
    return {k: v for k, v in call.items() if k != LOGGED_MARK} if isinstance(call, dict) else call
