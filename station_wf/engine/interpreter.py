"""The pure interpreter: (definition, run state, event) -> the transition to commit. No I/O here.

Everything the engine decides is decided in this module, so it can be tested without a database or a
broker, and so the shell (worker, timers, API) only loads state, calls one of these functions, and
commits what it returns in one transaction.

Nesting. A step lives in a *scope*, named by its `branch_path`: "" is the top level; each frame adds
`state:branch` (a parallel branch), `state[i]` (a foreach iteration) or `state!section` (a try
section), joined with "/". Parallel branches and foreach iterations write into a scope-local object
(DESIGN 3); try sections are transparent and write where their parent writes. The run's engine
state (`scopes` and `containers`) is plain JSON stored with the run, so a restart resumes a fan-out
exactly where it was.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from typing import Any

from station_wf.dsl.approvers import rendered_problem as rendered_approvers_problem
from station_wf.engine import station_flow
from station_wf.engine.identity import idempotency_key, step_id
from station_wf.engine.limits import LIMITS
from station_wf.expr.paths import PathError, get_path, set_path
from station_wf.expr.starlark_eval import ExpressionError, compile_expression, truthy
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
ACTIVE_RUN_STATUSES = frozenset({RUNNING, WAITING_APPROVAL, WAITING_SIGNAL})  # tasks are executed

# Step statuses.
SUCCEEDED = "SUCCEEDED"
OPEN_STEP_STATUSES = frozenset({PENDING, RUNNING, WAITING_APPROVAL, WAITING_SIGNAL})
CONTAINER_TYPES = frozenset({"parallel", "foreach", "try"})

RESERVED_INPUT_KEYS = ("workflow", "steps", "ctx")
WAIT_POLICIES = ("fail", "cancel", "continue")
EXPRESSION_TIMEOUT_S = 0.1  # the daemon may change it from settings


@dataclass(frozen=True)
class StepView:
    """What the interpreter needs to know about one attempt of a step."""

    step_id: str
    state_name: str
    attempt: int
    branch_path: str = ""
    foreach_index: int | None = None
    status: str = PENDING
    state_type: str = ""
    try_number: int = 0  # the attempt within this visit of the state (0: same as `attempt`)
    has_result: bool = False  # the executor's result is recorded; only the decision is left

    @property
    def tries(self) -> int:
        """Retries count per visit: a loop revisiting a state starts again at 1 (review M7)."""
        return self.try_number or self.attempt


@dataclass(frozen=True)
class Signal:
    id: int
    name: str
    payload: Any


@dataclass(frozen=True)
class RunState:
    run_id: str
    context: dict[str, Any]
    engine: dict[str, Any]
    open_steps: tuple[StepView, ...] = ()
    now: str = ""
    signals: tuple[Signal, ...] = ()  # delivered, not yet consumed, in delivery order


@dataclass(frozen=True)
class NewApproval:
    approval_id: str
    step_id: str
    attempt: int
    state_name: str
    message: str | None
    summary: Any
    approvers: list[str]
    timeout_seconds: float | None
    on_reject: str
    on_timeout: str


@dataclass(frozen=True)
class NewStep:
    step_id: str
    state_name: str
    state_type: str
    branch_path: str
    foreach_index: int | None
    attempt: int
    idempotency_key: str
    delay_seconds: float = 0.0  # > 0: held by a durable timer (retry back-off) before its task
    inline: bool = False  # decided without an executor: may run in the same transaction as its cause


@dataclass(frozen=True)
class StepUpdate:
    step_id: str
    attempt: int
    status: str
    output: Any = None
    error: dict[str, Any] | None = None
    only_if_open: bool = False  # cancellations: compare-and-set, never overwrite a closed attempt
    input: dict[str, Any] | None = None  # the rendered input of a built-in wait (approval, signal)


@dataclass(frozen=True)
class NewTimer:
    kind: str  # sleep | run_timeout (retry timers come from NewStep.delay_seconds)
    delay_seconds: float
    step_id: str | None = None
    attempt: int | None = None
    payload: dict[str, Any] = field(default_factory=dict)


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
    engine: dict[str, Any] | None = None
    step_updates: list[StepUpdate] = field(default_factory=list)
    new_steps: list[NewStep] = field(default_factory=list)
    timers: list[NewTimer] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    approvals: list[NewApproval] = field(default_factory=list)
    consumed_signals: list[tuple[int, str]] = field(default_factory=list)  # (signal id, step id)


@dataclass(frozen=True)
class Execute:
    """The step needs an executor; the shell records it RUNNING with this rendered input."""

    action: str
    input: dict[str, Any]
    timeout_seconds: float | None


# -- scopes ---------------------------------------------------------------------------------------
def _frames(path: str) -> list[str]:
    return path.split("/") if path else []


def _join(path: str, frame: str) -> str:
    return f"{path}/{frame}" if path else frame


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _parse_frame(frame: str) -> tuple[str, str, str | int]:
    """('parallel'|'foreach'|'try', state name, branch name | index | section)."""
    if frame.endswith("]") and "[" in frame:
        name, _, idx = frame[:-1].partition("[")
        return "foreach", name, int(idx)
    if "!" in frame:
        name, _, section = frame.partition("!")
        return "try", name, section
    name, _, branch = frame.partition(":")
    return "parallel", name, branch


def scope_states(defn: dict[str, Any], branch_path: str) -> dict[str, dict[str, Any]]:
    """The states visible from a scope: walk the frames down from the top level."""
    states = defn["states"]
    for frame in _frames(branch_path):
        kind, name, key = _parse_frame(frame)
        container = states[name]
        if kind == "parallel":
            states = next(b for b in container["branches"] if b["name"] == key)["states"]
        elif kind == "foreach":
            states = container["iterator"]["states"]
        else:
            states = container[key]["states"]
    return states


def _scope_start(defn: dict[str, Any], container: dict[str, Any], kind: str, key: str | int) -> str:
    if kind == "parallel":
        return next(b for b in container["branches"] if b["name"] == key)["start"]
    if kind == "foreach":
        return container["iterator"]["start"]
    return container[key]["start"]


def _innermost_index(path: str) -> int | None:
    for frame in reversed(_frames(path)):
        kind, _, key = _parse_frame(frame)
        if kind == "foreach":
            return int(key)
    return None


def _owner(engine: dict[str, Any], path: str) -> str:
    """The scope whose object a step in `path` writes to: try sections are transparent."""
    while path and engine["scopes"][path]["kind"] == "try":
        path = _parent(path)
    return path


def _overlay(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Scope-local values over the outer ones; `steps`-like objects merge one level deep."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def view(rs: RunState, engine: dict[str, Any], path: str) -> dict[str, Any]:
    """What a step in `path` reads: the context, overlaid with each enclosing scope's vars and writes."""
    names = rs.context
    for depth in range(1, len(_frames(path)) + 1):
        scope = engine["scopes"]["/".join(_frames(path)[:depth])]
        if scope["kind"] == "try":
            if scope.get("vars"):
                names = _overlay(names, scope["vars"])
            continue
        names = _overlay(names, {**scope.get("vars", {}), **scope["data"]})
    return names


def _names(rs: RunState, engine: dict[str, Any], path: str) -> dict[str, Any]:
    names = dict(view(rs, engine, path))
    names["ctx"] = rs.context
    return names


# -- identities -----------------------------------------------------------------------------------
def needs_executor(state: dict[str, Any]) -> bool:
    """Only an executor call (agent.run) needs a task of its own; every other state is decided here."""
    return state["type"] == "operation" and state.get("action") not in ("human.approval", "signal.wait")


def _new_step(run_id: str, state: dict[str, Any], path: str, attempt: int = 1, delay: float = 0.0) -> NewStep:
    index = _innermost_index(path)
    sid = step_id(run_id, state["name"], path, index)
    return NewStep(sid, state["name"], state["type"], path, index, attempt, idempotency_key(run_id, sid, attempt), delay,
                   inline=not needs_executor(state))


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


def empty_engine() -> dict[str, Any]:
    return {"scopes": {"": {"kind": "top", "data": {}, "last": None}}, "containers": {}}


# -- events ---------------------------------------------------------------------------------------
def start_run(defn: dict[str, Any], rs: RunState) -> Transition:
    """The run task: RUNNING, the start state's first step, and the run's durable timeout."""
    engine = empty_engine()
    t = Transition(run_status=RUNNING, engine=engine, events=[Event("run.started", started_payload(rs.context))])
    t.new_steps.append(_new_step(rs.run_id, defn["states"][defn["start"]], ""))
    if defn.get("timeoutSeconds"):
        t.timers.append(NewTimer("run_timeout", float(defn["timeoutSeconds"])))
    return t


def begin_step(defn: dict[str, Any], rs: RunState, step: StepView) -> Execute | Transition | None:
    """A step's task arrived: run it through an executor, or decide it here. None: nothing to do."""
    state = scope_states(defn, step.branch_path)[step.state_name]
    kind = state["type"]
    if step.status != PENDING and (kind != "operation" or step.status != RUNNING):
        return None  # entered already (containers, sleeps) or closed; only an executor call is re-run
    engine = copy.deepcopy(rs.engine)
    if kind == "operation":
        names = view(rs, engine, step.branch_path)
        station_input = _station_input(defn, rs, engine, step, state)
        if station_flow.is_station(defn):
            names = station_flow.declare(defn, {**names, "input": station_input})
        try:
            rendered = render(state.get("input") or {}, rs.context, extra=names if step.branch_path or station_input is not None else None,
                              timeout_s=EXPRESSION_TIMEOUT_S)
        except TemplateError as exc:
            return step_failed(defn, rs, step, {"type": "template", "message": f"state {state['name']!r}: {exc}"}, retry=False)
        if station_input is not None:
            rendered = station_flow.agent_call(state, rendered, station_input)
        if state["action"] == "human.approval":
            bad = rendered_approvers_problem(rendered["approvers"]) if "approvers" in rendered else None
            if bad:  # never a list of characters, never "anyone" (dsl/approvers.py)
                return step_failed(defn, rs, step, {"type": "validation", "message": f"state {state['name']!r}: {bad}"}, retry=False)
            return _request_approval(defn, rs, engine, step, state, rendered)
        if state["action"] == "signal.wait":
            return _wait_for_signal(defn, rs, engine, step, state, rendered)
        return Execute(state["action"], rendered, state.get("timeoutSeconds"))
    if kind == "inject":
        return _succeed(defn, rs, engine, step, copy.deepcopy(state.get("data")), started=True)
    if kind == "switch":
        return _switch(defn, rs, engine, step, state)
    if kind == "transform":
        return _transform(defn, rs, engine, step, state)
    if kind == "sleep":
        t = Transition(engine=engine, step_updates=[StepUpdate(step.step_id, step.attempt, RUNNING)])
        t.events.append(Event("step.started", {"attempt": step.attempt, "executor": "sleep",
                                               "durationSeconds": state["durationSeconds"]}, step.step_id))
        t.timers.append(NewTimer("sleep", float(state["durationSeconds"]), step.step_id, step.attempt))
        return t
    if kind in CONTAINER_TYPES:
        return _enter_container(defn, rs, engine, step, state)
    return step_failed(defn, rs, step, {"type": "unsupported", "message": f"state type {kind!r} cannot run here"}, retry=False)


def _station_input(defn: dict[str, Any], rs: RunState, engine: dict[str, Any], step: StepView, state: dict[str, Any]) -> Any:
    """Station's `input` name: the previous step's output (None for PRD definitions)."""
    if not station_flow.is_station(defn):
        return None
    last = engine["scopes"][_owner(engine, step.branch_path)].get("last")
    return station_flow.step_input(rs.context, last, state)


def approval_id_for(step: StepView, run_id: str) -> str:
    return "apr-" + step_id(run_id, step.step_id, str(step.attempt))[:16]


def _request_approval(defn: dict[str, Any], rs: RunState, engine: dict[str, Any], step: StepView,
                      state: dict[str, Any], rendered: dict[str, Any]) -> Transition:
    """The gate: step and run wait; an approval row and, with a timeout, a durable timer."""
    summary = None
    if rendered.get("summaryPath"):
        summary = get_path(view(rs, engine, step.branch_path), rendered["summaryPath"], default=None)
    timeout = rendered.get("timeoutSeconds") or state.get("timeoutSeconds")
    approval = NewApproval(
        approval_id=approval_id_for(step, rs.run_id), step_id=step.step_id, attempt=step.attempt, state_name=step.state_name,
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


def approval_decided(defn: dict[str, Any], rs: RunState, step: StepView, decision: str, decided_by: str | None,
                     comment: str | None, policy: str, approval_id: str | None = None) -> Transition:
    """approved | rejected | timed_out -> DESIGN 3's result at resultPath, then the onReject/onTimeout policy."""
    engine = copy.deepcopy(rs.engine)
    result = {"approved": decision == "approved", "decision": decision, "decidedBy": decided_by,
              "comment": comment, "decidedAt": rs.now}
    kind = "approval.timed_out" if decision == "timed_out" else "approval.decided"
    # The event has its own dict: the result itself is written to the context exactly as DESIGN 3 says.
    t = Transition(engine=engine, events=[Event(kind, {**result, "approvalId": approval_id}, step.step_id)])
    return _wait_outcome(defn, rs, engine, step, t, result, ok=decision == "approved", policy=policy,
                         timed_out=decision == "timed_out", what=f"approval {decision.replace('_', ' ')}")


def _wait_outcome(defn: dict[str, Any], rs: RunState, engine: dict[str, Any], step: StepView, t: Transition, result: Any,
                  ok: bool, policy: str, timed_out: bool, what: str) -> Transition:
    if ok or policy == "continue":
        return _succeed(defn, rs, engine, step, result, t=t)
    error = {"type": "wait_timeout" if timed_out else "rejected", "message": f"state {step.state_name!r}: {what}", "result": result}
    if policy == "cancel":
        t.step_updates.append(StepUpdate(step.step_id, step.attempt, CANCELLED, output=result, error=error))
        _end_run(rs, engine, t, CANCELLED, {**error, "stateName": step.state_name})
        return t
    return _fail_now(defn, rs, engine, step, error, t, status=TIMED_OUT if timed_out else FAILED)


def _wait_for_signal(defn: dict[str, Any], rs: RunState, engine: dict[str, Any], step: StepView,
                     state: dict[str, Any], rendered: dict[str, Any]) -> Transition:
    name = str(rendered.get("signal") or "")
    t = Transition(engine=engine)
    t.events.append(Event("step.started", {"attempt": step.attempt, "executor": "signal.wait", "input": rendered}, step.step_id))
    buffered = next((sig for sig in rs.signals if sig.name == name), None)
    if buffered is not None:  # arrived before its wait: consumed now, once
        return signal_received(defn, rs, step, buffered, t=t, engine=engine)
    t.step_updates.append(StepUpdate(step.step_id, step.attempt, WAITING_SIGNAL, input=rendered))
    t.events.append(Event("signal.waiting", {"signal": name}, step.step_id))
    timeout = rendered.get("timeoutSeconds") or state.get("timeoutSeconds")
    if timeout:
        t.timers.append(NewTimer("signal_timeout", float(timeout), step.step_id, step.attempt, {"signal": name}))
    return t


def signal_received(defn: dict[str, Any], rs: RunState, step: StepView, sig: Signal, t: Transition | None = None,
                    engine: dict[str, Any] | None = None) -> Transition:
    engine = engine if engine is not None else copy.deepcopy(rs.engine)
    t = t if t is not None else Transition(engine=engine)
    t.consumed_signals.append((sig.id, step.step_id))
    t.events.append(Event("signal.consumed", {"signal": sig.name, "signalId": sig.id, "payload": sig.payload}, step.step_id))
    return _succeed(defn, rs, engine, step, sig.payload, t=t)


def derive_status(open_statuses: list[str]) -> str:
    """An active run's status from its open steps: work pending wins, then approvals, then signals."""
    if any(s in (PENDING, RUNNING) for s in open_statuses):
        return RUNNING
    if WAITING_APPROVAL in open_statuses:
        return WAITING_APPROVAL
    if WAITING_SIGNAL in open_statuses:
        return WAITING_SIGNAL
    return RUNNING


def cancel_run(rs: RunState, reason: str, actor: str | None) -> Transition:
    """Operator cancel: every open step closed, the run CANCELLED (the reason and actor in its error)."""
    engine = copy.deepcopy(rs.engine)
    t = Transition(engine=engine)
    _end_run(rs, engine, t, CANCELLED, {"type": "cancelled", "message": reason or "cancelled", "by": actor})
    return t


def _started(step: StepView, executor: str) -> Event:
    return Event("step.started", {"attempt": step.attempt, "executor": executor, "redelivered": False}, step.step_id)


def _switch(defn: dict[str, Any], rs: RunState, engine: dict[str, Any], step: StepView, state: dict[str, Any]) -> Transition:
    names = _names(rs, engine, step.branch_path)
    if station_flow.is_station(defn):
        names["input"] = _station_input(defn, rs, engine, step, state)
        station_flow.declare(defn, names)
    if state.get("dataPath"):
        try:
            value = get_path(names, state["dataPath"])
        except PathError as exc:
            return _fail_now(defn, rs, engine, step, {"type": "switch", "message": f"state {state['name']!r}: dataPath {state['dataPath']!r}: {exc}"})
        names.update({"result": value, "_value": value, "val": value})
        if isinstance(value, dict):
            names.update({k: v for k, v in value.items() if isinstance(k, str) and k.isidentifier() and k not in ("ctx",)})
    for index, cond in enumerate(state["conditions"]):
        try:
            matched = truthy(compile_expression(cond["if"], f"switch {state['name']!r} condition").evaluate(
                names, timeout_s=EXPRESSION_TIMEOUT_S))
        except ExpressionError as exc:
            return _fail_now(defn, rs, engine, step, {"type": "expression", "message": str(exc), "condition": cond["if"],
                                                      "names": sorted(k for k in names if not k.startswith("__"))})
        if matched:
            return _succeed(defn, rs, engine, step, {"next": cond["next"], "matched": index, "condition": cond["if"]},
                            next_override=cond["next"], started=True)
    if state.get("defaultNext"):
        return _succeed(defn, rs, engine, step, {"next": state["defaultNext"], "matched": None},
                        next_override=state["defaultNext"], started=True)
    seen = {k: names[k] for k in ("result",) if k in names}
    return _fail_now(defn, rs, engine, step, {"type": "switch", "message": f"state {state['name']!r}: no condition matched and no defaultNext",
                                              "details": {"conditions": [c["if"] for c in state["conditions"]], "values": seen}})


def _transform(defn: dict[str, Any], rs: RunState, engine: dict[str, Any], step: StepView, state: dict[str, Any]) -> Transition:
    names = _names(rs, engine, step.branch_path)
    names["ctx"] = {**rs.context, "_timestamp": rs.now}
    scope = engine["scopes"][_owner(engine, step.branch_path)]
    names["input"] = scope.get("last") if scope.get("last") is not None else {}
    if station_flow.is_station(defn):
        names["input"] = _station_input(defn, rs, engine, step, state)
        station_flow.declare(defn, names)
    try:
        output = compile_expression(state["expression"], f"transform {state['name']!r}",
                                    programs=station_flow.is_station(defn)).evaluate(names, timeout_s=EXPRESSION_TIMEOUT_S)
    except ExpressionError as exc:
        return _fail_now(defn, rs, engine, step, {"type": "expression", "message": str(exc)})
    return _succeed(defn, rs, engine, step, output, started=True)


def _enter_container(defn: dict[str, Any], rs: RunState, engine: dict[str, Any], step: StepView, state: dict[str, Any]) -> Transition:
    t = Transition(engine=engine, step_updates=[StepUpdate(step.step_id, step.attempt, RUNNING)],
                   events=[_started(step, state["type"])])
    record: dict[str, Any] = {"kind": state["type"], "state": state["name"], "path": step.branch_path,
                              "stepId": step.step_id, "attempt": step.attempt, "children": [], "done": [], "failed": []}
    if state["type"] == "parallel":
        engine["containers"][step.step_id] = record
        for branch in state["branches"]:
            _open_scope(defn, rs, engine, t, record, f"{state['name']}:{branch['name']}", "branch", {})
        return t
    if state["type"] == "foreach":
        names = _names(rs, engine, step.branch_path)
        try:
            items = get_path(names, state["itemsPath"])
        except PathError as exc:
            return _fail_now(defn, rs, engine, step, {"type": "foreach", "message": f"state {state['name']!r}: itemsPath {state['itemsPath']!r}: {exc}"}, t)
        if not isinstance(items, list):
            return _fail_now(defn, rs, engine, step, {"type": "foreach", "message": f"state {state['name']!r}: itemsPath {state['itemsPath']!r} is {type(items).__name__}, not a list"}, t)
        if not items:
            return _succeed(defn, rs, engine, step, [], t=t)
        record.update({"items": copy.deepcopy(items), "next": 0, "total": len(items)})
        engine["containers"][step.step_id] = record
        for _ in range(min(int(state.get("maxConcurrency") or 1), len(items))):
            _next_iteration(defn, rs, engine, t, record, state)
        return t
    # try
    record["phase"] = "try"
    engine["containers"][step.step_id] = record
    _open_scope(defn, rs, engine, t, record, f"{state['name']}!try", "try", {})
    return t


def _open_scope(defn: dict[str, Any], rs: RunState, engine: dict[str, Any], t: Transition, record: dict[str, Any],
                frame: str, kind: str, variables: dict[str, Any]) -> None:
    path = _join(record["path"], frame)
    engine["scopes"][path] = {"kind": kind, "container": record["stepId"], "data": {}, "vars": variables,
                              "status": RUNNING, "last": None}
    record["children"].append(path)
    container = scope_states(defn, record["path"])[record["state"]]
    fkind, _, key = _parse_frame(frame)
    start = _scope_start(defn, container, fkind, key)
    t.new_steps.append(_new_step(rs.run_id, scope_states(defn, path)[start], path))


def _next_iteration(defn: dict[str, Any], rs: RunState, engine: dict[str, Any], t: Transition, record: dict[str, Any], state: dict[str, Any]) -> None:
    i = record["next"]
    record["next"] = i + 1
    variables = {state.get("itemName") or "item": record["items"][i], "_index": i, "_total": record["total"]}
    _open_scope(defn, rs, engine, t, record, f"{state['name']}[{i}]", "iteration", variables)


def _succeed(defn: dict[str, Any], rs: RunState, engine: dict[str, Any], step: StepView, output: Any,
             next_override: str | None = None, started: bool = False, t: Transition | None = None) -> Transition:
    """Record the output at resultPath in the step's scope, then move on within the scope."""
    t = t if t is not None else Transition(engine=engine)
    t.engine = engine
    state = scope_states(defn, step.branch_path)[step.state_name]
    if started:
        t.events.append(_started(step, "builtin"))
    write = None
    station = station_flow.is_station(defn)
    if station:
        output = station_flow.shape_output(state, output)
    if state["type"] != "switch" and not (state["type"] == "try" and not state.get("resultPath")):
        path = state.get("resultPath") or default_result_path(state)
        owner = _owner(engine, step.branch_path)
        pairs = station_flow.writes(state, output, path) if station else [(path, output)]
        try:
            for path, value in pairs:
                if owner == "":
                    context = t.context if t.context is not None else copy.deepcopy(rs.context)
                    set_path(context, path, copy.deepcopy(value))
                    t.context = context
                else:
                    set_path(engine["scopes"][owner]["data"], path, copy.deepcopy(value))
        except PathError as exc:
            return _fail_now(defn, rs, engine, step, {"type": "result_path", "message": f"state {state['name']!r}: resultPath {path!r}: {exc}"}, t)
        if pairs:  # the value written is `output` unless the dialect reshaped it: carried once
            write = {"scope": owner, "path": pairs[0][0]}
            if pairs[0][1] is not output:
                write["value"] = pairs[0][1]
            if len(pairs) > 1:
                write["also"] = [[p, v] for p, v in pairs[1:]]
        engine["scopes"][owner]["last"] = output
        if station and owner:
            station_flow.remember(engine["scopes"][owner], output)
    t.step_updates.append(StepUpdate(step.step_id, step.attempt, SUCCEEDED, output=output))
    payload: dict[str, Any] = {"attempt": step.attempt, "output": output}
    if write is not None:
        payload["write"] = write
    t.events.append(Event("step.succeeded", payload, step.step_id))
    _advance(defn, rs, engine, t, step.branch_path, state, next_override)
    return t


def default_result_path(state: dict[str, Any]) -> str:
    """DESIGN 3: inject merges into its scope's root; everything else writes `steps.<state>`."""
    if state["type"] == "inject":
        return "ctx"
    return f"steps.{state['name']}"


def _advance(defn: dict[str, Any], rs: RunState, engine: dict[str, Any], t: Transition, path: str,
             state: dict[str, Any], next_override: str | None = None) -> None:
    target = next_override or (None if state.get("end") else state.get("next"))
    if target:
        t.new_steps.append(_new_step(rs.run_id, scope_states(defn, path)[target], path))
    else:
        _scope_finished(defn, rs, engine, t, path)


def _scope_finished(defn: dict[str, Any], rs: RunState, engine: dict[str, Any], t: Transition, path: str) -> None:
    if path == "":
        error = station_flow.output_schema_error(defn, engine["scopes"][""].get("last")) if station_flow.is_station(defn) else None
        if error is not None:
            _end_run(rs, engine, t, FAILED, error)
            return
        t.run_status = COMPLETED
        t.events.append(Event("run.completed", {}))
        return
    scope = engine["scopes"][path]
    record = engine["containers"][scope["container"]]
    if record.get("closed") or scope["status"] != RUNNING:
        return
    scope["status"] = SUCCEEDED
    record["done"].append(path)
    container = scope_states(defn, record["path"])[record["state"]]
    if record["kind"] == "parallel":
        if len(record["done"]) >= _needed(container):
            _cancel_children(rs, engine, t, record, "join satisfied")
            result = {}
            for branch in container["branches"]:
                child = _join(record["path"], f"{container['name']}:{branch['name']}")
                if child in record["done"]:
                    result[branch["name"]] = engine["scopes"][child]["data"]
            if station_flow.is_station(defn):
                result = station_flow.aggregate_parallel(container, [
                    (name, station_flow.scope_output(engine["scopes"][_join(record["path"], f"{container['name']}:{name}")]))
                    for name in result])
            _container_done(defn, rs, engine, t, record, result)
    elif record["kind"] == "foreach":
        if record["next"] < record["total"]:
            _next_iteration(defn, rs, engine, t, record, container)
        elif len(record["done"]) == record["total"]:
            result = [engine["scopes"][_join(record["path"], f"{container['name']}[{i}]")]["data"] for i in range(record["total"])]
            if station_flow.is_station(defn):
                result = station_flow.aggregate_foreach(container, record["items"], [
                    station_flow.scope_output(engine["scopes"][_join(record["path"], f"{container['name']}[{i}]")])
                    for i in range(record["total"])])
            _container_done(defn, rs, engine, t, record, result)
    else:
        _try_section_done(defn, rs, engine, t, record, container, error=None)


def _needed(container: dict[str, Any]) -> int:
    join = container.get("join") or {"mode": "all"}
    if join.get("mode") == "any":
        return 1
    if join.get("mode") == "atLeast":
        return int(join["atLeast"])
    return len(container["branches"])


def _container_step(record: dict[str, Any]) -> StepView:
    return StepView(record["stepId"], record["state"], record["attempt"], record["path"], _innermost_index(record["path"]),
                    RUNNING, record["kind"])


def _container_done(defn: dict[str, Any], rs: RunState, engine: dict[str, Any], t: Transition, record: dict[str, Any], output: Any) -> None:
    record["closed"] = True
    _succeed(defn, rs, engine, _container_step(record), output, t=t)


def _try_section_done(defn: dict[str, Any], rs: RunState, engine: dict[str, Any], t: Transition, record: dict[str, Any],
                      container: dict[str, Any], error: dict[str, Any] | None) -> None:
    """Try -> (catch on error) -> finally -> the container succeeds, or fails with the uncaught error."""
    phase = record["phase"]
    if error is not None and phase == "try" and container.get("catch"):
        record["phase"] = "catch"
        record["caught"] = error
        _open_scope(defn, rs, engine, t, record, f"{container['name']}!catch", "try", {"error": error})
        return
    if error is not None:
        record["error"] = error
    if phase != "finally" and container.get("finally"):
        record["phase"] = "finally"
        _open_scope(defn, rs, engine, t, record, f"{container['name']}!finally", "try", {"error": record.get("error")})
        return
    if record.get("error") is not None:
        _container_failed(defn, rs, engine, t, record, record["error"])
    else:
        _container_done(defn, rs, engine, t, record, {"caught": record.get("caught")})


def _cancel_children(rs: RunState, engine: dict[str, Any], t: Transition, record: dict[str, Any], reason: str) -> None:
    for child in record["children"]:
        if engine["scopes"][child]["status"] == RUNNING:
            _cancel_scope(rs, engine, t, child, reason)


def _cancel_scope(rs: RunState, engine: dict[str, Any], t: Transition, path: str, reason: str) -> None:
    """Close every open step at or under `path` (their late results are dropped by compare-and-set)."""
    for scope_path, scope in engine["scopes"].items():
        if (scope_path == path or scope_path.startswith(path + "/")) and scope["status"] == RUNNING:
            scope["status"] = CANCELLED
    updated = {(u.step_id, u.attempt) for u in t.step_updates}
    for s in rs.open_steps:
        if (s.branch_path == path or s.branch_path.startswith(path + "/")) and (s.step_id, s.attempt) not in updated:
            t.step_updates.append(StepUpdate(s.step_id, s.attempt, CANCELLED, error={"type": "cancelled", "message": reason},
                                             only_if_open=True))
            t.events.append(Event("step.cancelled", {"attempt": s.attempt, "reason": reason}, s.step_id))


def step_succeeded(defn: dict[str, Any], rs: RunState, step: StepView, output: Any) -> Transition:
    return _succeed(defn, rs, copy.deepcopy(rs.engine), step, output)


def retry_delay(policy: dict[str, Any], step: StepView) -> float:
    """Exponential back-off, capped (by maxBackoffSeconds, else the daemon's default cap, so a large
    maxAttempts cannot ask for 2^39 s); jitter is derived from the step identity so replays agree."""
    cap = float(policy["maxBackoffSeconds"]) if policy.get("maxBackoffSeconds") is not None else LIMITS.retry_max_backoff_s
    try:
        delay = float(policy.get("backoffSeconds", 1.0)) * float(policy.get("backoffRate", 2.0)) ** (step.tries - 1)
    except OverflowError:
        delay = math.inf
    delay = min(delay, cap)
    if policy.get("jitter"):
        delay *= random.Random(f"{step.step_id}:{step.attempt}").uniform(0.5, 1.0)
    return delay


def step_failed(defn: dict[str, Any], rs: RunState, step: StepView, error: dict[str, Any], retry: bool = True) -> Transition:
    """A failed attempt: retry after back-off while attempts remain, else fail the scope."""
    engine = copy.deepcopy(rs.engine)
    state = scope_states(defn, step.branch_path)[step.state_name]
    status = TIMED_OUT if error.get("type") == "timeout" else FAILED
    policy = state.get("retry") if retry else None
    if policy and station_flow.is_station(defn) and not station_flow.retryable(state, error):
        policy = None
    if policy and step.tries < int(policy.get("maxAttempts", 1)):
        delay = retry_delay(policy, step)
        t = Transition(engine=engine, step_updates=[StepUpdate(step.step_id, step.attempt, status, error=error)])
        t.events.append(Event("step.failed", {"attempt": step.attempt, "error": error, "willRetry": True,
                                              "retryInSeconds": round(delay, 3)}, step.step_id))
        t.new_steps.append(_new_step(rs.run_id, state, step.branch_path, step.tries + 1, delay))
        return t
    return _fail_now(defn, rs, engine, step, error, status=status)


def _fail_now(defn: dict[str, Any], rs: RunState, engine: dict[str, Any], step: StepView, error: dict[str, Any],
              t: Transition | None = None, status: str = FAILED) -> Transition:
    t = t if t is not None else Transition(engine=engine)
    t.engine = engine
    t.step_updates = [u for u in t.step_updates if (u.step_id, u.attempt) != (step.step_id, step.attempt)]
    t.step_updates.append(StepUpdate(step.step_id, step.attempt, status, error=error))
    t.events.append(Event("step.failed", {"attempt": step.attempt, "error": error, "willRetry": False}, step.step_id))
    error = {**error, "stateName": step.state_name, "stepId": step.step_id, "branchPath": step.branch_path}
    _scope_failed(defn, rs, engine, t, step.branch_path, error)
    return t


def _scope_failed(defn: dict[str, Any], rs: RunState, engine: dict[str, Any], t: Transition, path: str, error: dict[str, Any]) -> None:
    if path == "":
        _end_run(rs, engine, t, TIMED_OUT if error.get("type") == "wait_timeout" else FAILED, error)
        return
    scope = engine["scopes"][path]
    record = engine["containers"][scope["container"]]
    if record.get("closed"):
        return
    container = scope_states(defn, record["path"])[record["state"]]
    _cancel_scope(rs, engine, t, path, "scope failed")
    scope["status"] = FAILED
    record["failed"].append(path)
    if record["kind"] == "parallel":
        possible = len(container["branches"]) - len(record["failed"])
        if possible < _needed(container):
            _cancel_children(rs, engine, t, record, "another branch failed")
            _container_failed(defn, rs, engine, t, record, {"type": "branch_failed", "message": f"branch of {record['state']!r} failed", "cause": error})
    elif record["kind"] == "foreach":
        _cancel_children(rs, engine, t, record, "another iteration failed")
        _container_failed(defn, rs, engine, t, record, {"type": "iteration_failed", "message": f"iteration of {record['state']!r} failed", "cause": error})
    else:
        _try_section_done(defn, rs, engine, t, record, container, error=error)


def _container_failed(defn: dict[str, Any], rs: RunState, engine: dict[str, Any], t: Transition, record: dict[str, Any], error: dict[str, Any]) -> None:
    record["closed"] = True
    step = _container_step(record)
    t.step_updates.append(StepUpdate(step.step_id, step.attempt, FAILED, error=error))
    t.events.append(Event("step.failed", {"attempt": step.attempt, "error": error, "willRetry": False}, step.step_id))
    _scope_failed(defn, rs, engine, t, record["path"], {**error, "stateName": record["state"], "stepId": record["stepId"]})


def _end_run(rs: RunState, engine: dict[str, Any], t: Transition, status: str, error: dict[str, Any] | None) -> None:
    _cancel_scope_all(rs, engine, t, f"run {status.lower()}")
    t.run_status = status
    t.run_error = error
    t.events.append(Event(f"run.{status.lower().replace('_', '')}" if status != TIMED_OUT else "run.timed_out",
                          {"error": error} if error else {}))


def _cancel_scope_all(rs: RunState, engine: dict[str, Any], t: Transition, reason: str) -> None:
    updated = {(u.step_id, u.attempt) for u in t.step_updates}
    for s in rs.open_steps:
        if (s.step_id, s.attempt) not in updated:
            t.step_updates.append(StepUpdate(s.step_id, s.attempt, CANCELLED, error={"type": "cancelled", "message": reason},
                                             only_if_open=True))
            t.events.append(Event("step.cancelled", {"attempt": s.attempt, "reason": reason}, s.step_id))


def timer_fired(defn: dict[str, Any], rs: RunState, kind: str, step: StepView | None) -> Transition | None:
    """A durable timer came due. Compare-and-set: a timer whose wait already ended changes nothing."""
    engine = copy.deepcopy(rs.engine)
    if kind == "run_timeout":
        t = Transition(engine=engine)
        _end_run(rs, engine, t, TIMED_OUT, {"type": "timeout", "message": f"workflow timed out after {defn.get('timeoutSeconds')}s"})
        return t
    if kind == "approval_timeout" and step is not None and step.status == WAITING_APPROVAL:
        return None  # decided through approval_decided by the shell, which owns the approval row
    if kind == "signal_timeout" and step is not None and step.status == WAITING_SIGNAL:
        state = scope_states(defn, step.branch_path)[step.state_name]
        policy = (state.get("input") or {}).get("onTimeout") or "fail"
        t = Transition(engine=engine, events=[Event("signal.timed_out", {}, step.step_id)])
        return _wait_outcome(defn, rs, engine, step, t, None, ok=False, policy=policy, timed_out=True, what="signal wait timed out")
    if kind == "step_timeout" and step is not None and step.status == RUNNING and not step.has_result:
        state = scope_states(defn, step.branch_path)[step.state_name]
        if state["type"] == "operation":
            return step_failed(defn, rs, step, step_timeout_error(step.state_name, LIMITS.step_timeout(state.get("timeoutSeconds"))))
        return None
    if kind == "sleep" and step is not None and step.status == RUNNING:
        state = scope_states(defn, step.branch_path)[step.state_name]
        return _succeed(defn, rs, engine, step, {"sleptSeconds": state["durationSeconds"]})
    return None


def step_timeout_error(state_name: str, seconds: float) -> dict[str, Any]:
    return {"type": "timeout", "message": f"state {state_name!r}: step timed out after {seconds:g}s"}


def limit_exceeded(rs: RunState, step: StepView | None, error: dict[str, Any]) -> Transition:
    """A cap was reached: the step that reached it fails, every other open step is cancelled, the run fails."""
    return engine_failure(rs, step, error)


def engine_failure(rs: RunState, step: StepView | None, error: dict[str, Any]) -> Transition:
    """Fail the attempt and the whole run without consulting the definition: the last resort when
    deciding what follows is itself what fails (a poison task), and for per-run caps."""
    engine = copy.deepcopy(rs.engine)
    t = Transition(engine=engine)
    if step is not None:
        t.step_updates.append(StepUpdate(step.step_id, step.attempt, FAILED, error=error, only_if_open=True))
        t.events.append(Event("step.failed", {"attempt": step.attempt, "error": error, "willRetry": False}, step.step_id))
        error = {**error, "stateName": step.state_name, "stepId": step.step_id}
    _end_run(rs, engine, t, FAILED, error)
    return t


def started_payload(context: dict[str, Any]) -> dict[str, Any]:
    """`run.started` without the input (which `run.created` carries): only what the start added to it.

    The context is the input plus `workflow`, `steps` and extras; a key kept unchanged from the input
    is left out, and `workflow.input` too, so the event is not twice the size of the input."""
    workflow = context.get("workflow")
    run_input = workflow.get("input") if isinstance(workflow, dict) else None
    if not isinstance(run_input, dict):
        return {"context": context}
    added = {k: v for k, v in context.items() if k in ("workflow", "steps") or k not in run_input or run_input[k] != v}
    added["workflow"] = {k: v for k, v in workflow.items() if k != "input"}
    return {"context": added, "inputFrom": "run.created"}


def rebuild_context(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any] | None:
    """Replay a run's events into its context: the audit guarantee that history alone explains the state."""
    context: dict[str, Any] | None = None
    run_input: Any = None
    for kind, payload in events:
        if kind == "run.created":
            run_input = payload.get("input")
        elif kind == "run.started":
            context = copy.deepcopy(payload["context"])
            if payload.get("inputFrom") == "run.created" and isinstance(run_input, dict):
                context = {**copy.deepcopy(run_input), **context}
                context["workflow"] = {**context["workflow"], "input": copy.deepcopy(run_input)}
        elif kind == "step.succeeded" and context is not None and "write" in payload and payload["write"].get("scope", "") == "":
            value = payload["write"]["value"] if "value" in payload["write"] else payload.get("output")
            set_path(context, payload["write"]["path"], copy.deepcopy(value))
            for path, value in payload["write"].get("also", ()):
                set_path(context, path, copy.deepcopy(value))
    return context
