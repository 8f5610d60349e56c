"""The pure interpreter: (definition, run state, event) -> the transition to commit. No I/O here.

Everything the engine decides is decided in this module, so it can be tested without a database or a
broker, and so the shell (worker, API) only loads state, calls one of these functions, and commits
what it returns in one transaction.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from station_wf.engine.identity import idempotency_key, step_id
from station_wf.expr.paths import PathError, set_path
from station_wf.expr.templates import TemplateError, render

# Run statuses (PRD 3.6).
PENDING = "PENDING"
RUNNING = "RUNNING"
WAITING_APPROVAL = "WAITING_APPROVAL"
WAITING_SIGNAL = "WAITING_SIGNAL"
PAUSED = "PAUSED"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
TIMED_OUT = "TIMED_OUT"
TERMINAL_RUN_STATUSES = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})

# Step statuses.
SUCCEEDED = "SUCCEEDED"
OPEN_STEP_STATUSES = frozenset({PENDING, RUNNING})

RESERVED_INPUT_KEYS = ("workflow", "steps", "ctx")


@dataclass(frozen=True)
class StepView:
    """What the interpreter needs to know about one attempt of a step."""

    step_id: str
    state_name: str
    attempt: int
    branch_path: str = ""
    foreach_index: int | None = None


@dataclass(frozen=True)
class NewStep:
    step_id: str
    state_name: str
    state_type: str
    branch_path: str
    foreach_index: int | None
    attempt: int
    idempotency_key: str


@dataclass(frozen=True)
class Event:
    type: str
    payload: dict[str, Any]
    step_id: str | None = None


@dataclass
class Transition:
    """Everything one event changes; the shell commits it atomically with the tasks for `new_steps`.

    The shell appends a `step.scheduled` event for each new step, since only it knows the attempt
    number a revisited state continues with.
    """

    run_status: str | None = None
    run_error: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    step_status: str | None = None
    step_output: Any = None
    step_error: dict[str, Any] | None = None
    new_steps: list[NewStep] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


# What the worker must do with a step it received.
@dataclass(frozen=True)
class Execute:
    action: str
    input: dict[str, Any]
    timeout_seconds: float | None


@dataclass(frozen=True)
class Immediate:
    """The step's result is known without an executor (inject, transform, switch)."""

    output: Any
    next_state: str | None = None


@dataclass(frozen=True)
class Fail:
    error: dict[str, Any]


Plan = Execute | Immediate | Fail


def initial_context(defn: dict[str, Any], run_id: str, version: int, run_input: dict[str, Any], started_at: str) -> dict[str, Any]:
    """DESIGN 3: a copy of the input plus the reserved `workflow` and `steps` keys."""
    context = copy.deepcopy(run_input)
    context["workflow"] = {
        "id": defn["id"],
        "version": version,
        "runId": run_id,
        "input": copy.deepcopy(run_input),
        "startedAt": started_at,
    }
    context["steps"] = {}
    return context


def scope_states(defn: dict[str, Any], branch_path: str) -> dict[str, dict[str, Any]]:
    """The states visible from a step's scope (top level for now; branches and iterators nest here)."""
    if branch_path:
        raise NotImplementedError(f"nested scope {branch_path!r} is not supported yet")
    return defn["states"]


def _new_step(run_id: str, state: dict[str, Any], branch_path: str = "", foreach_index: int | None = None, attempt: int = 1) -> NewStep:
    sid = step_id(run_id, state["name"], branch_path, foreach_index)
    return NewStep(
        step_id=sid,
        state_name=state["name"],
        state_type=state["type"],
        branch_path=branch_path,
        foreach_index=foreach_index,
        attempt=attempt,
        idempotency_key=idempotency_key(run_id, sid, attempt),
    )


def start_run(defn: dict[str, Any], run_id: str, context: dict[str, Any]) -> Transition:
    """The run task: RUNNING, and the start state's first step scheduled."""
    start_state = defn["states"][defn["start"]]
    first = _new_step(run_id, start_state)
    return Transition(
        run_status=RUNNING,
        new_steps=[first],
        events=[Event("run.started", {"context": context})],
    )


def plan_step(defn: dict[str, Any], context: dict[str, Any], step: StepView) -> Plan:
    """Decide how a received step runs: through an executor, or at once from the context."""
    state = scope_states(defn, step.branch_path)[step.state_name]
    kind = state["type"]
    if kind == "inject":
        return Immediate(copy.deepcopy(state.get("data")))
    if kind == "operation":
        try:
            rendered = render(state.get("input") or {}, context)
        except TemplateError as exc:
            return Fail({"type": "template", "message": f"state {state['name']!r}: {exc}"})
        return Execute(state["action"], rendered, state.get("timeoutSeconds"))
    return Fail({"type": "unsupported", "message": f"state type {kind!r} is not supported by this engine yet"})


def default_result_path(state: dict[str, Any]) -> str:
    """DESIGN 3: inject merges into the root; everything else writes `steps.<state>`."""
    if state["type"] == "inject":
        return "ctx"
    return f"steps.{state['name']}"


def step_succeeded(
    defn: dict[str, Any],
    run_id: str,
    context: dict[str, Any],
    step: StepView,
    output: Any,
    next_override: str | None = None,
) -> Transition:
    """Record the output at resultPath and move on: the next state, or the end of the run."""
    states = scope_states(defn, step.branch_path)
    state = states[step.state_name]
    new_context = copy.deepcopy(context)
    path = state.get("resultPath") or default_result_path(state)
    try:
        set_path(new_context, path, copy.deepcopy(output))
    except PathError as exc:
        return step_failed(defn, run_id, context, step, {"type": "result_path", "message": f"state {state['name']!r}: resultPath {path!r}: {exc}"})
    events = [Event("step.succeeded", {"attempt": step.attempt, "output": output, "write": {"path": path, "value": output}}, step.step_id)]
    transition = Transition(context=new_context, step_status=SUCCEEDED, step_output=output, events=events)
    target = next_override or state.get("next")
    if target and not state.get("end"):
        nxt = _new_step(run_id, states[target], step.branch_path, step.foreach_index)
        transition.new_steps.append(nxt)
    else:
        transition.run_status = COMPLETED
        events.append(Event("run.completed", {"lastState": state["name"]}))
    return transition


def step_failed(defn: dict[str, Any], run_id: str, context: dict[str, Any], step: StepView, error: dict[str, Any]) -> Transition:
    """A failed attempt with no retry left fails the run (retries come with the retry policy)."""
    events = [
        Event("step.failed", {"attempt": step.attempt, "error": error}, step.step_id),
        Event("run.failed", {"stateName": step.state_name, "stepId": step.step_id, "error": error}),
    ]
    return Transition(run_status=FAILED, run_error={**error, "stateName": step.state_name, "stepId": step.step_id},
                      step_status=FAILED, step_error=error, events=events)


def rebuild_context(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any] | None:
    """Replay a run's events into its context: the audit guarantee that history alone explains the state."""
    context: dict[str, Any] | None = None
    for kind, payload in events:
        if kind == "run.started":
            context = copy.deepcopy(payload["context"])
        elif kind == "step.succeeded" and context is not None and "write" in payload:
            set_path(context, payload["write"]["path"], copy.deepcopy(payload["write"]["value"]))
    return context
