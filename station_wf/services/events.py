"""In-process fan-out of committed events to SSE subscribers, and the backlogs a stream replays first.

Woken after every commit (never a fixed-interval poll): one read of the new rows of
`workflow_run_events`, then each subscriber whose filter matches gets them on its own bounded queue.
A subscriber that falls too far behind is dropped; its client reconnects with `Last-Event-ID`.
Events have the one shape of `store/events.py`. Not HTTP: `api/streams.py` turns them into SSE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from station_wf.loop import Loop
from station_wf.services.runs import TERMINAL_RUN_STATUSES
from station_wf.store import events as store
from station_wf.store.db import SqliteReaders
from station_wf.store.events import STREAM_FIELDS, event_from_row, event_view

log = logging.getLogger(__name__)

TERMINAL_EVENTS = frozenset(f"run.{status.lower()}" for status in TERMINAL_RUN_STATUSES)
"""The events that end a run (`run.completed` ... `run.timed_out`): a run's stream ends after one."""
QUEUE_LIMIT = 10_000
BATCH = 1000
BACKLOG_PAGE = 1000


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


def stream_view(event: dict[str, Any]) -> dict[str, Any]:
    """What an SSE client receives of an event (the one shape, without the hub's routing fields)."""
    return event_view(event, STREAM_FIELDS)


class EventHub(Loop):
    """A woken-only loop (`interval=None`): each kick after a commit runs `_dispatch` until a page
    comes back short; the loop base owns the waiting, the error policy and the counters."""

    name = "event-hub"
    batch = BATCH

    def __init__(self, readers: SqliteReaders) -> None:
        super().__init__(None)
        self.readers = readers
        self.subscribers: set[Subscriber] = set()
        self._by_run: dict[str, set[Subscriber]] = {}  # a run's stream sees only its run's events
        self._everywhere: set[Subscriber] = set()  # global streams (filtered by workflow/status)
        self._cursor: int | None = None

    @property
    def cursor(self) -> int:
        """The last event id handed to subscribers: every later event reaches a subscriber's queue."""
        return self._cursor or 0

    async def subscribe(self, sub: Subscriber) -> Subscriber:
        """Register before the caller reads its backlog, so nothing committed in between is missed
        (an event may arrive both ways; streams drop the copy by its id)."""
        if not self.subscribers or self._cursor is None:
            newest = await store.last_event_id(self.readers)
            if not self.subscribers:
                self._cursor = newest
        self.subscribers.add(sub)
        if sub.run_id is not None:
            self._by_run.setdefault(sub.run_id, set()).add(sub)
        else:
            self._everywhere.add(sub)
        return sub

    async def run_backlog(self, run_id: str, after_seq: int) -> AsyncIterator[dict[str, Any]]:
        """A run's events after `after_seq`, read a page at a time (never the whole history in memory)."""
        for _ in range(1 << 30):
            rows = await store.run_events(self.readers, run_id, after_seq, BACKLOG_PAGE)
            for row in rows:
                yield event_from_row(row)
            if len(rows) < BACKLOG_PAGE:
                return
            after_seq = rows[-1]["seq"]

    async def global_backlog(self, after_id: int, sub: Subscriber, until_id: int) -> AsyncIterator[dict[str, Any]]:
        """Every event after `after_id` up to `until_id` (the hub's cursor when the client subscribed), a
        page at a time: from there the live queue continues, so a resume has no gap however far behind."""
        for _ in range(1 << 30):
            rows = await store.events_after(self.readers, after_id, BACKLOG_PAGE, until_id)
            for row in rows:
                event = event_from_row(row)
                if sub.wants(event):
                    yield event
            if len(rows) < BACKLOG_PAGE:
                return
            after_id = rows[-1]["id"]

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        self._everywhere.discard(sub)
        if sub.run_id is not None:
            subs = self._by_run.get(sub.run_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_run[sub.run_id]

    async def run_once(self) -> int:
        return await self._dispatch()

    async def _dispatch(self) -> int:
        if not self.subscribers or self._cursor is None:
            return 0  # nobody listens: no read at all (a new subscriber sets the cursor)
        rows = await store.events_after(self.readers, self._cursor, BATCH)
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
                except asyncio.QueueFull:
                    sub.overflowed = True
                    with contextlib.suppress(asyncio.QueueFull):
                        sub.queue.put_nowait(None)  # wakes the generator, which ends the stream
        if rows:
            self._cursor = rows[-1]["id"]
        return len(rows)
