"""RunService: start runs (input checked against the workflow's JSON Schema) and read them back."""

from __future__ import annotations

import base64
import json
import sqlite3
import uuid
from typing import Any

from station_wf.core import model
from station_wf.engine.runs import input_problems, insert_new_run
from station_wf.errors import ServiceError, invalid, not_found
from station_wf.services.offload import DEFAULT as DEFAULT_OFFLOADER
from station_wf.services.offload import Offloader
from station_wf.store import run_reads
from station_wf.store.db import SqliteReaders, SqliteWriter
from station_wf.store.definitions import DefinitionCache, definition_status, read_definition
from station_wf.store.events import LIST_FIELDS, event_from_row, event_view, run_events
from station_wf.telemetry.metrics import runs_started_total
from station_wf.telemetry.tracing import new_run_traceparent

MAX_LIST_LIMIT = 1000
TERMINAL_RUN_STATUSES = model.TERMINAL_RUN_STATUSES
"""A run in one of these has ended; the face asks here, not the engine."""
RUN_STATUSES = frozenset({model.PENDING, model.PAUSED, *model.ACTIVE_RUN_STATUSES, *model.TERMINAL_RUN_STATUSES})


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def step_to_api(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "stepId": row["step_id"], "stateName": row["state_name"], "stateType": row["state_type"],
        "branchPath": row["branch_path"], "foreachIndex": row["foreach_index"], "attempt": row["attempt"],
        "status": row["status"], "executor": row["executor"], "idempotencyKey": row["idempotency_key"],
        "input": _json(row["input"]), "output": _json(row["output"]), "error": _json(row["error"]),
        "metadata": _json(row["metadata"]),
        "createdAt": row["created_at"], "startedAt": row["started_at"], "completedAt": row["completed_at"],
    }


def run_to_api(row: sqlite3.Row, steps: list[sqlite3.Row] | None = None, include_context: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row["run_id"], "workflowId": row["workflow_id"], "workflowVersion": row["workflow_version"],
        "contentHash": row["content_hash"], "status": row["status"], "input": _json(row["input"]),
        "error": _json(row["error"]), "version": row["version"], "lastEventSeq": row["event_seq"],
        "createdAt": row["created_at"], "startedAt": row["started_at"], "updatedAt": row["updated_at"],
        "completedAt": row["completed_at"],
    }
    if include_context:
        out["context"] = _json(row["context"])
    if steps is not None:
        out["steps"] = [step_to_api(s) for s in steps]
        out["currentSteps"] = [step_to_api(s) for s in steps if s["status"] in model.OPEN_STEP_STATUSES
                               or s["status"] in (model.WAITING_APPROVAL, model.WAITING_SIGNAL)]
    return out


def encode_cursor(value: int) -> str:
    return base64.urlsafe_b64encode(str(value).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        value = int(base64.urlsafe_b64decode(cursor[:64] + "=" * (-len(cursor[:64]) % 4)).decode())
    except ValueError:
        value = -1
    if len(cursor) > 64 or not 0 <= value < 1 << 63:
        raise invalid("cursor is not valid", {"cursor": cursor[:64]})
    return value


class RunService:
    def __init__(self, writer: SqliteWriter, readers: SqliteReaders, on_commit: Any = None,
                 definitions: DefinitionCache | None = None, offloader: Offloader | None = None) -> None:
        self.writer = writer
        self.readers = readers
        self.on_commit = on_commit
        self.definitions = definitions or DefinitionCache()
        self.offloader = offloader or DEFAULT_OFFLOADER

    async def start(self, workflow_id: Any, run_input: Any, version: Any = None, traceparent: str | None = None,
                    run_id: str | None = None) -> dict[str, Any]:
        """Start a run; with `run_id` (an idempotency key's effect id) a run that already has it is returned instead."""
        if not isinstance(workflow_id, str) or not workflow_id:
            raise invalid("workflowId is required", {"field": "workflowId"})
        if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
            raise invalid("version must be a positive integer", {"field": "version"})
        run_input = {} if run_input is None else run_input
        row = await read_definition(self.readers, workflow_id, version)
        if row is None:
            raise not_found("workflow", workflow_id if version is None else f"{workflow_id}@{version}")
        if row["status"] != "active":
            raise ServiceError(409, "workflow_disabled", f"workflow {workflow_id!r} is disabled", {"id": workflow_id})
        defn = await self.offloader.run(self._checked_definition, row)
        problems = input_problems(None, run_input) if not defn.get("inputSchema") else \
            await self.offloader.run(input_problems, defn["inputSchema"], run_input)
        if problems:
            raise ServiceError(400, "invalid_input", f"input does not match the input schema of {workflow_id!r}", problems)
        run_id = run_id or str(uuid.uuid4())
        traceparent = new_run_traceparent(traceparent, {"workflow.id": workflow_id, "workflow.version": row["version"], "run.id": run_id})

        def apply(conn: sqlite3.Connection) -> dict[str, Any] | None:
            if run_reads.run_exists(conn, run_id):
                return None  # created by an earlier attempt of this same request
            if definition_status(conn, workflow_id, row["version"]) != "active":  # disabled since the read above
                raise ServiceError(409, "workflow_disabled", f"workflow {workflow_id!r} is disabled", {"id": workflow_id})
            return insert_new_run(conn, row, self.definitions.get(conn, workflow_id, row["version"]), run_id, run_input,
                                  traceparent)

        context = await self.writer.run(apply)
        if context is None:
            return await self.get(run_id)
        runs_started_total.inc(workflow=workflow_id)
        if self.on_commit is not None:
            self.on_commit()
        # The response is what was just committed; no need to read it back.
        return {
            "id": run_id, "workflowId": workflow_id, "workflowVersion": row["version"], "contentHash": row["content_hash"],
            "status": model.PENDING, "input": run_input, "error": None, "version": 0, "lastEventSeq": 1,
            "createdAt": context["workflow"]["startedAt"], "startedAt": None, "updatedAt": context["workflow"]["startedAt"],
            "completedAt": None, "context": context, "steps": [], "currentSteps": [],
        }

    def _checked_definition(self, row: sqlite3.Row) -> dict[str, Any]:
        """The parsed definition (cached per immutable version); off the loop, it can be big."""
        cached = self.definitions.peek(row["workflow_id"], row["version"])
        if cached is not None:
            return cached
        defn = json.loads(row["definition"])
        self.definitions.put(row["workflow_id"], row["version"], defn)
        return defn

    async def summary(self, run_id: str) -> dict[str, Any]:
        """The run without its steps and context (what an SSE connect needs: status and last seq)."""
        row = await run_reads.run_row(self.readers, run_id)
        if row is None:
            raise not_found("run", run_id)
        return run_to_api(row, include_context=False)

    async def get(self, run_id: str) -> dict[str, Any]:
        row = await run_reads.run_row(self.readers, run_id)
        if row is None:
            raise not_found("run", run_id)
        steps = await run_reads.run_steps(self.readers, run_id)
        return run_to_api(row, steps)

    async def list(self, workflow_id: str | None, status: str | None, limit: int, cursor: str | None) -> dict[str, Any]:
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise invalid(f"limit must be between 1 and {MAX_LIST_LIMIT}", {"limit": limit})
        statuses: list[str] | None = None
        if status:
            statuses = sorted({s.strip().upper() for s in status.split(",") if s.strip()})
            unknown = [s for s in statuses if s not in RUN_STATUSES]
            if unknown:
                raise invalid(f"unknown run status: {unknown[0][:40]!r}", {"status": unknown[:5], "allowed": sorted(RUN_STATUSES)})
        before = decode_cursor(cursor) if cursor else None
        rows = await run_reads.list_runs(self.readers, workflow_id, statuses, before, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "runs": [run_to_api(r, include_context=False) for r in rows],
            "nextCursor": encode_cursor(rows[-1]["id"]) if more else None,
        }

    async def events(self, run_id: str, after_seq: int, limit: int) -> dict[str, Any]:
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise invalid(f"limit must be between 1 and {MAX_LIST_LIMIT}", {"limit": limit})
        if not await run_reads.run_known(self.readers, run_id):
            raise not_found("run", run_id)
        rows = await run_events(self.readers, run_id, after_seq, limit)
        events = [event_view(event_from_row(r), LIST_FIELDS) for r in rows]
        return {"events": events, "nextAfterSeq": events[-1]["seq"] if len(events) == limit else None}
