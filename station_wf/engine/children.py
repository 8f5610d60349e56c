"""Runs that start runs, in the shell: starting a child or a successor inside the transaction that
begins the step, handing a child's end back to its parent, and ending children with their parent.

Why in the transaction: the child's run id is derived from the parent step's identity and its row is
inserted in the same commit that marks the parent step RUNNING, so a redelivered task finds the child
it started (never a second one), and a crash before the commit loses both together. A child's end
records the parent step's result exactly as an executor's result is recorded, and enqueues the parent
step's task in the same commit: the parent decides it like any executor's result, durably.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from station_wf.core import children as cc
from station_wf.core import interpreter as ip
from station_wf.core import model, scopes
from station_wf.core.identity import child_run_id, idempotency_key, successor_run_id
from station_wf.core.limits import LIMITS
from station_wf.deferral import after_commit
from station_wf.engine import commit, control, runs, step_tx  # commit.py imports this module last: no cycle
from station_wf.governance import admission
from station_wf.protocol import step_task
from station_wf.store import lineage, outbox, run_reads
from station_wf.store import runs as rs
from station_wf.store.definitions import DefinitionCache, version_row
from station_wf.store.jsontext import loads
from station_wf.store.run_unit import RunUnit

log = logging.getLogger(__name__)

_announce: list[Callable[[str], None]] = []


def set_cancel_announcer(fn: Callable[[str], None] | None) -> None:
    """The daemon's way to interrupt a cancelled child's executions (here and on other replicas);
    called after the commit that cancelled it, on the writer thread (so `fn` must be thread-safe)."""
    _announce.clear()
    if fn is not None:
        _announce.append(fn)


# -- starting -------------------------------------------------------------------------------------
def begin(conn: sqlite3.Connection, defs: DefinitionCache, run: rs.RunRow, row: sqlite3.Row, view: model.StepView,
          action: str, rendered: dict[str, Any], timeout_s: float | None) -> int:
    """The step's task arrived: start its child (or successor) and commit what the parent does now."""
    defn = defs.get(conn, run.workflow_id, run.workflow_version)
    req = cc.request(action, rendered)
    if isinstance(req, str):
        return _refuse(conn, defs, run, defn, view, req)
    if action == cc.CONTINUE_AS_NEW:
        return _continue(conn, defs, run, defn, row, view, req, rendered)
    child_id = child_run_id(run.run_id, view.step_id, view.attempt)
    if row["status"] == model.RUNNING or run_reads.run_exists(conn, child_id):
        return 0  # an earlier delivery of this task started it: the step waits for it (or went on)
    previous = (run.engine.get("redriven") or {}).get(view.step_id)
    if previous is not None and req.wait:
        adopted = _continue_child(conn, defs, run, row, view, int(previous), action, rendered, timeout_s)
        if adopted is not None:
            return adopted
    origin = lineage.origin_of(conn, run.run_id) or lineage.Origin()
    assert req.workflow is not None
    found = _resolve(conn, defs, req.workflow, req.version)
    if isinstance(found, str):
        return _refuse(conn, defs, run, defn, view, found)
    head, child_defn = found
    depth = origin.depth + 1
    if depth > LIMITS.max_child_depth:
        return _refuse(conn, defs, run, defn, view, f"starting {req.workflow!r} would nest runs {depth} deep, "
                       f"past STATION_MAX_CHILD_DEPTH={LIMITS.max_child_depth}")
    ancestry = (*origin.lineage, run.workflow_id)
    if req.workflow in ancestry and not req.allow_recursion:
        chain = " -> ".join((*ancestry[ancestry.index(req.workflow):], req.workflow))
        return _refuse(conn, defs, run, defn, view, f"workflow {req.workflow!r} would start itself ({chain}); "
                       "say `allowRecursion: true` in the step's input if it should")
    problems = _input_problems(child_defn, req.input)
    if problems:
        return _refuse(conn, defs, run, defn, view, f"the input does not match {req.workflow!r}'s inputSchema: {problems}")
    refused = admission.child_refusal(conn, run.workflow_id, req.workflow, head["version"], req.input)  # issue 18: policies
    if refused is not None:
        return _refuse(conn, defs, run, defn, view, refused)
    rs.mark_running(conn, run, row, action, rendered, timeout_s)
    _create(conn, defs, head, child_defn, child_id, req.input, run.traceparent, lineage.Origin(
        parent_run_id=run.run_id, parent_step_id=view.step_id, parent_attempt=view.attempt, parent_waits=req.wait,
        depth=depth, lineage=ancestry))
    fresh = rs.load_run(conn, run.run_id) or run
    state = rs.run_state(conn, fresh)
    if req.wait:
        t = cc.child_started(state, view, child_id, req.workflow, head["version"], True)
    else:
        t = cc.child_detached(defn, state, view, child_id, req.workflow, head["version"])
    return _commit(conn, defs, fresh, t, view)


def _continue_child(conn: sqlite3.Connection, defs: DefinitionCache, run: rs.RunRow, row: sqlite3.Row,
                    view: model.StepView, previous: int, action: str, rendered: dict[str, Any],
                    timeout_s: float | None) -> int | None:
    """A redriven parent step continues the child its earlier attempt waited for: a child that failed,
    timed out or was cancelled is redriven in place (its succeeded steps are not run again), a child
    that completed hands its outcome to the new attempt. None: there is no such child (start a new one)."""
    old = lineage.waited_child(conn, run.run_id, view.step_id, previous)
    if old is None:
        return None
    child_id, status = old
    if status not in model.TERMINAL_RUN_STATUSES:
        return None
    point = rs.Savepoint(conn, "continue_child")
    try:
        rs.mark_running(conn, run, row, action, rendered, timeout_s)
        lineage.repoint_parent(conn, child_id, view.attempt)
        if status == model.COMPLETED:
            child = rs.load_run(conn, child_id)
            assert child is not None
            _hand_back(conn, defs.get(conn, child.workflow_id, child.workflow_version), child_id, child.context,
                       child.engine, status)
        else:
            control.redrive(conn, defs, child_id, "parent", by_parent=True)
    except control.Conflict:
        point.undo()
        return None
    point.keep()
    fresh = rs.load_run(conn, run.run_id) or run
    head = lineage.head_of(conn, child_id)
    assert head is not None
    t = cc.child_started(rs.run_state(conn, fresh), view, child_id, head["workflow_id"], head["workflow_version"], True)
    t.events[0] = model.Event(t.events[0].type, {**t.events[0].payload, "continued": status}, view.step_id)
    return _commit(conn, defs, fresh, t, view)


def _continue(conn: sqlite3.Connection, defs: DefinitionCache, run: rs.RunRow, defn: dict[str, Any], row: sqlite3.Row,
              view: model.StepView, req: cc.ChildRequest, rendered: dict[str, Any]) -> int:
    """The run ends COMPLETED and its successor starts with the new input, in this one transaction."""
    successor = successor_run_id(run.run_id)
    if run_reads.run_exists(conn, successor):
        return 0
    found = _resolve(conn, defs, run.workflow_id, req.version)
    if isinstance(found, str):
        return _refuse(conn, defs, run, defn, view, found)
    head, next_defn = found
    problems = _input_problems(next_defn, req.input)
    if problems:
        return _refuse(conn, defs, run, defn, view, f"the new input does not match the inputSchema: {problems}")
    origin = lineage.origin_of(conn, run.run_id) or lineage.Origin()
    rs.mark_running(conn, run, row, cc.CONTINUE_AS_NEW, rendered)
    lineage.mark_continued(conn, run.run_id, successor)
    _create(conn, defs, head, next_defn, successor, req.input, run.traceparent, lineage.Origin(
        parent_run_id=origin.parent_run_id, parent_step_id=origin.parent_step_id, parent_attempt=origin.parent_attempt,
        parent_waits=origin.parent_waits, depth=origin.depth, lineage=origin.lineage, continued_from=run.run_id))
    fresh = rs.load_run(conn, run.run_id) or run
    return _commit(conn, defs, fresh, cc.continued_as_new(rs.run_state(conn, fresh), view, successor, run.workflow_id,
                                                          head["version"]), view)


def _create(conn: sqlite3.Connection, defs: DefinitionCache, head: sqlite3.Row, defn: dict[str, Any], run_id: str,
            run_input: dict[str, Any], traceparent: str | None, origin: lineage.Origin) -> None:
    runs.create_and_start(conn, defs, head, defn, run_id, run_input, traceparent, origin=origin)


def _resolve(conn: sqlite3.Connection, defs: DefinitionCache, workflow: str, version: int | None
             ) -> tuple[sqlite3.Row, dict[str, Any]] | str:
    head = version_row(conn, workflow, version)
    if head is None:
        return f"workflow {workflow!r}" + (f" version {version}" if version else "") + " does not exist"
    if head["status"] != "active":
        return f"workflow {workflow!r} version {head['version']} is disabled"
    return head, defs.get(conn, workflow, head["version"])


def _input_problems(defn: dict[str, Any], run_input: dict[str, Any]) -> str | None:
    problems = runs.input_problems(defn.get("inputSchema"), run_input)
    return "; ".join(f"{p['path']}: {p['message']}" for p in problems[:5]) if problems else None


def _refuse(conn: sqlite3.Connection, defs: DefinitionCache, run: rs.RunRow, defn: dict[str, Any], view: model.StepView,
            message: str) -> int:
    error = cc.refusal(view.state_name, message)
    return _commit(conn, defs, run, ip.step_failed(defn, rs.run_state(conn, run), view, error, retry=False), view)


def _commit(conn: sqlite3.Connection, defs: DefinitionCache, run: rs.RunRow, t: model.Transition,
            view: model.StepView | None = None) -> int:
    if view is not None and t.engine is not None and view.step_id in (t.engine.get("redriven") or {}):
        t.engine["redriven"] = {k: v for k, v in t.engine["redriven"].items() if k != view.step_id}  # used once
    return commit.commit_transition(conn, defs, run, t, view)


# -- after a commit: the parent's wait and the run's end ------------------------------------------------
def closing_waits(defn: dict[str, Any], unit: RunUnit) -> dict[tuple[str, int], model.StepView]:
    """Before a transition: the open steps of the unit that wait for a child (only for a run that
    started one, so this costs nothing elsewhere)."""
    if not unit.engine.get("children"):
        return {}
    out = {}
    for key, view in unit.open.items():
        state = scopes.scope_states(defn, view.branch_path).get(view.state_name) or {}
        if state.get("action") == cc.RUN_CHILD:
            out[key] = view
    return out


def after_commit_of(conn: sqlite3.Connection, defs: DefinitionCache, defn: dict[str, Any], unit: RunUnit, was: str,
                    waits: dict[tuple[str, int], model.StepView]) -> None:
    """What a committed chain means for other runs: a wait that closed any other way than by its child's
    end cancels the child (or its successor); a run that ended hands its outcome to its parent and
    cancels the children it still waited for."""
    for key in waits:
        if key not in unit.open:
            for child in lineage.waited_children_of_step(conn, unit.run_id, key[0], key[1]):
                _cancel(conn, defs, child, "its parent step ended")
    if was in model.TERMINAL_RUN_STATUSES or unit.status not in model.TERMINAL_RUN_STATUSES:
        return
    parent = (unit.context.get("workflow") or {}).get("parent")
    if isinstance(parent, dict) and parent.get("wait") and not unit.engine.get("continuedAs"):
        _hand_back(conn, defn, unit.run_id, unit.context, unit.engine, unit.status)
    # Not only when the engine says it started one: a transition replaced by a cap's failure drops that flag.
    for child in lineage.active_children(conn, unit.run_id, waited_only=True):
        _cancel(conn, defs, child, f"its parent run {unit.run_id} ended {unit.status}")


def _hand_back(conn: sqlite3.Connection, defn: dict[str, Any], run_id: str, context: dict[str, Any],
               engine: dict[str, Any], status: str) -> None:
    """The child's outcome as its parent step's result (the step attempt the columns name now: a redrive
    of the parent re-points them), and the parent step's task to decide it."""
    link = lineage.parent_link(conn, run_id)
    if link is None or not link.parent_waits or link.parent_run_id is None or link.parent_step_id is None:
        return
    error = lineage.run_error(conn, run_id)
    output, failure = cc.child_outcome(defn, run_id, context, engine, status, None if error is None else loads(error))
    step, attempt = link.parent_step_id, int(link.parent_attempt or 0)
    if rs.record_result(conn, link.parent_run_id, step, attempt, step_tx.encode_result(output, failure), None):
        owner = lineage.head_of(conn, link.parent_run_id)
        outbox.enqueue_task(conn, step_task(link.parent_run_id, step, attempt,
                                            idempotency_key(link.parent_run_id, step, attempt),
                                            None if owner is None else owner["traceparent"], f"child-{run_id}-{attempt}"))


def _cancel(conn: sqlite3.Connection, defs: DefinitionCache, run_id: str, reason: str) -> None:
    if rs.run_status(conn, run_id) in (None, *model.TERMINAL_RUN_STATUSES):
        return  # checked before decoding the run: most closed waits find their child ended already
    run = rs.load_run(conn, run_id)
    assert run is not None
    _commit(conn, defs, run, ip.cancel_run(rs.run_state(conn, run), reason, "parent"))
    for fn in _announce:
        after_commit(functools.partial(fn, run_id))
