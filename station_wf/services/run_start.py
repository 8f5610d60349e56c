"""Starting runs, one or a batch, in one writer transaction each: the key's reservation, the insert,
the start decision with its inline chain, and the key's answer commit together.

What can be checked before the transaction is (the workflow's head from the cache, the input against
its schema); inside it, the head is checked again (`latest_head`, one indexed read), so a cached head
that a definition write made stale is never used: the start is prepared again from a fresh read.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from station_wf.deferral import Deferred
from station_wf.engine.runs import create_and_start
from station_wf.errors import ServiceError, invalid
from station_wf.faults import crash_point
from station_wf.governance import admission, policies
from station_wf.services import idempotency as idem
from station_wf.store import run_reads, run_start
from station_wf.store import runs as rs
from station_wf.store.definitions import DefinitionCache, Head, definition_status, latest_head
from station_wf.store.lineage import Origin
from station_wf.telemetry.tracing import new_run_traceparent

MAX_BATCH = 1000
BATCH_ITEM_FIELDS = frozenset({"workflowId", "version", "input", "idempotencyKey", "correlationId", "tags"})
MAX_PREPARES = 3
"""Starts prepared again after a stale head or a taken-over key, at most (then 503)."""

RunView = Callable[[sqlite3.Row, list[sqlite3.Row]], dict[str, Any]]


class StaleHead(Exception):
    """The cached head is not the workflow's head any more: prepare the start again."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(workflow_id)
        self.workflow_id = workflow_id


class Retake(Exception):
    """The key's reservation was left by a daemon that died: act with its effect id (its run's id)."""

    def __init__(self, index: int, effect_id: str) -> None:
        super().__init__(effect_id)
        self.index, self.effect_id = index, effect_id


def disabled(workflow_id: str) -> ServiceError:
    return ServiceError(409, "workflow_disabled", f"workflow {workflow_id!r} is disabled", {"id": workflow_id})


def check_ids(workflow_id: Any, version: Any) -> None:
    if not isinstance(workflow_id, str) or not workflow_id:
        raise invalid("workflowId is required", {"field": "workflowId"})
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise invalid("version must be a positive integer", {"field": "version"})


@dataclass
class Start:
    """One start, checked before the transaction."""
    head: Head
    version: int | None          # as asked (None: the latest)
    run_input: dict[str, Any]
    run_id: str
    traceparent: str | None
    keyed: idem.Keyed | None = None
    index: int = 0
    origin: Origin | None = None  # a re-run names the run it re-runs
    meta: admission.RunMeta | None = None

    @property
    def workflow_id(self) -> str:
        return self.head.row["workflow_id"]


@dataclass
class Outcome:
    """What one start answered: a run (its rows, or its API body when keyed) or a stored answer."""
    status: int
    body: dict[str, Any] | None = None
    rows: tuple[sqlite3.Row, list[sqlite3.Row]] | None = None
    replayed: bool = False
    created: bool = False
    workflow_id: str = ""

    def render(self, view: RunView) -> dict[str, Any]:
        """The answer's body: `{"run": ...}` (or a replayed answer as it was stored)."""
        if self.body is not None:
            return self.body
        assert self.rows is not None
        return {"run": view(*self.rows)}


def new_start(head: Head, version: int | None, run_input: dict[str, Any], traceparent: str | None,
              run_id: str | None = None, keyed: idem.Keyed | None = None, index: int = 0,
              origin: Origin | None = None, meta: admission.RunMeta | None = None) -> Start:
    run_id = run_id or str(uuid.uuid4())
    tp = new_run_traceparent(traceparent, {"workflow.id": head.row["workflow_id"], "workflow.version": head.row["version"],
                                           "run.id": run_id})
    return Start(head, version, run_input, run_id, tp, keyed, index, origin, meta)


def _check_head(conn: sqlite3.Connection, s: Start) -> None:
    """The head the start was prepared with is still the one to use (and active), seen in this transaction."""
    row = s.head.row
    if s.version is None:
        now = latest_head(conn, s.workflow_id)
        if now is None or now[0] != row["version"]:
            raise StaleHead(s.workflow_id)
        status = now[1]
    else:
        status = definition_status(conn, s.workflow_id, row["version"])
    if status != "active":  # disabled since it was read
        raise disabled(s.workflow_id)


def start_in_tx(conn: sqlite3.Connection, defs: DefinitionCache, s: Start, view: RunView) -> Outcome:
    """One start inside the caller's transaction (the writer's, or a batch item's savepoint)."""
    if s.keyed is not None:
        effect_id, replay = idem.claim(conn, s.keyed, s.run_id)
        if replay is not None:
            return Outcome(replay.status, replay.body, replayed=True, workflow_id=s.workflow_id)
        if effect_id != s.run_id:
            raise Retake(s.index, str(effect_id))
    created = False
    if not run_reads.run_exists(conn, s.run_id):  # else: made by an earlier attempt of this request
        _check_head(conn, s)
        admission.check_start(conn, s.workflow_id, s.head.row["version"], s.run_input, s.meta)  # issue 18: policies, rate
        create_and_start(conn, defs, s.head.row, s.head.definition, s.run_id, s.run_input, s.traceparent, origin=s.origin,
                         meta=s.meta)
        created = True
    rows = run_start.run_with_steps(conn, s.run_id)
    if s.keyed is None:
        return Outcome(201, rows=rows, created=created, workflow_id=s.workflow_id)
    assert rows[0] is not None
    body = {"run": view(rows[0], rows[1])}
    idem.answer(conn, s.keyed, 201, body)
    return Outcome(201, body, created=created, workflow_id=s.workflow_id)


@dataclass
class Refused:
    """A batch item refused before the transaction; with a key, its answer is stored (or replayed) there."""
    error: ServiceError
    keyed: idem.Keyed | None = None
    index: int = 0


@dataclass
class BatchTx:
    """The batch's one transaction: every item in its own savepoint, so one item's failure is its
    answer alone; deferrals of all items are collected so that one re-run serves them all."""
    defs: DefinitionCache
    items: list[Start | Refused]
    view: RunView

    def __call__(self, conn: sqlite3.Connection) -> list[Outcome]:
        out: list[Outcome] = []
        deferred: Deferred | None = None
        for item in self.items:
            point = rs.Savepoint(conn, "batch_item")
            try:
                out.append(self._one(conn, item))
            except Deferred as needs:
                point.undo()
                deferred = needs if deferred is None else deferred.merge(needs)
                out.append(Outcome(0))
            except ServiceError as exc:
                if not conn.in_transaction:
                    raise
                point.undo()
                if isinstance(exc, policies.PolicyDenied):
                    policies.record(conn, exc.denial)  # issue 18: the audit log keeps the refusal
                out.append(Outcome(exc.status, idem.error_body(exc)))
            else:
                point.keep()
        if deferred is not None:
            raise deferred
        crash_point("api.batch.before_commit")  # tests: all items written, nothing committed
        return out

    def _one(self, conn: sqlite3.Connection, item: Start | Refused) -> Outcome:
        if isinstance(item, Start):
            return start_in_tx(conn, self.defs, item, self.view)
        if item.keyed is None:
            return Outcome(item.error.status, idem.error_body(item.error))
        _, replay = idem.claim(conn, item.keyed, "")
        if replay is not None:
            return Outcome(replay.status, replay.body, replayed=True)
        body = idem.error_body(item.error)
        if idem.stores_error(item.error):
            idem.answer(conn, item.keyed, item.error.status, body)
        else:
            raise item.error  # not the key's answer: the savepoint drops the reservation
        return Outcome(item.error.status, body)


def item_digest(item: dict[str, Any]) -> str:
    """A batch item's body for its key: the item without the key, in a canonical form."""
    text = json.dumps({k: v for k, v in item.items() if k != "idempotencyKey"}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(b"POST batch item\n" + text.encode()).hexdigest()


def batch_items(body: Any) -> list[Any]:
    """The batch body's items; anything else about the body is one 4xx for the whole request."""
    if not isinstance(body, dict):
        raise invalid('the body must be a JSON object {"runs": [...]}')
    unknown = sorted(set(body) - {"runs"})
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(unknown)}", {"fields": unknown})
    items = body.get("runs")
    if not isinstance(items, list) or not items:
        raise invalid('"runs" must be a non-empty array of starts', {"field": "runs"})
    if len(items) > MAX_BATCH:
        raise ServiceError(413, "batch_too_large", f"a batch holds at most {MAX_BATCH} runs, this one has {len(items)}",
                           {"limit": MAX_BATCH, "count": len(items)})
    return items


def batch_item(item: Any) -> dict[str, Any]:
    """One item, checked alone (its errors are its own answer)."""
    if not isinstance(item, dict):
        raise invalid("each item must be a JSON object {workflowId, version?, input?, idempotencyKey?, correlationId?, tags?}")
    unknown = sorted(set(item) - BATCH_ITEM_FIELDS)
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(unknown)}", {"fields": unknown})
    key = item.get("idempotencyKey")
    if key is not None:
        if not isinstance(key, str):
            raise ServiceError(400, "invalid_idempotency_key", "idempotencyKey must be a string of 1-255 characters")
        idem.check_key(key)
    check_ids(item.get("workflowId"), item.get("version"))
    admission.run_meta(item.get("correlationId"), item.get("tags"))
    return item

