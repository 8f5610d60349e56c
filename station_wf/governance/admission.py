"""Admission: the one function every run start passes (API, batch, schedules, and the lead's rerun
and child runs through `engine/runs.insert_new_run`), and the one call when a run ends.

`admit` records the run's correlation id and tags, then decides in the start transaction whether
the run may go now (it takes a slot) or waits (queued, in order, with no run task). `release`, from
the terminal branch of `RunUnit.apply`, frees the slot and starts the next waiting runs in that SAME
transaction. Rate limits are `check_start_rate` (API starts only: a schedule is not a caller).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from station_wf.dsl import concurrency
from station_wf.errors import invalid
from station_wf.governance import policies, rates
from station_wf.governance.settings import GOVERNANCE
from station_wf.principals import Principal
from station_wf.store import governance_runs, governance_slots

MAX_CORRELATION_ID = 256
MAX_TAGS = 32
MAX_TAG_TEXT = 128


@dataclass(frozen=True)
class RunMeta:
    """What a start adds to the run for finding it later (OKRA's WorkflowInput), and who asks
    (for the policies; not stored)."""
    correlation_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    principal: Principal | None = None

    @property
    def empty(self) -> bool:
        return self.correlation_id is None and not self.tags


def run_meta(correlation_id: Any, tags: Any, where: str = "", principal: Principal | None = None) -> RunMeta:
    """The start body's `correlationId` and `tags`, checked (400 naming the field)."""
    if correlation_id is not None and (not isinstance(correlation_id, str) or not correlation_id.strip()
                                       or len(correlation_id) > MAX_CORRELATION_ID):
        raise invalid(f"{where}correlationId must be a non-empty string of at most {MAX_CORRELATION_ID} characters",
                      {"field": "correlationId"})
    if tags is None:
        tags = {}
    if not isinstance(tags, dict) or len(tags) > MAX_TAGS:
        raise invalid(f"{where}tags must be an object of at most {MAX_TAGS} string values", {"field": "tags"})
    for name, value in tags.items():
        if not isinstance(value, str) or not name.strip() or len(name) > MAX_TAG_TEXT or len(value) > MAX_TAG_TEXT \
                or ":" in name:
            raise invalid(f"{where}tags.{name[:40]}: names and values are strings of 1-{MAX_TAG_TEXT} characters"
                          " (a name without ':')", {"field": f"tags.{name[:40]}"})
    return RunMeta(correlation_id, dict(tags), principal)


def admit(conn: sqlite3.Connection, run_id: str, workflow_id: str, defn: dict[str, Any], run_input: Any,
          meta: RunMeta | None = None, child: bool = False) -> bool:
    """In the start transaction, after the run's row: True when the run may start now.

    A child run (`workflow.run`) counts toward the overall maximum but never waits for it: its parent
    holds a slot while it waits for the child, so parents filling the maximum would otherwise wait
    for children that wait for them. (A child under its own workflow's per-key limit still waits.)"""
    if meta is not None and not meta.empty:
        governance_runs.set_meta(conn, run_id, meta.correlation_id, meta.tags)
    limit = concurrency.of_definition(defn)
    overall = GOVERNANCE.max_concurrent_runs
    if limit is None and overall <= 0:
        return True  # nothing limits this run: no row, no read
    key = limit.render_key(run_input) if limit is not None else ""
    ok = True
    if limit is not None:
        ok = (governance_slots.running_for_key(conn, workflow_id, key) < limit.limit
              and not governance_slots.waiting_for_key(conn, workflow_id, key))
    if ok and overall > 0 and not child:
        ok = governance_slots.running_overall(conn) < overall
    governance_slots.hold(conn, run_id, workflow_id, key, limit.limit if limit is not None else None, queued=not ok)
    return ok


def readmit(conn: sqlite3.Connection, run_id: str, workflow_id: str, defn: dict[str, Any], run_input: Any) -> str | None:
    """A redrive makes an ended run active again: it takes a slot now (its row back) or is refused, with
    the reason; it never queues (a queued run is a PENDING one, and this run has already started)."""
    limit = concurrency.of_definition(defn)
    overall = GOVERNANCE.max_concurrent_runs
    if limit is None and overall <= 0:
        return None
    key = limit.render_key(run_input) if limit is not None else ""
    if limit is not None and (governance_slots.running_for_key(conn, workflow_id, key) >= limit.limit
                              or governance_slots.waiting_for_key(conn, workflow_id, key)):
        return f"its concurrency limit is full ({limit.limit} active for key {key!r}): redrive it when a slot frees"
    if overall > 0 and governance_slots.running_overall(conn) >= overall:
        return f"STATION_MAX_CONCURRENT_RUNS={overall} runs are active: redrive it when one ends"
    governance_slots.hold(conn, run_id, workflow_id, key, limit.limit if limit is not None else None, queued=False)
    return None


def waiting(conn: sqlite3.Connection, run_id: str, defn: dict[str, Any]) -> bool:
    """Is the run queued (its start must wait)? No read when nothing could have queued it."""
    if concurrency.of_definition(defn) is None and GOVERNANCE.max_concurrent_runs <= 0:
        return False
    return governance_slots.is_queued(conn, run_id)


def may_start(conn: sqlite3.Connection, run_id: str) -> bool:
    """A run task arrived for a PENDING run: False while the run waits for a slot (a resume or the
    reconciler must not start it ahead of its queue)."""
    return not governance_slots.is_queued(conn, run_id)


def release(conn: sqlite3.Connection, run_id: str) -> None:
    """The run ended (the terminal branch of `RunUnit.apply`): its slot goes to the next waiting runs."""
    governance_slots.release(conn, run_id, GOVERNANCE.max_concurrent_runs)


def check_start(conn: sqlite3.Connection, workflow_id: str, version: int, run_input: Any, meta: RunMeta | None) -> None:
    """A start asked for by someone (the API; the lead's rerun and child starts): the policies, then
    the rate limit (a refused start counts nothing). Raises PolicyDenied or a 429 ServiceError."""
    m = meta or RunMeta()
    policies.check_start(conn, m.principal, workflow_id, version, run_input, m.correlation_id, m.tags)
    rates.hit(conn, f"start:{workflow_id}", GOVERNANCE.run_rate, f"starts of {workflow_id!r}")


def child_refusal(conn: sqlite3.Connection, parent_workflow: str, workflow_id: str, version: int,
                  run_input: Any) -> str | None:
    """A workflow starting a workflow (`workflow.run`, continue-as-new): the policies, as for any start,
    with the principal `workflow:<parent id>` (role `system`). The refusal is audited here, in the
    parent's transaction (its step fails with the message); None when the start may go."""
    principal = Principal(f"workflow:{parent_workflow}", (), ("system",))
    try:
        policies.check_start(conn, principal, workflow_id, version, run_input, rate=False)
    except policies.PolicyDenied as denied:
        policies.record(conn, denied.denial)
        return denied.message
    return None


def check_signal_rate(conn: sqlite3.Connection, workflow_id: str) -> None:
    rates.hit(conn, f"signal:{workflow_id}", GOVERNANCE.signal_rate, f"signals to runs of {workflow_id!r}")
