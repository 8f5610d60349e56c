"""The built-in waits: a human approval and a named signal. Both are decided here, not by an executor.

An approval gate writes an approval row (and its timeout timer); a decision or its timeout becomes
DESIGN 3's result and then the `onReject`/`onTimeout` policy. A signal delivered before its wait is
buffered and consumed once. Imports `core.model`, `core.scopes`, `core.identity`, `core.flow`.
"""

from __future__ import annotations

from typing import Any

from station_wf.core import scopes
from station_wf.core.cow import fork_engine
from station_wf.core.flow import end_run, fail_now, succeed
from station_wf.core.identity import step_id
from station_wf.core.model import (
    CANCELLED,
    FAILED,
    TIMED_OUT,
    WAITING_APPROVAL,
    WAITING_SIGNAL,
    Event,
    NewApproval,
    NewTimer,
    RunState,
    Signal,
    StepUpdate,
    StepView,
    Transition,
)
from station_wf.expr.paths import get_path


def approval_id_for(step: StepView, run_id: str) -> str:
    return "apr-" + step_id(run_id, step.step_id, str(step.attempt))[:16]


def request_approval(defn: dict[str, Any], run: RunState, engine: dict[str, Any], step: StepView,
                      state: dict[str, Any], rendered: dict[str, Any]) -> Transition:
    """The gate: step and run wait; an approval row and, with a timeout, a durable timer."""
    summary = None
    if rendered.get("summaryPath"):
        summary = get_path(scopes.view(run, engine, step.branch_path), rendered["summaryPath"], default=None)
    timeout = rendered.get("timeoutSeconds") or state.get("timeoutSeconds")
    approval = NewApproval(
        approval_id=approval_id_for(step, run.run_id), step_id=step.step_id, attempt=step.attempt, state_name=step.state_name,
        message=rendered.get("message"), summary=summary, approvers=list(rendered.get("approvers") or []),
        timeout_seconds=float(timeout) if timeout else None,
        on_reject=rendered.get("onReject") or "fail", on_timeout=rendered.get("onTimeout") or "fail",
    )
    t = Transition(engine=engine, step_updates=[StepUpdate(step.step_id, step.attempt, WAITING_APPROVAL, input=rendered)],
                   approvals=[approval])
    t.events.append(Event("step.started", {"attempt": step.attempt, "executor": "human.approval", "input": rendered}, step.step_id))
    t.events.append(Event("approval.requested", {"approvalId": approval.approval_id, "message": approval.message,
                                                 "summary": summary, "approvers": approval.approvers,
                                                 "timeoutSeconds": approval.timeout_seconds}, step.step_id))
    if approval.timeout_seconds:
        t.timers.append(NewTimer("approval_timeout", approval.timeout_seconds, step.step_id, step.attempt,
                                 {"approvalId": approval.approval_id}))
    return t


def approval_decided(defn: dict[str, Any], run: RunState, step: StepView, decision: str, decided_by: str | None,
                     comment: str | None, policy: str, approval_id: str | None = None) -> Transition:
    """approved | rejected | timed_out -> DESIGN 3's result at resultPath, then the onReject/onTimeout policy."""
    engine = fork_engine(run.engine)
    result = {"approved": decision == "approved", "decision": decision, "decidedBy": decided_by,
              "comment": comment, "decidedAt": run.now}
    kind = "approval.timed_out" if decision == "timed_out" else "approval.decided"
    # The event has its own dict: the result itself is written to the context exactly as DESIGN 3 says.
    t = Transition(engine=engine, events=[Event(kind, {**result, "approvalId": approval_id}, step.step_id)])
    return wait_outcome(defn, run, engine, step, t, result, ok=decision == "approved", policy=policy,
                         timed_out=decision == "timed_out", what=f"approval {decision.replace('_', ' ')}")


def wait_outcome(defn: dict[str, Any], run: RunState, engine: dict[str, Any], step: StepView, t: Transition, result: Any,
                  ok: bool, policy: str, timed_out: bool, what: str) -> Transition:
    if ok or policy == "continue":
        return succeed(defn, run, engine, step, result, t=t)
    error = {"type": "wait_timeout" if timed_out else "rejected", "message": f"state {step.state_name!r}: {what}", "result": result}
    if policy == "cancel":
        t.step_updates.append(StepUpdate(step.step_id, step.attempt, CANCELLED, output=result, error=error))
        end_run(run, engine, t, CANCELLED, {**error, "stateName": step.state_name})
        return t
    return fail_now(defn, run, engine, step, error, t, status=TIMED_OUT if timed_out else FAILED)


def wait_for_signal(defn: dict[str, Any], run: RunState, engine: dict[str, Any], step: StepView,
                     state: dict[str, Any], rendered: dict[str, Any]) -> Transition:
    name = str(rendered.get("signal") or "")
    t = Transition(engine=engine)
    t.events.append(Event("step.started", {"attempt": step.attempt, "executor": "signal.wait", "input": rendered}, step.step_id))
    buffered = next((sig for sig in run.signals if sig.name == name), None)
    if buffered is not None:  # arrived before its wait: consumed now, once
        return signal_received(defn, run, step, buffered, t=t, engine=engine)
    t.step_updates.append(StepUpdate(step.step_id, step.attempt, WAITING_SIGNAL, input=rendered))
    t.events.append(Event("signal.waiting", {"signal": name}, step.step_id))
    timeout = rendered.get("timeoutSeconds") or state.get("timeoutSeconds")
    if timeout:
        t.timers.append(NewTimer("signal_timeout", float(timeout), step.step_id, step.attempt, {"signal": name}))
    return t


def signal_received(defn: dict[str, Any], run: RunState, step: StepView, sig: Signal, t: Transition | None = None,
                    engine: dict[str, Any] | None = None) -> Transition:
    engine = engine if engine is not None else fork_engine(run.engine)
    t = t if t is not None else Transition(engine=engine)
    t.consumed_signals.append((sig.id, step.step_id))
    t.events.append(Event("signal.consumed", {"signal": sig.name, "signalId": sig.id, "payload": sig.payload}, step.step_id))
    return succeed(defn, run, engine, step, sig.payload, t=t)

