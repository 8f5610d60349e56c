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

This module holds the event functions the shell calls; the vocabulary is in `core/model.py`,
the scope algebra in `core/scopes.py`, how a scope moves on in `core/flow.py`, the built-in waits
in `core/waits.py`. The core imports only `expr/`: never the store, the bus or telemetry.
"""


from __future__ import annotations

import math
import random
from typing import Any

from station_wf.core import scopes, station_flow
from station_wf.core.cow import fork_engine
from station_wf.core.flow import end_run, enter_container, fail_now, new_step, succeed
from station_wf.core.history import empty_engine, started_payload
from station_wf.core.model import (
    CANCELLED,
    CONTAINER_TYPES,
    FAILED,
    PENDING,
    RUNNING,
    TIMED_OUT,
    WAITING_APPROVAL,
    WAITING_SIGNAL,
    Event,
    Execute,
    NewTimer,
    Rules,
    RunState,
    StepUpdate,
    StepView,
    Transition,
)
from station_wf.core.waits import request_approval, wait_for_signal, wait_outcome
from station_wf.expr.approvers import rendered_problem as rendered_approvers_problem
from station_wf.expr.paths import PathError, get_path
from station_wf.expr.starlark_eval import ExpressionError, compile_expression, truthy
from station_wf.expr.templates import TemplateError, render

DEFAULT_RULES = Rules()


# -- events ---------------------------------------------------------------------------------------
def start_run(defn: dict[str, Any], run: RunState) -> Transition:
    """The run task: RUNNING, the start state's first step, and the run's durable timeout."""
    engine = empty_engine()
    t = Transition(run_status=RUNNING, engine=engine, events=[Event("run.started", started_payload(run.context))])
    t.new_steps.append(new_step(run.run_id, defn["states"][defn["start"]], ""))
    timeout = run.rules.run_timeout(defn.get("timeoutSeconds"))
    if timeout is not None:
        t.timers.append(NewTimer("run_timeout", timeout))
    return t


def begin_step(defn: dict[str, Any], run: RunState, step: StepView) -> Execute | Transition | None:
    """A step's task arrived: run it through an executor, or decide it here. None: nothing to do."""
    state = scopes.scope_states(defn, step.branch_path)[step.state_name]
    kind = state["type"]
    if step.status != PENDING and (kind != "operation" or step.status != RUNNING):
        return None  # entered already (containers, sleeps) or closed; only an executor call is re-run
    engine = fork_engine(run.engine)
    if kind == "operation":
        names = scopes.view(run, engine, step.branch_path)
        station_input = _station_input(defn, run, engine, step, state)
        if station_flow.is_station(defn):
            names = station_flow.declare(defn, {**names, "input": station_input})
        try:
            rendered = render(state.get("input") or {}, run.context, extra=names if step.branch_path or station_input is not None else None,
                              timeout_s=run.rules.expression_timeout_s)
        except TemplateError as exc:
            return step_failed(defn, run, step, {"type": "template", "message": f"state {state['name']!r}: {exc}"}, retry=False)
        if station_input is not None:
            rendered = station_flow.agent_call(state, rendered, station_input)
        if state["action"] == "human.approval":
            bad = rendered_approvers_problem(rendered["approvers"]) if "approvers" in rendered else None
            if bad:  # never a list of characters, never "anyone" (expr/approvers.py)
                return step_failed(defn, run, step, {"type": "validation", "message": f"state {state['name']!r}: {bad}"}, retry=False)
            return request_approval(defn, run, engine, step, state, rendered)
        if state["action"] == "signal.wait":
            return wait_for_signal(defn, run, engine, step, state, rendered)
        return Execute(state["action"], rendered, state.get("timeoutSeconds"))
    if kind == "inject":
        return succeed(defn, run, engine, step, state.get("data"), started=True)  # the definition's, shared
    if kind == "switch":
        return _switch(defn, run, engine, step, state)
    if kind == "transform":
        return _transform(defn, run, engine, step, state)
    if kind == "sleep":
        t = Transition(engine=engine, step_updates=[StepUpdate(step.step_id, step.attempt, RUNNING)])
        t.events.append(Event("step.started", {"attempt": step.attempt, "executor": "sleep",
                                               "durationSeconds": state["durationSeconds"]}, step.step_id))
        t.timers.append(NewTimer("sleep", float(state["durationSeconds"]), step.step_id, step.attempt))
        return t
    if kind in CONTAINER_TYPES:
        return enter_container(defn, run, engine, step, state)
    return step_failed(defn, run, step, {"type": "unsupported", "message": f"state type {kind!r} cannot run here"}, retry=False)


def _station_input(defn: dict[str, Any], run: RunState, engine: dict[str, Any], step: StepView, state: dict[str, Any]) -> Any:
    """Station's `input` name: the previous step's output (None for PRD definitions)."""
    if not station_flow.is_station(defn):
        return None
    last = engine["scopes"][scopes.owner(engine, step.branch_path)].get("last")
    return station_flow.step_input(run.context, last, state)


def cancel_run(run: RunState, reason: str, actor: str | None) -> Transition:
    """Operator cancel: every open step closed, the run CANCELLED (the reason and actor in its error)."""
    engine = fork_engine(run.engine)
    t = Transition(engine=engine)
    end_run(run, engine, t, CANCELLED, {"type": "cancelled", "message": reason or "cancelled", "by": actor})
    return t


def _switch(defn: dict[str, Any], run: RunState, engine: dict[str, Any], step: StepView, state: dict[str, Any]) -> Transition:
    names = scopes.names_for(run, engine, step.branch_path)
    if station_flow.is_station(defn):
        names["input"] = _station_input(defn, run, engine, step, state)
        station_flow.declare(defn, names)
    if state.get("dataPath"):
        try:
            value = get_path(names, state["dataPath"])
        except PathError as exc:
            return fail_now(defn, run, engine, step, {"type": "switch", "message": f"state {state['name']!r}: dataPath {state['dataPath']!r}: {exc}"})
        names.update({"result": value, "_value": value, "val": value})
        if isinstance(value, dict):
            names.update({k: v for k, v in value.items() if isinstance(k, str) and k.isidentifier() and k not in ("ctx",)})
    for index, cond in enumerate(state["conditions"]):
        try:
            matched = truthy(compile_expression(cond["if"], f"switch {state['name']!r} condition").evaluate(
                names, timeout_s=run.rules.expression_timeout_s))
        except ExpressionError as exc:
            return fail_now(defn, run, engine, step, {"type": "expression", "message": str(exc), "condition": cond["if"],
                                                      "names": sorted(k for k in names if not k.startswith("__"))})
        if matched:
            return succeed(defn, run, engine, step, {"next": cond["next"], "matched": index, "condition": cond["if"]},
                            next_override=cond["next"], started=True)
    if state.get("defaultNext"):
        return succeed(defn, run, engine, step, {"next": state["defaultNext"], "matched": None},
                        next_override=state["defaultNext"], started=True)
    seen = {k: names[k] for k in ("result",) if k in names}
    return fail_now(defn, run, engine, step, {"type": "switch", "message": f"state {state['name']!r}: no condition matched and no defaultNext",
                                              "details": {"conditions": [c["if"] for c in state["conditions"]], "values": seen}})


def _transform(defn: dict[str, Any], run: RunState, engine: dict[str, Any], step: StepView, state: dict[str, Any]) -> Transition:
    names = scopes.names_for(run, engine, step.branch_path)
    names["ctx"] = {**run.context, "_timestamp": run.now}
    scope = engine["scopes"][scopes.owner(engine, step.branch_path)]
    names["input"] = scope.get("last") if scope.get("last") is not None else {}
    if station_flow.is_station(defn):
        names["input"] = _station_input(defn, run, engine, step, state)
        station_flow.declare(defn, names)
    try:
        output = compile_expression(state["expression"], f"transform {state['name']!r}",
                                    programs=station_flow.is_station(defn)).evaluate(names, timeout_s=run.rules.expression_timeout_s)
    except ExpressionError as exc:
        return fail_now(defn, run, engine, step, {"type": "expression", "message": str(exc)})
    return succeed(defn, run, engine, step, output, started=True)


def step_succeeded(defn: dict[str, Any], run: RunState, step: StepView, output: Any) -> Transition:
    return succeed(defn, run, fork_engine(run.engine), step, output)


def retry_delay(policy: dict[str, Any], step: StepView, rules: Rules = DEFAULT_RULES) -> float:
    """Exponential back-off, capped (by maxBackoffSeconds, else the daemon's default cap, so a large
    maxAttempts cannot ask for 2^39 s); jitter is derived from the step identity so replays agree."""
    cap = float(policy["maxBackoffSeconds"]) if policy.get("maxBackoffSeconds") is not None else rules.retry_max_backoff_s
    try:
        delay = float(policy.get("backoffSeconds", 1.0)) * float(policy.get("backoffRate", 2.0)) ** (step.tries - 1)
    except OverflowError:
        delay = math.inf
    delay = min(delay, cap)
    if policy.get("jitter"):
        delay *= random.Random(f"{step.step_id}:{step.attempt}").uniform(0.5, 1.0)
    return delay


def step_failed(defn: dict[str, Any], run: RunState, step: StepView, error: dict[str, Any], retry: bool = True) -> Transition:
    """A failed attempt: retry after back-off while attempts remain, else fail the scope."""
    engine = fork_engine(run.engine)
    state = scopes.scope_states(defn, step.branch_path)[step.state_name]
    status = TIMED_OUT if error.get("type") == "timeout" else FAILED
    policy = state.get("retry") if retry else None
    if policy and station_flow.is_station(defn) and not station_flow.retryable(state, error):
        policy = None
    if policy and step.tries < int(policy.get("maxAttempts", 1)):
        delay = retry_delay(policy, step, run.rules)
        t = Transition(engine=engine, step_updates=[StepUpdate(step.step_id, step.attempt, status, error=error)])
        t.events.append(Event("step.failed", {"attempt": step.attempt, "error": error, "willRetry": True,
                                              "retryInSeconds": round(delay, 3)}, step.step_id))
        t.new_steps.append(new_step(run.run_id, state, step.branch_path, step.tries + 1, delay))
        return t
    return fail_now(defn, run, engine, step, error, status=status)



def timer_fired(defn: dict[str, Any], run: RunState, kind: str, step: StepView | None) -> Transition | None:
    """A durable timer came due. Compare-and-set: a timer whose wait already ended changes nothing."""
    engine = fork_engine(run.engine)
    if kind == "run_timeout":
        t = Transition(engine=engine)
        limit = run.rules.run_timeout(defn.get("timeoutSeconds"))
        after = f" after {limit:g}s" if limit is not None else ""
        end_run(run, engine, t, TIMED_OUT, {"type": "timeout", "message": f"workflow timed out{after}"})
        return t
    if kind == "approval_timeout" and step is not None and step.status == WAITING_APPROVAL:
        return None  # decided through approval_decided by the shell, which owns the approval row
    if kind == "signal_timeout" and step is not None and step.status == WAITING_SIGNAL:
        state = scopes.scope_states(defn, step.branch_path)[step.state_name]
        policy = (state.get("input") or {}).get("onTimeout") or "fail"
        t = Transition(engine=engine, events=[Event("signal.timed_out", {}, step.step_id)])
        return wait_outcome(defn, run, engine, step, t, None, ok=False, policy=policy, timed_out=True, what="signal wait timed out")
    if kind == "step_timeout" and step is not None and step.status == RUNNING and not step.has_result:
        state = scopes.scope_states(defn, step.branch_path)[step.state_name]
        if state["type"] == "operation":
            return step_failed(defn, run, step, step_timeout_error(step.state_name, run.rules.step_timeout(state.get("timeoutSeconds"))))
        return None
    if kind == "sleep" and step is not None and step.status == RUNNING:
        state = scopes.scope_states(defn, step.branch_path)[step.state_name]
        return succeed(defn, run, engine, step, {"sleptSeconds": state["durationSeconds"]})
    return None


def step_timeout_error(state_name: str, seconds: float) -> dict[str, Any]:
    return {"type": "timeout", "message": f"state {state_name!r}: step timed out after {seconds:g}s"}


def limit_exceeded(run: RunState, step: StepView | None, error: dict[str, Any]) -> Transition:
    """A cap was reached: the step that reached it fails, every other open step is cancelled, the run fails."""
    return engine_failure(run, step, error)


def engine_failure(run: RunState, step: StepView | None, error: dict[str, Any]) -> Transition:
    """Fail the attempt and the whole run without consulting the definition: the last resort when
    deciding what follows is itself what fails (a poison task), and for per-run caps."""
    engine = fork_engine(run.engine)
    t = Transition(engine=engine)
    if step is not None:
        t.step_updates.append(StepUpdate(step.step_id, step.attempt, FAILED, error=error, only_if_open=True))
        t.events.append(Event("step.failed", {"attempt": step.attempt, "error": error, "willRetry": False}, step.step_id))
        error = {**error, "stateName": step.state_name, "stepId": step.step_id}
    end_run(run, engine, t, FAILED, error)
    return t

