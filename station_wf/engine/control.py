"""Transactions for what people and timers do to a run: decide approvals, deliver signals, pause,
resume, cancel. Each is one writer transaction with compare-and-set on the current state, so a late
timer, a second click or a lost race changes nothing and is reported as a conflict.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from station_wf.core import interpreter as ip
from station_wf.core import model, waits
from station_wf.core import redrive as redrive_core
from station_wf.core.limits import LIMITS
from station_wf.engine.commit import commit_transition, decide_and_commit
from station_wf.governance import admission
from station_wf.store import approvals, lineage, timers
from station_wf.store import runs as rs
from station_wf.store.db import utcnow
from station_wf.store.definitions import DefinitionCache
from station_wf.store.jsontext import loads


class Conflict(Exception):
    """The transition is not allowed now; `current` says what the state is."""

    def __init__(self, message: str, current: dict[str, Any]) -> None:
        super().__init__(message)
        self.current = current


class Missing(Exception):
    pass


@dataclass
class Outcome:
    tasks: int = 0
    cancelled_run: str | None = None


def _run_or_missing(conn: sqlite3.Connection, run_id: str) -> rs.RunRow:
    run = rs.load_run(conn, run_id)
    if run is None:
        raise Missing(f"run {run_id!r} not found")
    return run


def approval_row(conn: sqlite3.Connection, run_id: str, approval_id: str) -> sqlite3.Row:
    row = approvals.load(conn, run_id, approval_id)
    if row is None:
        raise Missing(f"approval {approval_id!r} not found on run {run_id!r}")
    return row


def decide_approval(conn: sqlite3.Connection, defs: DefinitionCache, run_id: str, approval_id: str, decision: str,
                    decided_by: str | None, comment: str | None) -> Outcome:
    """approved | rejected | timed_out, once: the approval row's `pending` status is the compare-and-set."""
    run = _run_or_missing(conn, run_id)
    row = approval_row(conn, run_id, approval_id)
    if row["status"] != approvals.PENDING:
        raise Conflict(f"approval is already {row['status']}", {"status": row["status"], "decidedBy": row["decided_by"],
                                                                "decidedAt": row["decided_at"]})
    if run.status == model.PAUSED:  # review L2: a paused run does not advance
        raise Conflict("run is PAUSED: resume it before deciding its approvals", {"status": row["status"], "runStatus": run.status})
    step_row = rs.load_step(conn, run_id, row["step_id"], row["attempt"])
    if run.status in model.TERMINAL_RUN_STATUSES or step_row is None or step_row["status"] != model.WAITING_APPROVAL:
        raise Conflict(f"run is {run.status}", {"status": row["status"], "runStatus": run.status})
    now = utcnow()
    approvals.decide(conn, approval_id, decision, decided_by, comment, now)
    timers.close_for_step(conn, run_id, row["step_id"], timers.APPROVAL_TIMEOUT, now)
    policy = row["on_timeout"] if decision == "timed_out" else row["on_reject"]
    view = rs.step_view(step_row)
    return Outcome(decide_and_commit(conn, defs, run, lambda defn, state: waits.approval_decided(
        defn, state, view, decision, decided_by, comment, policy, approval_id)))


def deliver_signal(conn: sqlite3.Connection, defs: DefinitionCache, run_id: str, name: str, payload: Any,
                   sender: str | None, effect_id: str | None = None) -> tuple[Outcome, dict[str, Any]]:
    """Record the signal in delivery order; a wait for it, if one is open, consumes it now.
    A signal already delivered under `effect_id` (a retried request) is reported, not delivered again."""
    run = _run_or_missing(conn, run_id)
    if effect_id is not None:
        prior = approvals.signal_by_effect(conn, effect_id)
        if prior is not None:
            return Outcome(), {"signalId": prior["id"], "name": prior["name"], "consumed": prior["consumed_by"] is not None}
    if run.status in model.TERMINAL_RUN_STATUSES:
        raise Conflict(f"run is {run.status}", {"status": run.status})
    if rs.run_counts(conn, run_id)[1] >= LIMITS.max_events_per_run:  # a signal is an event: refused, the run kept
        raise Conflict(f"the run has {LIMITS.max_events_per_run} events, its cap (STATION_MAX_EVENTS_PER_RUN)",
                       {"status": run.status, "limit": "max_events_per_run"})
    admission.check_signal_rate(conn, run.workflow_id)  # issue 18: 429 with Retry-After over the rate
    now = utcnow()
    signal_id = approvals.insert_signal(conn, run_id, name, payload, sender, now, effect_id)
    rs.append_event(conn, run_id, "signal.received", {"signal": name, "signalId": signal_id, "payload": payload}, actor=sender)
    info = {"signalId": signal_id, "name": name, "consumed": False}
    if run.status != model.PAUSED:  # review L2: a paused run keeps the signal and consumes it on resume
        consumed = _consume_signal(conn, defs, run, name, now)
        if consumed is not None:
            info["consumed"] = consumed[1] == signal_id
            return consumed[0], info
    rs.touch(conn, run_id, now)
    return Outcome(), info


def _consume_signal(conn: sqlite3.Connection, defs: DefinitionCache, run: rs.RunRow, name: str | None,
                    now: str) -> tuple[Outcome, int] | None:
    """The first wait for `name` (any name when None) that has a signal buffered consumes the oldest
    one (in order, once); returns the outcome and the consumed signal's id, or None."""
    for step_row in rs.steps_waiting_signal(conn, run.run_id):
        wanted = (json.loads(step_row["input"] or "{}")).get("signal")
        if name is not None and wanted != name:
            continue
        state = rs.run_state(conn, rs.load_run(conn, run.run_id) or run)
        oldest = next((s for s in state.signals if s.name == wanted), None)
        if oldest is None:
            continue
        defn = defs.get(conn, run.workflow_id, run.workflow_version)
        timers.close_for_step(conn, run.run_id, step_row["step_id"], timers.SIGNAL_TIMEOUT, now)
        t = waits.signal_received(defn, state, rs.step_view(step_row), oldest)
        return Outcome(commit_transition(conn, defs, rs.load_run(conn, run.run_id) or run, t)), oldest.id
    return None


def pause(conn: sqlite3.Connection, run_id: str, actor: str | None, depth: int = 0) -> Outcome:
    """PAUSED, and so is every child run it waits for (a paused parent's children do not advance)."""
    run = _run_or_missing(conn, run_id)
    if run.status == model.PAUSED:
        return Outcome()  # idempotent
    if run.status not in model.ACTIVE_RUN_STATUSES and run.status != model.PENDING:
        raise Conflict(f"cannot pause a run that is {run.status}", {"status": run.status})
    now = utcnow()
    rs.mark_paused(conn, run_id, run.status, now)
    rs.append_event(conn, run_id, "run.paused", {"from": run.status}, actor=actor, now=now)
    if run.engine.get("children") and depth < LIMITS.max_child_depth:
        for child in lineage.active_children(conn, run_id, waited_only=True):
            if rs.run_status(conn, child) != model.PAUSED:
                pause(conn, child, actor, depth + 1)
    return Outcome()


def resume(conn: sqlite3.Connection, defs: DefinitionCache, run_id: str, actor: str | None, depth: int = 0) -> Outcome:
    """Back to work: re-dispatch every step that is due (tasks dropped while paused), under fresh message ids;
    the paused children it waits for resume too.

    Timers that came due during the pause were held back by the timer loop and fire now."""
    run = _run_or_missing(conn, run_id)
    if run.status == model.PAUSED and run.engine.get("children") and depth < LIMITS.max_child_depth:
        for child in lineage.active_children(conn, run_id, statuses=(model.PAUSED,), waited_only=True):
            resume(conn, defs, child, actor, depth + 1)
    if run.status in model.ACTIVE_RUN_STATUSES:
        return Outcome()  # idempotent
    if run.status != model.PAUSED:
        raise Conflict(f"cannot resume a run that is {run.status}", {"status": run.status})
    now = utcnow()
    paused_from = run.engine.get("pausedFrom") or model.RUNNING
    target = model.PENDING if paused_from == model.PENDING else model.RUNNING
    rs.mark_resumed(conn, run_id, target, now)
    rs.append_event(conn, run_id, "run.resumed", {}, actor=actor, now=now)
    run = rs.load_run(conn, run_id)
    assert run is not None
    tasks = 0
    if target == model.PENDING:
        rs.enqueue_run_task(conn, run_id, run.traceparent, redispatch=f"resume{time.time_ns()}")
        return Outcome(1)
    due = rs.steps_needing_tasks(conn, run_id)
    for row in due:
        rs.enqueue_step_task(conn, run, row["step_id"], row["attempt"], row["idempotency_key"], redispatch=f"resume{time.time_ns()}")
        tasks += 1
    for _ in range(1000):  # signals delivered while paused are consumed now (bounded: one per waiting step)
        current = rs.load_run(conn, run_id)
        if current is None or current.status not in model.ACTIVE_RUN_STATUSES:
            break
        consumed = _consume_signal(conn, defs, current, None, now)
        if consumed is None:
            break
        tasks += consumed[0].tasks
    final = rs.load_run(conn, run_id)
    if final is not None and final.status == model.RUNNING:
        rs.apply_transition(conn, final, model.Transition())  # re-derive WAITING_* from open steps
    return Outcome(tasks)


def cancel(conn: sqlite3.Connection, defs: DefinitionCache, run_id: str, reason: str | None, actor: str | None) -> Outcome:
    run = _run_or_missing(conn, run_id)
    if run.status == model.CANCELLED:
        return Outcome(cancelled_run=run_id)  # idempotent
    if run.status in model.TERMINAL_RUN_STATUSES:
        raise Conflict(f"cannot cancel a run that is {run.status}", {"status": run.status})
    state = rs.run_state(conn, run)
    t = ip.cancel_run(state, reason or "cancelled by request", actor)
    commit_transition(conn, defs, run, t)
    return Outcome(cancelled_run=run_id)


def redrive(conn: sqlite3.Connection, defs: DefinitionCache, run_id: str, actor: str | None,
            by_parent: bool = False) -> Outcome:
    """Continue an ended run in place (core/redrive.py decides which steps run again), in one transaction.
    A child whose parent step took its outcome is continued through its parent (`by_parent`)."""
    run = _run_or_missing(conn, run_id)
    try:
        defs.get(conn, run.workflow_id, run.workflow_version)
    except LookupError:
        raise Conflict(f"the run's workflow {run.workflow_id!r} version {run.workflow_version} no longer exists: "
                       "re-run it on another version", {"status": run.status}) from None
    if run.status not in redrive_core.REDRIVABLE_RUN_STATUSES:
        raise Conflict(redrive_core.not_redrivable_message(run.status), {"status": run.status})
    link = lineage.parent_link(conn, run_id)
    if link is not None and link.parent_waits and not by_parent:
        raise Conflict(f"run {run_id} is the child run {link.parent_run_id}'s step waited for, and that step has its "
                       f"outcome: redrive run {link.parent_run_id} (it continues this child in place)",
                       {"status": run.status, "parentRunId": link.parent_run_id})
    error = lineage.run_error(conn, run_id)
    cap = loads(error) if error else None
    if isinstance(cap, dict) and cap.get("type") == "limit_exceeded" and cap.get("limit") in ("max_steps_per_run",
                                                                                           "max_events_per_run"):
        raise Conflict(f"the run ended on its cap ({cap.get('setting')}={cap.get('max')}): a redrive would pass it "
                       "again; re-run it instead", {"status": run.status, "limit": cap.get("limit")})
    refused = admission.readmit(conn, run_id, run.workflow_id, defs.get(conn, run.workflow_id, run.workflow_version),
                                (run.context.get("workflow") or {}).get("input", {}))
    if refused:
        raise Conflict(f"the run cannot be redriven now: {refused}", {"status": run.status})
    number = lineage.count_redrive(conn, run_id)
    latest = lineage.latest_attempts(conn, run_id)
    try:
        tasks = decide_and_commit(conn, defs, run, lambda defn, state: redrive_core.redrive_run(
            defn, state, run.status, latest, actor, number))
    except redrive_core.NotRedrivable as exc:
        raise Conflict(str(exc), {"status": run.status}) from None
    return Outcome(tasks)


def fire_approval_timeout(conn: sqlite3.Connection, defs: DefinitionCache, run_id: str, approval_id: str) -> Outcome:
    try:
        return decide_approval(conn, defs, run_id, approval_id, "timed_out", None, None)
    except (Conflict, Missing):
        return Outcome()  # decided meanwhile: the timer changes nothing
