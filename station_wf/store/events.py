"""The run event log as readers see it, and the ONE event shape every reader hands on.

`event_from_row` is the shape the API's event list, both SSE streams and the in-process hub share;
views that show less project it (`event_view`), they never build an event of their own. The writes
(`append_event`) stay with the transition code in `store/runs.py`.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from station_wf.store.db import Readers
from station_wf.store.jsontext import loads

_EVENTS = """SELECT e.id, e.run_id, e.seq, e.type, e.step_id, e.payload, e.actor, e.created_at,
                    r.workflow_id, r.status AS run_status
             FROM workflow_run_events e JOIN workflow_runs r ON r.run_id = e.run_id"""

STREAM_FIELDS = ("runId", "seq", "type", "stepId", "payload", "actor", "time")
"""What an SSE client receives of an event."""
LIST_FIELDS = STREAM_FIELDS[1:]
"""What `GET /workflow-runs/{id}/events` lists of an event (the run is in the URL)."""


def event_from_row(row: sqlite3.Row) -> dict[str, Any]:
    """The one event shape: the event, its run's workflow and the run's status now (for filters)."""
    return {
        "id": row["id"], "runId": row["run_id"], "seq": row["seq"], "type": row["type"], "stepId": row["step_id"],
        "payload": loads(row["payload"]), "actor": row["actor"], "time": row["created_at"],
        "workflowId": row["workflow_id"], "runStatus": row["run_status"],
    }


def event_view(event: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """A projection of the one shape (`STREAM_FIELDS`, `LIST_FIELDS`)."""
    return {k: event[k] for k in fields if k in event}


async def last_event_id(readers: Readers) -> int:
    """The newest event's id (0 for an empty log): where a live fan-out starts."""
    row = await readers.fetchone("SELECT COALESCE(MAX(id), 0) AS id FROM workflow_run_events")
    return int(row["id"]) if row else 0


async def events_after(readers: Readers, after_id: int, limit: int, until_id: int | None = None) -> list[sqlite3.Row]:
    """Every run's events with `after_id < id [<= until_id]`, oldest first: the hub's and the global stream's page."""
    if until_id is None:
        return await readers.fetchall(_EVENTS + " WHERE e.id > ? ORDER BY e.id LIMIT ?", (after_id, limit))
    return await readers.fetchall(_EVENTS + " WHERE e.id > ? AND e.id <= ? ORDER BY e.id LIMIT ?", (after_id, until_id, limit))


async def run_events(readers: Readers, run_id: str, after_seq: int, limit: int) -> list[sqlite3.Row]:
    """One run's events after `after_seq`, in order: the event list's page and the run stream's backlog."""
    return await readers.fetchall(_EVENTS + " WHERE e.run_id = ? AND e.seq > ? ORDER BY e.seq LIMIT ?", (run_id, after_seq, limit))
