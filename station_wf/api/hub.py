"""In-process fan-out of committed events to SSE subscribers.

Woken after every commit (never a fixed-interval poll): one read of the new rows of
`workflow_run_events`, then each subscriber whose filter matches gets them on its own bounded queue.
A subscriber that falls too far behind is dropped; its client reconnects with `Last-Event-ID`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from station_wf.store.db import SqliteReaders

log = logging.getLogger(__name__)

QUEUE_LIMIT = 10_000
BATCH = 1000


@dataclass(eq=False)  # identity-hashed: each connection is its own subscriber
class Subscriber:
    run_id: str | None = None
    workflow_id: str | None = None
    statuses: frozenset[str] | None = None
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    overflowed: bool = False

    def wants(self, event: dict[str, Any]) -> bool:
        if self.run_id is not None and event["runId"] != self.run_id:
            return False
        if self.workflow_id is not None and event["workflowId"] != self.workflow_id:
            return False
        return self.statuses is None or event["runStatus"] in self.statuses


def event_from_row(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"], "runId": row["run_id"], "seq": row["seq"], "type": row["type"], "stepId": row["step_id"],
        "payload": json.loads(row["payload"]), "actor": row["actor"], "time": row["created_at"],
        "workflowId": row["workflow_id"], "runStatus": row["run_status"],
    }


EVENT_QUERY = """SELECT e.id, e.run_id, e.seq, e.type, e.step_id, e.payload, e.actor, e.created_at,
                        r.workflow_id, r.status AS run_status
                 FROM workflow_run_events e JOIN workflow_runs r ON r.run_id = e.run_id"""


class EventHub:
    def __init__(self, readers: SqliteReaders) -> None:
        self.readers = readers
        self.subscribers: set[Subscriber] = set()
        self._by_run: dict[str, set[Subscriber]] = {}  # a run's stream sees only its run's events
        self._everywhere: set[Subscriber] = set()  # global streams (filtered by workflow/status)
        self._wake = asyncio.Event()
        self._cursor: int | None = None
        self.delivered = 0

    @property
    def cursor(self) -> int:
        """The last event id handed to subscribers: every later event reaches a subscriber's queue."""
        return self._cursor or 0

    def kick(self) -> None:
        self._wake.set()

    async def subscribe(self, sub: Subscriber) -> Subscriber:
        """Register before the caller reads its backlog, so nothing committed in between is missed
        (an event may arrive both ways; streams drop the copy by its id)."""
        if not self.subscribers or self._cursor is None:
            row = await self.readers.fetchone("SELECT COALESCE(MAX(id), 0) AS id FROM workflow_run_events")
            if not self.subscribers:
                self._cursor = row["id"] if row else 0
        self.subscribers.add(sub)
        if sub.run_id is not None:
            self._by_run.setdefault(sub.run_id, set()).add(sub)
        else:
            self._everywhere.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        self._everywhere.discard(sub)
        if sub.run_id is not None:
            subs = self._by_run.get(sub.run_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_run[sub.run_id]

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while await self._dispatch() == BATCH:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - try again at the next commit
                log.exception("event hub")

    async def _dispatch(self) -> int:
        if not self.subscribers or self._cursor is None:
            return 0  # nobody listens: no read at all (a new subscriber sets the cursor)
        rows = await self.readers.fetchall(EVENT_QUERY + " WHERE e.id > ? ORDER BY e.id LIMIT ?", (self._cursor, BATCH))
        for row in rows:
            targets = [*self._by_run.get(row["run_id"], ()), *self._everywhere]
            if not targets:
                continue  # nobody wants it: not even its payload is decoded
            event = event_from_row(row)
            for sub in targets:
                if sub.overflowed or not sub.wants(event):
                    continue
                try:
                    sub.queue.put_nowait(event)
                    self.delivered += 1
                except asyncio.QueueFull:
                    sub.overflowed = True
                    with contextlib.suppress(asyncio.QueueFull):
                        sub.queue.put_nowait(None)  # wakes the generator, which ends the stream
        if rows:
            self._cursor = rows[-1]["id"]
        return len(rows)
