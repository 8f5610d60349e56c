"""How a scope moves on: a step's output is written, the next step scheduled, a finished or failed
scope closes its container (parallel join, foreach, try/catch/finally), and the run ends.

These functions mutate the `Transition` and the forked engine state they are handed (`cow.fork_engine`:
its records are their own, the values inside are shared and only replaced, never written in place); the event
functions of `core/interpreter.py` and `core/waits.py` call them. Imports `core.model`,
`core.scopes`, `core.identity`, `core.station_flow` and `expr/` only.
"""

from __future__ import annotations

from typing import Any

from station_wf.core import cow, scopes, station_flow
from station_wf.core.identity import idempotency_key, step_id
from station_wf.core.model import (
    CANCELLED,
    COMPLETED,
    FAILED,
    RUNNING,
    SUCCEEDED,
    TIMED_OUT,
    Event,
    NewStep,
    RunState,
    StepUpdate,
    StepView,
    Transition,
)
from station_wf.expr.paths import PathError, get_path


def needs_executor(state: dict[str, Any]) -> bool:
    """Only an executor call (agent.run) needs a task of its own; every other state is decided here."""
    return state["type"] == "operation" and state.get("action") not in ("human.approval", "signal.wait")


def new_step(run_id: str, state: dict[str, Any], path: str, attempt: int = 1, delay: float = 0.0) -> NewStep:
    index = scopes.innermost_index(path)
    sid = step_id(run_id, state["name"], path, index)
    return NewStep(sid, state["name"], state["type"], path, index, attempt, idempotency_key(run_id, sid, attempt), delay,
                   inline=not needs_executor(state))


def started_event(step: StepView, executor: str) -> Event:
    return Event("step.started", {"attempt": step.attempt, "executor": executor, "redelivered": False}, step.step_id)


def enter_container(defn: dict[str, Any], run: RunState, engine: dict[str, Any], step: StepView, state: dict[str, Any]) -> Transition:
    t = Transition(engine=engine, step_updates=[StepUpdate(step.step_id, step.attempt, RUNNING)],
                   events=[started_event(step, state["type"])])
    record: dict[str, Any] = {"kind": state["type"], "state": state["name"], "path": step.branch_path,
                              "stepId": step.step_id, "attempt": step.attempt, "children": [], "done": [], "failed": []}
    if state["type"] == "parallel":
        engine["containers"][step.step_id] = record
        for branch in state["branches"]:
            _open_scope(defn, run, engine, t, record, f"{state['name']}:{branch['name']}", "branch", {})
        return t
    if state["type"] == "foreach":
        names = scopes.names_for(run, engine, step.branch_path)
        try:
            items = get_path(names, state["itemsPath"])
        except PathError as exc:
            return fail_now(defn, run, engine, step, {"type": "foreach", "message": f"state {state['name']!r}: itemsPath {state['itemsPath']!r}: {exc}"}, t)
        if not isinstance(items, list):
            return fail_now(defn, run, engine, step, {"type": "foreach", "message": f"state {state['name']!r}: itemsPath {state['itemsPath']!r} is {type(items).__name__}, not a list"}, t)
        if not items:
            return succeed(defn, run, engine, step, [], t=t)
        # The items stay where they live (read again by `_items`): copying them into the engine state
        # made every transition of a foreach write them all again.
        record.update({"next": 0, "total": len(items), "doneCount": 0, "results": {}})
        engine["containers"][step.step_id] = record
        for _ in range(min(int(state.get("maxConcurrency") or 1), len(items))):
            _next_iteration(defn, run, engine, t, record, state, items)
        return t
    # try
    record["phase"] = "try"
    engine["containers"][step.step_id] = record
    _open_scope(defn, run, engine, t, record, f"{state['name']}!try", "try", {})
    return t


def _open_scope(defn: dict[str, Any], run: RunState, engine: dict[str, Any], t: Transition, record: dict[str, Any],
                frame: str, kind: str, variables: dict[str, Any]) -> None:
    path = scopes.join(record["path"], frame)
    engine["scopes"][path] = {"kind": kind, "container": record["stepId"], "data": {}, "vars": variables,
                              "status": RUNNING, "last": None}
    record["children"].append(path)
    container = scopes.scope_states(defn, record["path"])[record["state"]]
    fkind, _, key = scopes.parse_frame(frame)
    start = scopes.scope_start(defn, container, fkind, key)
    t.new_steps.append(new_step(run.run_id, scopes.scope_states(defn, path)[start], path))


def _items(run: RunState, engine: dict[str, Any], record: dict[str, Any], state: dict[str, Any]) -> list[Any]:
    """A foreach's items, read again from where they live. Sound because nothing writes the scopes a
    running foreach reads from: its iterations write their own scopes, and every step that could write
    an enclosing one runs before or after it (a record written before this change carries `items`)."""
    if "items" in record:
        return record["items"]
    items = get_path(scopes.names_for(run, engine, record["path"]), state["itemsPath"])
    if not isinstance(items, list) or len(items) != record["total"]:
        raise PathError(f"state {state['name']!r}: itemsPath {state['itemsPath']!r} changed while the foreach ran")
    return items


def _next_iteration(defn: dict[str, Any], run: RunState, engine: dict[str, Any], t: Transition, record: dict[str, Any],
                    state: dict[str, Any], items: list[Any] | None = None) -> None:
    i = record["next"]
    record["next"] = i + 1
    items = items if items is not None else _items(run, engine, record, state)
    variables = {state.get("itemName") or "item": items[i], "_index": i, "_total": record["total"]}
    _open_scope(defn, run, engine, t, record, f"{state['name']}[{i}]", "iteration", variables)


def succeed(defn: dict[str, Any], run: RunState, engine: dict[str, Any], step: StepView, output: Any,
             next_override: str | None = None, started: bool = False, t: Transition | None = None) -> Transition:
    """Record the output at resultPath in the step's scope, then move on within the scope."""
    t = t if t is not None else Transition(engine=engine)
    t.engine = engine
    state = scopes.scope_states(defn, step.branch_path)[step.state_name]
    if started:
        t.events.append(started_event(step, "builtin"))
    write = None
    station = station_flow.is_station(defn)
    if station:
        output = station_flow.shape_output(state, output)
    if state["type"] != "switch" and not (state["type"] == "try" and not state.get("resultPath")):
        path = state.get("resultPath") or default_result_path(state)
        owner = scopes.owner(engine, step.branch_path)
        pairs = station_flow.writes(state, output, path) if station else [(path, output)]
        try:
            for path, value in pairs:
                if owner == "":
                    t.context = cow.set_path(t.context if t.context is not None else run.context, path, value)
                else:
                    engine["scopes"][owner]["data"] = cow.set_path(engine["scopes"][owner]["data"], path, value)
        except PathError as exc:
            return fail_now(defn, run, engine, step, {"type": "result_path", "message": f"state {state['name']!r}: resultPath {path!r}: {exc}"}, t)
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
    _advance(defn, run, engine, t, step.branch_path, state, next_override)
    return t


def default_result_path(state: dict[str, Any]) -> str:
    """DESIGN 3: inject merges into its scope's root; everything else writes `steps.<state>`."""
    if state["type"] == "inject":
        return "ctx"
    return f"steps.{state['name']}"


def _advance(defn: dict[str, Any], run: RunState, engine: dict[str, Any], t: Transition, path: str,
             state: dict[str, Any], next_override: str | None = None) -> None:
    target = next_override or (None if state.get("end") else state.get("next"))
    if target:
        t.new_steps.append(new_step(run.run_id, scopes.scope_states(defn, path)[target], path))
    else:
        _scope_finished(defn, run, engine, t, path)


def _scope_finished(defn: dict[str, Any], run: RunState, engine: dict[str, Any], t: Transition, path: str) -> None:
    if path == "":
        error = station_flow.output_schema_error(defn, engine["scopes"][""].get("last")) if station_flow.is_station(defn) else None
        if error is not None:
            end_run(run, engine, t, FAILED, error)
            return
        t.run_status = COMPLETED
        t.events.append(Event("run.completed", {}))
        return
    scope = engine["scopes"][path]
    record = engine["containers"][scope["container"]]
    if record.get("closed") or scope["status"] != RUNNING:
        return
    scope["status"] = SUCCEEDED
    container = scopes.scope_states(defn, record["path"])[record["state"]]
    if record["kind"] == "foreach" and "doneCount" in record:
        _iteration_done(defn, run, engine, t, record, container, path, scope)
        return
    record["done"].append(path)
    if record["kind"] == "parallel":
        if len(record["done"]) >= _needed(container):
            _cancel_children(run, engine, t, record, "join satisfied")
            result = {}
            for branch in container["branches"]:
                child = scopes.join(record["path"], f"{container['name']}:{branch['name']}")
                if child in record["done"]:
                    result[branch["name"]] = engine["scopes"][child]["data"]
            if station_flow.is_station(defn):
                result = station_flow.aggregate_parallel(container, [
                    (name, station_flow.scope_output(engine["scopes"][scopes.join(record["path"], f"{container['name']}:{name}")]))
                    for name in result])
            _container_done(defn, run, engine, t, record, result)
    elif record["kind"] == "foreach":
        if record["next"] < record["total"]:
            _next_iteration(defn, run, engine, t, record, container)
        elif len(record["done"]) == record["total"]:
            result = [engine["scopes"][scopes.join(record["path"], f"{container['name']}[{i}]")]["data"] for i in range(record["total"])]
            if station_flow.is_station(defn):
                result = station_flow.aggregate_foreach(container, record["items"], [
                    station_flow.scope_output(engine["scopes"][scopes.join(record["path"], f"{container['name']}[{i}]")])
                    for i in range(record["total"])])
            _container_done(defn, run, engine, t, record, result)
    else:
        _try_section_done(defn, run, engine, t, record, container, error=None)


def _iteration_done(defn: dict[str, Any], run: RunState, engine: dict[str, Any], t: Transition, record: dict[str, Any],
                    container: dict[str, Any], path: str, scope: dict[str, Any]) -> None:
    """An iteration succeeded: its result is kept by index and its scope (with everything nested in
    it) is pruned, so a foreach's engine state holds only its live iterations and their results."""
    index = scopes.innermost_index(path)
    value = station_flow.scope_output(scope) if station_flow.is_station(defn) else scope["data"]
    record["results"] = {**record["results"], str(index): value}  # a new dict: the old one may be shared
    record["doneCount"] += 1
    record["children"] = [c for c in record["children"] if c != path]
    _prune(engine, path)
    if record["next"] < record["total"]:
        _next_iteration(defn, run, engine, t, record, container)
    elif record["doneCount"] == record["total"]:
        outputs = [record["results"][str(i)] for i in range(record["total"])]
        if station_flow.is_station(defn):
            outputs = station_flow.aggregate_foreach(container, _items(run, engine, record, container), outputs)
        _container_done(defn, run, engine, t, record, outputs)


def _prune(engine: dict[str, Any], path: str) -> None:
    """Drop a closed scope and every scope and container nested in it (none of their steps is open)."""
    engine["scopes"].pop(path, None)
    _prune_inside(engine, path)


def _prune_inside(engine: dict[str, Any], path: str) -> None:
    """Drop what a closed scope holds (the containers in it and their scopes), keeping the scope itself:
    a failure it handled (try -> catch) leaves nothing a redrive would continue."""
    prefix = path + "/"
    for p in [p for p in engine["scopes"] if p.startswith(prefix)]:
        del engine["scopes"][p]
    for sid in [sid for sid, r in engine["containers"].items() if r["path"] == path or r["path"].startswith(prefix)]:
        del engine["containers"][sid]


def _needed(container: dict[str, Any]) -> int:
    join = container.get("join") or {"mode": "all"}
    if join.get("mode") == "any":
        return 1
    if join.get("mode") == "atLeast":
        return int(join["atLeast"])
    return len(container["branches"])


def _container_step(record: dict[str, Any]) -> StepView:
    return StepView(record["stepId"], record["state"], record["attempt"], record["path"], scopes.innermost_index(record["path"]),
                    RUNNING, record["kind"])


def _container_done(defn: dict[str, Any], run: RunState, engine: dict[str, Any], t: Transition, record: dict[str, Any], output: Any) -> None:
    record["closed"] = True
    _close_foreach(engine, record)
    succeed(defn, run, engine, _container_step(record), output, t=t)


def _close_foreach(engine: dict[str, Any], record: dict[str, Any]) -> None:
    """A closed foreach keeps none of its iterations: their results are in its output now."""
    if record["kind"] == "foreach" and "doneCount" in record:
        for child in record["children"]:
            _prune(engine, child)
        record["children"] = []
        record["results"] = {}


def _try_section_done(defn: dict[str, Any], run: RunState, engine: dict[str, Any], t: Transition, record: dict[str, Any],
                      container: dict[str, Any], error: dict[str, Any] | None) -> None:
    """Try -> (catch on error) -> finally -> the container succeeds, or fails with the uncaught error."""
    phase = record["phase"]
    if error is not None and phase == "try" and container.get("catch"):
        record["phase"] = "catch"
        record["caught"] = error
        _prune_inside(engine, scopes.join(record["path"], f"{container['name']}!try"))  # handled: kept for no redrive
        _open_scope(defn, run, engine, t, record, f"{container['name']}!catch", "try", {"error": error})
        return
    if error is not None:
        record["error"] = error
    if phase != "finally" and container.get("finally"):
        record["phase"] = "finally"
        _open_scope(defn, run, engine, t, record, f"{container['name']}!finally", "try", {"error": record.get("error")})
        return
    if record.get("error") is not None:
        _container_failed(defn, run, engine, t, record, record["error"])
    else:
        _container_done(defn, run, engine, t, record, {"caught": record.get("caught")})


def _cancel_children(run: RunState, engine: dict[str, Any], t: Transition, record: dict[str, Any], reason: str) -> None:
    for child in record["children"]:
        if engine["scopes"][child]["status"] == RUNNING:
            _cancel_scope(run, engine, t, child, reason)


def _cancel_scope(run: RunState, engine: dict[str, Any], t: Transition, path: str, reason: str) -> None:
    """Close every open step at or under `path` (their late results are dropped by compare-and-set)."""
    for scope_path, scope in engine["scopes"].items():
        if (scope_path == path or scope_path.startswith(path + "/")) and scope["status"] == RUNNING:
            scope["status"] = CANCELLED
    updated = {(u.step_id, u.attempt) for u in t.step_updates}
    for s in run.open_steps:
        if (s.branch_path == path or s.branch_path.startswith(path + "/")) and (s.step_id, s.attempt) not in updated:
            t.step_updates.append(StepUpdate(s.step_id, s.attempt, CANCELLED, error={"type": "cancelled", "message": reason},
                                             only_if_open=True))
            t.events.append(Event("step.cancelled", {"attempt": s.attempt, "reason": reason}, s.step_id))



def fail_now(defn: dict[str, Any], run: RunState, engine: dict[str, Any], step: StepView, error: dict[str, Any],
              t: Transition | None = None, status: str = FAILED) -> Transition:
    t = t if t is not None else Transition(engine=engine)
    t.engine = engine
    t.step_updates = [u for u in t.step_updates if (u.step_id, u.attempt) != (step.step_id, step.attempt)]
    t.step_updates.append(StepUpdate(step.step_id, step.attempt, status, error=error))
    t.events.append(Event("step.failed", {"attempt": step.attempt, "error": error, "willRetry": False}, step.step_id))
    error = {**error, "stateName": step.state_name, "stepId": step.step_id, "branchPath": step.branch_path}
    _scope_failed(defn, run, engine, t, step.branch_path, error)
    return t


def _scope_failed(defn: dict[str, Any], run: RunState, engine: dict[str, Any], t: Transition, path: str, error: dict[str, Any]) -> None:
    if path == "":
        end_run(run, engine, t, TIMED_OUT if error.get("type") == "wait_timeout" else FAILED, error)
        return
    scope = engine["scopes"][path]
    record = engine["containers"][scope["container"]]
    if record.get("closed"):
        return
    container = scopes.scope_states(defn, record["path"])[record["state"]]
    _cancel_scope(run, engine, t, path, "scope failed")
    scope["status"] = FAILED
    record["failed"].append(path)
    if record["kind"] == "parallel":
        possible = len(container["branches"]) - len(record["failed"])
        if possible < _needed(container):
            _cancel_children(run, engine, t, record, "another branch failed")
            _container_failed(defn, run, engine, t, record, {"type": "branch_failed", "message": f"branch of {record['state']!r} failed", "cause": error})
    elif record["kind"] == "foreach":
        _cancel_children(run, engine, t, record, "another iteration failed")
        _container_failed(defn, run, engine, t, record, {"type": "iteration_failed", "message": f"iteration of {record['state']!r} failed", "cause": error})
    else:
        _try_section_done(defn, run, engine, t, record, container, error=error)


def _container_failed(defn: dict[str, Any], run: RunState, engine: dict[str, Any], t: Transition, record: dict[str, Any], error: dict[str, Any]) -> None:
    """The container fails; a foreach keeps its live iterations and its results so that a redrive
    (core/redrive.py) continues it without running a finished iteration again."""
    record["closed"] = True
    step = _container_step(record)
    t.step_updates.append(StepUpdate(step.step_id, step.attempt, FAILED, error=error))
    t.events.append(Event("step.failed", {"attempt": step.attempt, "error": error, "willRetry": False}, step.step_id))
    _scope_failed(defn, run, engine, t, record["path"], {**error, "stateName": record["state"], "stepId": record["stepId"]})


def end_run(run: RunState, engine: dict[str, Any], t: Transition, status: str, error: dict[str, Any] | None) -> None:
    _cancel_scope_all(run, engine, t, f"run {status.lower()}")
    t.run_status = status
    t.run_error = error
    t.events.append(Event(f"run.{status.lower().replace('_', '')}" if status != TIMED_OUT else "run.timed_out",
                          {"error": error} if error else {}))


def _cancel_scope_all(run: RunState, engine: dict[str, Any], t: Transition, reason: str) -> None:
    updated = {(u.step_id, u.attempt) for u in t.step_updates}
    for s in run.open_steps:
        if (s.step_id, s.attempt) not in updated:
            t.step_updates.append(StepUpdate(s.step_id, s.attempt, CANCELLED, error={"type": "cancelled", "message": reason},
                                             only_if_open=True))
            t.events.append(Event("step.cancelled", {"attempt": s.attempt, "reason": reason}, s.step_id))

