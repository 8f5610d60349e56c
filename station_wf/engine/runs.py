"""The one way a run is created, for the API and the schedule loop alike: check its input, then
write its context, row, first event and run task in the caller's transaction.

The API also starts the run in that transaction (`create_and_start`): the start decision and the
inline chain it leads to commit with the insert, and the run task is withdrawn, so a run of inject
steps is done when its POST answers. When the decision fails the run stays PENDING with its run task,
as before, for the worker and its delivery budget.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from station_wf.core import history, model
from station_wf.core import interpreter as ip
from station_wf.dsl.input_schema import SchemaProblem, input_schema_errors
from station_wf.engine.commit import decide_and_commit
from station_wf.errors import ServiceError
from station_wf.faults import fault_error
from station_wf.governance import admission
from station_wf.store import lineage
from station_wf.store import runs as rs
from station_wf.store.db import utcnow
from station_wf.store.definitions import DefinitionCache
from station_wf.store.storage_errors import is_storage_error

log = logging.getLogger(__name__)


def input_problems(schema: dict[str, Any] | None, run_input: Any) -> list[dict[str, Any]]:
    """Every violation of the input schema, each with its JSON path, message and failing keyword."""
    problems: list[dict[str, Any]] = []
    if not isinstance(run_input, dict):
        return [{"path": "$", "message": "input must be a JSON object", "validator": "type"}]
    for key in model.RESERVED_INPUT_KEYS:
        if key in run_input:
            problems.append({"path": f"$.{key}", "message": f"input key {key!r} is reserved", "validator": "reserved"})
    if schema:
        try:
            errors = input_schema_errors(schema, run_input)
        except SchemaProblem as exc:
            raise ServiceError(422, "invalid_input_schema", f"the workflow's inputSchema cannot be used: {exc}") from None
        problems.extend({"path": err.json_path, "message": err.message, "validator": err.validator} for err in errors)
    return problems


def insert_new_run(conn: sqlite3.Connection, row: sqlite3.Row, defn: dict[str, Any], run_id: str, run_input: dict[str, Any],
                   traceparent: str | None, extra_context: dict[str, Any] | None = None,
                   run_task: bool = True, origin: lineage.Origin | None = None,
                   meta: admission.RunMeta | None = None) -> dict[str, Any]:
    """The one way a run is created (API, schedules, re-runs, child runs, continue-as-new): its context,
    row, first event, where it came from, and (unless the caller starts it in this transaction, or it
    waits for a concurrency slot) its run task. A child's context names its parent under `workflow.parent`."""
    now = utcnow()
    context = history.initial_context(defn, run_id, row["version"], run_input, now)
    context.update(extra_context or {})
    if origin is not None and origin.parent_run_id:
        context["workflow"]["parent"] = {"runId": origin.parent_run_id, "stepId": origin.parent_step_id,
                                         "attempt": origin.parent_attempt, "wait": origin.parent_waits,
                                         "workflowId": origin.lineage[-1] if origin.lineage else None}
    rs.insert_run(conn, run_id, row["workflow_id"], row["version"], row["content_hash"], run_input, context, traceparent, now,
                  run_task=False)
    if origin is not None:
        lineage.record_origin(conn, run_id, origin)
    child = origin is not None and bool(origin.parent_run_id)
    if admission.admit(conn, run_id, row["workflow_id"], defn, run_input, meta, child) and run_task:  # issue 18: limits
        rs.enqueue_run_task(conn, run_id, traceparent)
    return context


def create_and_start(conn: sqlite3.Connection, defs: DefinitionCache, row: sqlite3.Row, defn: dict[str, Any], run_id: str,
                     run_input: dict[str, Any], traceparent: str | None, origin: lineage.Origin | None = None,
                     meta: admission.RunMeta | None = None) -> bool:
    """Insert the run and decide its start in this transaction; True when it started here.

    The decision runs in a savepoint: if it raises (other than for storage), only it is undone and the run is committed PENDING
    with its run task (the worker tries again, within its delivery budget). A `Deferred` (an expression
    for the sandbox) is a BaseException: it undoes the whole transaction, which the writer runs again;
    nothing here depends on an earlier attempt."""
    insert_new_run(conn, row, defn, run_id, run_input, traceparent, run_task=False, origin=origin, meta=meta)
    if admission.waiting(conn, run_id, defn):
        return False  # issue 18: queued for a concurrency slot; the run that frees one starts it
    point = rs.Savepoint(conn, "start_run")
    try:
        if fault_error("api.start_run"):  # tests: a start decision that fails
            raise RuntimeError("fault injected at api.start_run")
        run = rs.load_run(conn, run_id)
        assert run is not None
        decide_and_commit(conn, defs, run, ip.start_run)
    except BaseException as exc:
        if not conn.in_transaction:
            raise  # SQLite undid the whole transaction (a full disk, say): the writer fails the group
        point.undo()
        if not isinstance(exc, Exception) or is_storage_error(exc):
            raise  # a Deferred (the whole transaction runs again), or the database cannot store it: not the decision's fault
        log.warning("run %s: start decision failed, left to its run task: %s: %s", run_id, type(exc).__name__, exc)
        rs.enqueue_run_task(conn, run_id, traceparent)
        return False
    point.keep()
    return True
