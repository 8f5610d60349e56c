"""RunService: start runs (input checked against the workflow's JSON Schema) and read them back."""

from __future__ import annotations

import base64
import json
import sqlite3
from typing import Any

from station_wf.core import model
from station_wf.engine.runs import input_problems
from station_wf.errors import ServiceError, invalid, not_found
from station_wf.faults import crash_point
from station_wf.governance import policies
from station_wf.governance.admission import RunMeta, run_meta
from station_wf.governance.queries import RunFilters
from station_wf.principals import Principal
from station_wf.services import idempotency as idem
from station_wf.services import run_start as rstart
from station_wf.services.offload import DEFAULT as DEFAULT_OFFLOADER
from station_wf.services.offload import Offloader
from station_wf.store import governance_runs, governance_slots, lineage, run_reads
from station_wf.store.db import Readers, Writer
from station_wf.store.definitions import DefinitionCache, Head, read_definition
from station_wf.store.events import LIST_FIELDS, event_from_row, event_view, run_events
from station_wf.store.lineage import Origin
from station_wf.telemetry.metrics import runs_started_total

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
        "completedAt": row["completed_at"], **lineage.lineage_to_api(row),
        "correlationId": row["correlation_id"], "tags": _json(row["tags"]) or {},
    }
    if include_context:
        out["context"] = _json(row["context"])
    if steps is not None:
        out["steps"] = [step_to_api(s) for s in steps]
        out["currentSteps"] = [step_to_api(s) for s in steps if s["status"] in model.OPEN_STEP_STATUSES
                               or s["status"] in (model.WAITING_APPROVAL, model.WAITING_SIGNAL)]
    return out


def _check_inputs(items: list[tuple[int, Head, Any]]) -> dict[int, ServiceError]:
    """Batch items' inputs against their schemas (one trip off the loop for the whole batch)."""
    found: dict[int, ServiceError] = {}
    for i, head, run_input in items:
        try:
            problems = input_problems(head.definition["inputSchema"], run_input)
        except ServiceError as exc:
            found[i] = exc
            continue
        if problems:
            found[i] = RunService._invalid_input(head.row["workflow_id"], problems)
    return found


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
    def __init__(self, writer: Writer, readers: Readers, on_commit: Any = None,
                 definitions: DefinitionCache | None = None, offloader: Offloader | None = None) -> None:
        self.writer = writer
        self.readers = readers
        self.on_commit = on_commit
        self.definitions = definitions or DefinitionCache()
        self.offloader = offloader or DEFAULT_OFFLOADER
        self.idempotency = idem.IdempotencyStore(writer)

    async def start(self, workflow_id: Any, run_input: Any, version: Any = None, traceparent: str | None = None,
                    run_id: str | None = None, origin: Origin | None = None, meta: RunMeta | None = None) -> dict[str, Any]:
        """Start a run (started in the same transaction, see `run_start`); with `run_id` (an idempotency
        key's effect id) a run that already has it is returned instead."""
        outcome = await self._start(workflow_id, run_input, version, traceparent, run_id, None, origin, meta)
        return outcome.render(run_to_api)["run"]

    async def rerun(self, run_id: str, body: dict[str, Any], traceparent: str | None = None,
                    effect_id: str | None = None, principal: Principal | None = None) -> dict[str, Any]:
        """A new run with the old one's input (or `input`) on its version (or `version`: a number or
        "latest"); it records the run it re-runs (`rerunOf`), keeps its correlation id and tags, and
        passes the policies and limits as any start (issue 18)."""
        unknown = sorted(set(body) - {"version", "input"})
        if unknown:
            raise invalid(f"unknown field(s): {', '.join(unknown)}", {"fields": unknown})
        row = await run_reads.run_row(self.readers, run_id)
        if row is None:
            raise not_found("run", run_id)
        version = body.get("version", row["workflow_version"])
        if version == "latest":
            version = None
        run_input = body["input"] if body.get("input") is not None else json.loads(row["input"])
        meta = RunMeta(row["correlation_id"], _json(row["tags"]) or {}, principal)
        return await self.start(row["workflow_id"], run_input, version, traceparent, effect_id, Origin(rerun_of=run_id), meta)

    async def children(self, run_id: str) -> dict[str, Any]:
        if not await run_reads.run_known(self.readers, run_id):
            raise not_found("run", run_id)
        return {"runs": [run_to_api(r, include_context=False) for r in await lineage.children(self.readers, run_id)]}

    async def start_keyed(self, keyed: idem.Keyed, workflow_id: Any, run_input: Any, version: Any = None,
                          traceparent: str | None = None, meta: RunMeta | None = None) -> idem.Answer:
        """A start with an Idempotency-Key: reservation, run and answer in one transaction; a retry
        gets the stored answer (`replayed`)."""
        try:
            outcome = await self._start(workflow_id, run_input, version, traceparent, None, keyed, meta=meta)
        except ServiceError as exc:
            if not idem.stores_error(exc):
                raise
            return await self.idempotency.refuse(keyed, exc)
        crash_point("api.idempotency.after_effect")  # tests: the effect (and here its answer) committed
        return idem.Answer(outcome.status, outcome.render(run_to_api), outcome.replayed)

    async def _start(self, workflow_id: Any, run_input: Any, version: Any, traceparent: str | None,
                     run_id: str | None, keyed: idem.Keyed | None, origin: Origin | None = None,
                     meta: RunMeta | None = None) -> rstart.Outcome:
        rstart.check_ids(workflow_id, version)
        run_input = {} if run_input is None else run_input
        for _ in range(rstart.MAX_PREPARES):
            head = await self._head(workflow_id, version)
            await self._check_input(head, workflow_id, run_input)
            s = rstart.new_start(head, version, run_input, traceparent, run_id, keyed, origin=origin, meta=meta)
            try:
                outcome = await self.writer.run(lambda conn, s=s: rstart.start_in_tx(conn, self.definitions, s, run_to_api))
            except policies.PolicyDenied as denied:  # issue 18: recorded apart (the start's transaction is undone)
                await self.writer.run(lambda conn, d=denied.denial: policies.record(conn, d))
                raise
            except rstart.StaleHead:
                self.definitions.forget_head(workflow_id)
                continue
            except rstart.Retake as retake:
                run_id = retake.effect_id
                continue
            self._started([outcome])
            return outcome
        raise ServiceError(503, "busy", "the workflow's definition kept changing during the start; try again")

    async def start_batch(self, items: list[Any], traceparent: str | None, scope: str,
                          principal: Principal | None = None) -> list[dict[str, Any]]:
        """Every valid item started in ONE transaction; per-item results in order (`index`, `status`,
        `run` or `error`). Keys live in `scope` (the batch route and principal)."""
        run_ids: dict[int, str] = {}
        for _ in range(rstart.MAX_PREPARES):
            prepared = await self._prepare_batch(items, traceparent, scope, run_ids, principal)
            tx = rstart.BatchTx(self.definitions, prepared, run_to_api)
            try:
                outcomes = await self.writer.run(tx)
            except rstart.StaleHead as stale:
                self.definitions.forget_head(stale.workflow_id)
                continue
            except rstart.Retake as retake:
                run_ids[retake.index] = retake.effect_id
                continue
            crash_point("api.batch.after_commit")
            self._started(outcomes)
            results: list[dict[str, Any]] = []
            for i, outcome in enumerate(outcomes):
                entry: dict[str, Any] = {"index": i, "status": outcome.status, **outcome.render(run_to_api)}
                if outcome.replayed:
                    entry["replayed"] = True
                results.append(entry)
            return results
        raise ServiceError(503, "busy", "the workflows' definitions kept changing during the batch; try again")

    async def _prepare_batch(self, items: list[Any], traceparent: str | None, scope: str,
                             run_ids: dict[int, str], principal: Principal | None = None) -> list[rstart.Start | rstart.Refused]:
        """Check each item alone (its errors are its answer), with one head read per workflow and the
        schema checks done together off the loop."""
        prepared: list[rstart.Start | rstart.Refused] = []
        heads: dict[tuple[str, int | None], Head | ServiceError] = {}
        to_check: list[tuple[int, Head, dict[str, Any]]] = []
        for i, raw in enumerate(items):
            keyed = None
            try:
                item = rstart.batch_item(raw)
                if item.get("idempotencyKey") is not None:
                    keyed = idem.Keyed(scope, item["idempotencyKey"], rstart.item_digest(item))
                wf, version = item["workflowId"], item.get("version")
                if (wf, version) not in heads:
                    try:
                        heads[(wf, version)] = await self._head(wf, version)
                    except ServiceError as exc:
                        heads[(wf, version)] = exc
                head = heads[(wf, version)]
                if isinstance(head, ServiceError):
                    raise head
                run_input = {} if item.get("input") is None else item["input"]
                if head.definition.get("inputSchema"):
                    to_check.append((i, head, run_input))
                else:
                    problems = input_problems(None, run_input)
                    if problems:
                        raise self._invalid_input(wf, problems)
                meta = run_meta(item.get("correlationId"), item.get("tags"), principal=principal)
                prepared.append(rstart.new_start(head, version, run_input, traceparent, run_ids.get(i), keyed, i, meta=meta))
            except ServiceError as exc:
                prepared.append(rstart.Refused(exc, keyed, i))
        if to_check:
            found = await self.offloader.run(_check_inputs, to_check)
            for i, error in found.items():
                start = prepared[i]
                keyed = start.keyed if isinstance(start, rstart.Start) else None
                prepared[i] = rstart.Refused(error, keyed, i)
        return prepared

    def _started(self, outcomes: list[rstart.Outcome]) -> None:
        created = [o for o in outcomes if o.created]
        for o in created:
            runs_started_total.inc(workflow=o.workflow_id)
        if created and self.on_commit is not None:
            self.on_commit()

    async def _head(self, workflow_id: str, version: int | None) -> Head:
        """The workflow's definition to start with: cached, or read (and cached) when not."""
        head = self.definitions.head(workflow_id, version)
        if head is not None:
            return head
        generation = self.definitions.generation()
        row = await read_definition(self.readers, workflow_id, version)
        if row is None:
            raise not_found("workflow", workflow_id if version is None else f"{workflow_id}@{version}")
        if row["status"] != "active":
            raise rstart.disabled(workflow_id)
        defn = await self.offloader.run(self._checked_definition, row)
        self.definitions.put_head(version, row, defn, generation)
        return Head(row, defn, generation)

    async def _check_input(self, head: Head, workflow_id: str, run_input: Any) -> None:
        schema = head.definition.get("inputSchema")
        problems = input_problems(None, run_input) if not schema else \
            await self.offloader.run(input_problems, schema, run_input)
        if problems:
            raise self._invalid_input(workflow_id, problems)

    @staticmethod
    def _invalid_input(workflow_id: str, problems: list[dict[str, Any]]) -> ServiceError:
        return ServiceError(400, "invalid_input", f"input does not match the input schema of {workflow_id!r}", problems)

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
        out = run_to_api(row, steps)
        if row["status"] == model.PENDING:  # issue 18: waiting for a concurrency slot, and where in line
            out["queue"] = await governance_slots.queue_position(self.readers, run_id)
        return out

    async def list(self, workflow_id: str | None, status: str | None, limit: int, cursor: str | None,
                   filters: RunFilters | None = None, principal: Principal | None = None,
                   parent_run_id: str | None = None) -> dict[str, Any]:
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise invalid(f"limit must be between 1 and {MAX_LIST_LIMIT}", {"limit": limit})
        statuses: list[str] | None = None
        if status:
            statuses = sorted({s.strip().upper() for s in status.split(",") if s.strip()})
            unknown = [s for s in statuses if s not in RUN_STATUSES]
            if unknown:
                raise invalid(f"unknown run status: {unknown[0][:40]!r}", {"status": unknown[:5], "allowed": sorted(RUN_STATUSES)})
        if policies.active():  # issue 18: the query policy (its condition runs in a transaction: sandboxed)
            try:
                limit = await self.writer.run(lambda c: policies.check_query(principal, workflow_id, statuses, limit))
            except policies.PolicyDenied as denied:
                await self.writer.run(lambda conn, d=denied.denial: policies.record(conn, d))
                raise
        before = decode_cursor(cursor) if cursor else None
        f = filters or RunFilters()
        extra = governance_runs.list_filters(f.correlation_id, f.tags, f.started_after, f.started_before)
        rows = await run_reads.list_runs(self.readers, workflow_id, statuses, before, limit + 1, parent_run_id, extra)
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
