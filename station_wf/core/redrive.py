"""Redrive: continue a FAILED, TIMED_OUT or CANCELLED run in place from where it stopped.

Why here: which steps run again is a decision over the run's engine state alone, so it is pure like
every other decision. The rule is top-down from the run's top scope: a scope's *current* step (the
last one created in it) is the one that was active when the run ended. A leaf step that failed, timed
out or was cancelled gets a new attempt (its retry budget starts again); a container (parallel,
foreach, try) is reopened under a new attempt of its step and every child scope of it that did not
succeed is resumed the same way; a try resumes the first section whose error was not handled. Every
step that succeeded keeps its result and is never scheduled again; scope data written by succeeded
steps stays where it is. A decided approval is never reopened (a rejected gate that failed the run is
asked again as a new approval).

A run whose state cannot be resumed exactly (it ended after its last step, or a foreach of it failed
before redrive existed and dropped its iterations' state) is refused with the reason: the caller
answers 409, and a re-run is the way on. Imports `core.model`, `core.scopes`, `core.flow`,
`core.history` and `core.cow` only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from station_wf.core import scopes
from station_wf.core.children import RUN_CHILD
from station_wf.core.cow import fork_engine
from station_wf.core.flow import new_step
from station_wf.core.history import empty_engine
from station_wf.core.interpreter import start_run
from station_wf.core.model import (
    CANCELLED,
    FAILED,
    RUNNING,
    SUCCEEDED,
    TERMINAL_RUN_STATUSES,
    TIMED_OUT,
    Event,
    NewStep,
    NewTimer,
    RunState,
    StepView,
    Transition,
)

REDRIVABLE_RUN_STATUSES = frozenset({FAILED, TIMED_OUT, CANCELLED})
_UNFINISHED = frozenset({FAILED, TIMED_OUT, CANCELLED})


class NotRedrivable(Exception):
    """The run cannot be continued in place; the message says why (the API's 409)."""


class _Plan:
    """What a redrive changes, collected while walking the scopes."""

    def __init__(self, run: RunState, engine: dict[str, Any], latest: list[StepView]) -> None:
        self.run = run
        self.engine = engine
        self.t = Transition(engine=engine)
        self.last_in_scope: dict[str, StepView] = {}
        for view in latest:  # ordered by creation: the last one of a scope wins
            self.last_in_scope[view.branch_path] = view
        self.retried: list[dict[str, Any]] = []


def not_redrivable_message(status: str) -> str:
    if status in TERMINAL_RUN_STATUSES:
        return f"the run is {status}: only a FAILED, TIMED_OUT or CANCELLED run can be redriven (re-run it instead)"
    return f"the run is {status} (still active): cancel it first, or wait for it to end"


def redrive_run(defn: dict[str, Any], run: RunState, status: str, latest: Iterable[StepView],
                actor: str | None, redrive: int) -> Transition:
    """The transition that continues the run. `latest` is the latest attempt of every step of the run,
    in the order the steps were created; `redrive` numbers this redrive (1 for the first)."""
    if status not in REDRIVABLE_RUN_STATUSES:
        raise NotRedrivable(not_redrivable_message(status))
    views = list(latest)
    if not views:  # it never started (cancelled while PENDING): start it now, as its run task would have
        t = start_run(defn, run)
    else:
        engine = fork_engine(run.engine) if run.engine.get("scopes") else empty_engine()
        engine.pop("pausedFrom", None)
        plan = _Plan(run, engine, views)
        _resume_scope(defn, plan, "")
        t = plan.t
        t.run_status = RUNNING
        if defn.get("timeoutSeconds"):
            t.timers.append(NewTimer("run_timeout", float(defn["timeoutSeconds"])))
    t.reopen = True
    t.events.insert(0, Event("run.redriven", {"redrive": redrive, "from": status,
                                              "steps": plan.retried if views else []}, actor=actor))
    return t


def _resume_scope(defn: dict[str, Any], plan: _Plan, path: str) -> None:
    current = plan.last_in_scope.get(path)
    where = f"scope {path!r}" if path else "the run"
    if current is None:
        raise NotRedrivable(f"{where} has no step to continue from")
    if current.status not in _UNFINISHED:
        raise NotRedrivable(f"{where} ended after its step {current.state_name!r} {current.status.lower()}: "
                            "there is no failed step to run again (re-run the run instead)")
    if path:
        plan.engine["scopes"][path]["status"] = RUNNING
    record = plan.engine["containers"].get(current.step_id)
    if record is not None and record["path"] == path and record["attempt"] == current.attempt:
        _reopen_container(defn, plan, current, record)
        return
    # A leaf; or a container closed before this visit entered it (the record, if any, is an earlier
    # visit's): entered afresh.
    state = scopes.scope_states(defn, path)[current.state_name]
    plan.t.new_steps.append(new_step(plan.run.run_id, state, path))
    plan.retried.append({"stepId": current.step_id, "stateName": current.state_name, "branchPath": path,
                         "previousAttempt": current.attempt, "previousStatus": current.status})
    if state.get("action") == RUN_CHILD:  # its new attempt continues the child it started, if that failed
        plan.engine["redriven"] = {**plan.engine.get("redriven", {}), current.step_id: current.attempt}


def _reopen_container(defn: dict[str, Any], plan: _Plan, current: StepView, record: dict[str, Any]) -> None:
    """A new attempt of the container's step, RUNNING with no task; its unfinished children resumed."""
    attempt = current.attempt + 1
    plan.t.new_steps.append(NewStep(current.step_id, current.state_name, current.state_type, record["path"],
                                    current.foreach_index, attempt, "", reopened=True))
    record["attempt"] = attempt
    record.pop("closed", None)
    container = scopes.scope_states(defn, record["path"])[record["state"]]
    if record["kind"] == "try":
        _reopen_try(defn, plan, record, container)
        return
    if record["kind"] == "foreach" and record.get("doneCount") and not record.get("results"):
        raise NotRedrivable(f"foreach {record['state']!r} failed before redrive was supported and kept no results "
                            "of its finished iterations: re-run the run instead")
    unfinished = []
    for child in record["children"]:
        scope = plan.engine["scopes"].get(child)
        if scope is None:
            raise NotRedrivable(f"{record['kind']} {record['state']!r}: the state of {child!r} was not kept "
                                "(the run failed before redrive was supported): re-run the run instead")
        if scope["status"] != SUCCEEDED:
            unfinished.append(child)
    if not unfinished:  # an open container always has a live child: this state was not written by us
        raise NotRedrivable(f"{record['kind']} {record['state']!r} has no unfinished branch or iteration to continue")
    record["failed"] = [p for p in record["failed"] if p not in unfinished]
    for child in unfinished:
        _resume_scope(defn, plan, child)


def _reopen_try(defn: dict[str, Any], plan: _Plan, record: dict[str, Any], container: dict[str, Any]) -> None:
    """Resume the first section whose failure was not handled: the try body unless a catch ran (then
    the catch), else the finally. A section resumed before the finally runs the finally again after it."""
    name = record["state"]

    def section(key: str) -> str:
        return scopes.join(record["path"], f"{name}!{key}")

    live = plan.engine["scopes"]
    opened = record["children"]  # this visit's sections, in order (scopes of earlier visits may linger)
    order = ["catch", "finally"] if section("catch") in opened else ["try", "finally"]
    target = next((key for key in order if section(key) in opened and live[section(key)]["status"] != SUCCEEDED), None)
    if target is None:
        raise NotRedrivable(f"try {name!r} has no unfinished section to continue")
    record["phase"] = target
    record.pop("error", None)
    if target != "finally" and section("finally") in live:  # it runs again once the section is done
        del live[section("finally")]
        record["children"] = [c for c in record["children"] if c != section("finally")]
    _resume_scope(defn, plan, section(target))
