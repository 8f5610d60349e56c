"""Runs that start runs: `workflow.run` (a child, waited for or not) and `workflow.continueAsNew`.

The shell (engine/children.py) does the starting, inside the transaction that begins the step; what
the step's input means, what the parent step's result is once the child ends, and how a run ends by
continuing as a new one are decided here, with no I/O. Imports `core.*` and `expr/` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from station_wf.core import station_flow
from station_wf.core.cow import fork_engine
from station_wf.core.flow import end_run, succeed
from station_wf.core.model import COMPLETED, SUCCEEDED, Event, RunState, StepUpdate, StepView, Transition

RUN_CHILD = "workflow.run"
CONTINUE_AS_NEW = "workflow.continueAsNew"
ACTIONS = frozenset({RUN_CHILD, CONTINUE_AS_NEW})


@dataclass(frozen=True)
class ChildRequest:
    """A rendered `workflow.run` / `workflow.continueAsNew` input, checked."""

    workflow: str | None  # None: the run's own workflow (continue-as-new)
    version: int | None   # None: the latest active version
    input: dict[str, Any]
    wait: bool = True
    allow_recursion: bool = False


def request(action: str, rendered: dict[str, Any]) -> ChildRequest | str:
    """The checked request, or a message saying what is wrong with the rendered input (its keys were
    checked when the definition was loaded: dsl/states.py)."""
    workflow = rendered.get("workflow")
    if action == RUN_CHILD and (not isinstance(workflow, str) or not workflow.strip()):
        return f"input.workflow must name a workflow, got {workflow!r:.80}"
    version = rendered.get("version")
    if version in (None, "latest"):
        version = None
    elif not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return f"input.version must be a positive integer or 'latest', got {version!r:.80}"
    run_input = rendered.get("input", {})
    if run_input is None:
        run_input = {}
    if not isinstance(run_input, dict):
        return f"input.input must be an object (the child's input), got {type(run_input).__name__}"
    wait = rendered.get("wait", True)
    allow = rendered.get("allowRecursion", False)
    if not isinstance(wait, bool) or not isinstance(allow, bool):
        return "input.wait and input.allowRecursion must be true or false"
    return ChildRequest(workflow if action == RUN_CHILD else None, version, run_input, wait, allow)


def refusal(state_name: str, message: str) -> dict[str, Any]:
    """The parent step's error when its child cannot be started (never retried: the input decides it)."""
    return {"type": "child_workflow", "message": f"state {state_name!r}: {message}"}


def run_output(defn: dict[str, Any], context: dict[str, Any], engine: dict[str, Any]) -> Any:
    """What a finished run hands back to its parent: a Station flow's last output, else its context
    without the engine's `workflow` block."""
    if station_flow.is_station(defn):
        return (engine.get("scopes") or {}).get("", {}).get("last")
    return {k: v for k, v in context.items() if k != "workflow"}


def child_outcome(defn: dict[str, Any], run_id: str, context: dict[str, Any], engine: dict[str, Any], status: str,
                  error: dict[str, Any] | None) -> tuple[Any, dict[str, Any] | None]:
    """(output, error) of the parent's step for a child that ended with `status`."""
    ident = {"runId": run_id, "workflowId": (context.get("workflow") or {}).get("id"),
             "version": (context.get("workflow") or {}).get("version"), "status": status}
    if status == COMPLETED:
        return {**ident, "output": run_output(defn, context, engine)}, None
    message = (error or {}).get("message") or status.lower()
    return None, {"type": "child_failed", "message": f"child run {run_id} ended {status}: {message}",
                  **ident, "cause": error}


def child_started(run: RunState, step: StepView, child_id: str, workflow_id: str, version: int, wait: bool) -> Transition:
    """The parent's record that it started a child it waits for (the step stays RUNNING until then)."""
    engine = fork_engine(run.engine)
    engine["children"] = True  # the run's end cancels the children it still waits for
    return Transition(engine=engine, events=[Event("child.started", {
        "attempt": step.attempt, "runId": child_id, "workflowId": workflow_id, "version": version, "wait": wait},
        step.step_id)])


def child_detached(defn: dict[str, Any], run: RunState, step: StepView, child_id: str, workflow_id: str,
                   version: int) -> Transition:
    """`wait: false`: the child is started and the parent goes on with its id as the step's output."""
    engine = fork_engine(run.engine)
    t = Transition(engine=engine, events=[Event("child.started", {
        "attempt": step.attempt, "runId": child_id, "workflowId": workflow_id, "version": version, "wait": False},
        step.step_id)])
    return succeed(defn, run, engine, step, {"runId": child_id, "workflowId": workflow_id, "version": version}, t=t)


def continued_as_new(run: RunState, step: StepView, successor: str, workflow_id: str, version: int) -> Transition:
    """The run ends COMPLETED in the transaction that creates its successor; every other open step is
    cancelled. The successor's id is the step's output."""
    engine = fork_engine(run.engine)
    engine["continuedAs"] = successor
    output = {"runId": successor, "workflowId": workflow_id, "version": version}
    t = Transition(engine=engine, step_updates=[StepUpdate(step.step_id, step.attempt, SUCCEEDED, output=output)])
    t.events.append(Event("step.succeeded", {"attempt": step.attempt, "output": output}, step.step_id))
    t.events.append(Event("run.continued_as_new", {"runId": successor, "workflowId": workflow_id, "version": version},
                          step.step_id))
    end_run(run, engine, t, COMPLETED, None)
    return t
