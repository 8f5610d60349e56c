"""The one way a run is created, for the API and the schedule loop alike: check its input, then
write its context, row, first event and run task in the caller's transaction."""

from __future__ import annotations

import sqlite3
from typing import Any

from station_wf.core import history, model
from station_wf.dsl.input_schema import SchemaProblem, input_schema_errors
from station_wf.errors import ServiceError
from station_wf.store import runs as rs
from station_wf.store.db import utcnow


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
                   traceparent: str | None, extra_context: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one way a run is created (API and schedules): its context, row, first event and run task."""
    now = utcnow()
    context = history.initial_context(defn, run_id, row["version"], run_input, now)
    context.update(extra_context or {})
    rs.insert_run(conn, run_id, row["workflow_id"], row["version"], row["content_hash"], run_input, context, traceparent, now)
    return context
