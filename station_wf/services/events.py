"""In-process fan-out of committed events to SSE subscribers, and the backlogs a stream replays first.

Woken after every commit (never a fixed-interval poll): one read of the new rows of
`workflow_run_events`, each row decoded and encoded ONCE (`LiveEvent`: its SSE frames are built on
first use and shared), then every subscriber whose filter matches gets that same object appended to
its buffer and its one waiting writer woken. Nothing runs per subscriber while nothing happens: one
hub-wide ticker appends the shared ping frame to idle buffers. A subscriber whose buffer outgrows
its bound (it reads slower than events commit) is cut off; its client reconnects with `Last-Event-ID`.
Events have the one shape of `store/events.py`; the frames are `sse_frames.py`'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from station_wf.loop import Loop
from station_wf.services.runs import TERMINAL_RUN_STATUSES
from station_wf.services.sse_frames import ping_frame, sse_frame
from station_wf.services.storable import dumps_safe
from station_wf.store import events as store
from station_wf.store.db import Readers
from station_wf.store.events import STREAM_FIELDS, event_from_row, event_view

log = logging.getLogger(__name__)

TERMINAL_EVENTS = frozenset(f"run.{status.lower()}" for status in TERMINAL_RUN_STATUSES)
"""The events that end a run (`run.completed` ... `run.timed_out`): a run's stream ends after one."""
QUEUE_LIMIT = 10_000
"""Events a subscriber may have waiting before it is cut off."""
BUFFER_BYTES = 8 << 20
"""Bytes of frames a subscriber may have waiting before it is cut off (the frames are shared between
subscribers, so this bounds what one slow reader can pin, not a copy per reader)."""
BATCH = 1000
BACKLOG_PAGE = 1000


def stream_view(event: dict[str, Any]) -> dict[str, Any]:
    """What an SSE client receives of an event (the one shape, without the hub's routing fields)."""
    return event_view(event, STREAM_FIELDS)


class LiveEvent:
    """One committed event as every subscriber shares it: decoded once, its JSON text encoded once,
    and each of its two frames (a run stream's `id: seq`, the global stream's `id: id`) built at most once."""

    __slots__ = ("event", "id", "seq", "terminal", "_data", "_run_frame", "_global_frame")

    def __init__(self, event: dict[str, Any]) -> None:
        self.event = event
        self.id: int = event["id"]
        self.seq: int = event["seq"]
        self.terminal = event["type"] in TERMINAL_EVENTS
        self._data: bytes | None = None
        self._run_frame: bytes | None = None
        self._global_frame: bytes | None = None

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = dumps_safe(stream_view(self.event)).encode()
        return self._data

    @property
    def run_frame(self) -> bytes:
        if self._run_frame is None:
            self._run_frame = sse_frame(self.event["type"], self.seq, self.data)
        return self._run_frame

    @property
    def global_frame(self) -> bytes:
        if self._global_frame is None:
            self._global_frame = sse_frame(self.event["type"], self.id, self.data)
        return self._global_frame


@dataclass(eq=False)  # identity-hashed: each connection is its own subscriber
class Subscriber:
    """A connection's filter and its buffer of shared `LiveEvent`s (and pings). Its one writer awaits
    `take()`; the hub's `push` appends and wakes it. Bounded: past the limits it is cut off."""

    run_id: str | None = None
    workflow_id: str | None = None
    statuses: frozenset[str] | None = None
    ping: float = 15.0  # seconds between keep-alive comments while idle (0: none)
    limit_events: int = QUEUE_LIMIT
    limit_bytes: int = BUFFER_BYTES
    pending: deque[LiveEvent | bytes] = field(default_factory=deque)
    pending_bytes: int = 0
    overflowed: bool = False
    closed: bool = False
    _waiter: asyncio.Future[None] | None = None

    def wants(self, event: dict[str, Any]) -> bool:
        if self.run_id is not None and event["runId"] != self.run_id:
            return False
        if self.workflow_id is not None and event["workflowId"] != self.workflow_id:
            return False
        return self.statuses is None or event["runStatus"] in self.statuses

    def wants_row(self, row: Any) -> bool:
        """`wants` on a stored row, before its payload is decoded (a filtered backlog skips most rows)."""
        if self.run_id is not None and row["run_id"] != self.run_id:
            return False
        if self.workflow_id is not None and row["workflow_id"] != self.workflow_id:
            return False
        return self.statuses is None or row["run_status"] in self.statuses

    def push(self, item: LiveEvent | bytes, size: int) -> None:
        """Append (the hub, on the loop); past a limit the subscriber is cut off and its buffer freed."""
        if self.overflowed or self.closed:
            return
        if len(self.pending) >= self.limit_events or self.pending_bytes + size > self.limit_bytes:
            self.overflowed = True
            self.pending.clear()
            self.pending_bytes = 0
        else:
            self.pending.append(item)
            self.pending_bytes += size
        self._wake()

    def close(self) -> None:
        """End the stream (the client left, or the daemon stops): its writer returns from `take()`."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self, max_bytes: int = 1 << 18) -> list[LiveEvent | bytes]:
        """What is waiting (up to about `max_bytes`), after waiting for something; [] once cut off or closed."""
        while not self.pending and not self.overflowed and not self.closed:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.overflowed or self.closed:
            return []
        items: list[LiveEvent | bytes] = []
        taken = 0
        while self.pending and taken < max_bytes:
            item = self.pending.popleft()
            taken += len(item) if isinstance(item, bytes) else len(item.data)
            items.append(item)
        self.pending_bytes = max(0, self.pending_bytes - taken)
        return items


class EventHub(Loop):
    """A woken-only loop (`interval=None`): each kick after a commit runs `_dispatch` until a page
    comes back short; the loop base owns the waiting, the error policy and the counters."""

    name = "event-hub"
    batch = BATCH

    def __init__(self, readers: Readers) -> None:
        super().__init__(None)
        self.readers = readers
        self.subscribers: set[Subscriber] = set()
        self._by_run: dict[str, set[Subscriber]] = {}  # a run's stream sees only its run's events
        self._everywhere: set[Subscriber] = set()  # global streams (filtered by workflow/status)
        self._cursor: int | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._ping_every = 15.0

    @property
    def cursor(self) -> int:
        """The last event id handed to subscribers: every later event reaches a subscriber's buffer."""
        return self._cursor or 0

    async def subscribe(self, sub: Subscriber) -> Subscriber:
        """Register before the caller reads the rest of its backlog, so nothing committed in between is
        missed (an event may arrive both ways; streams drop the copy by its id)."""
        if not self.subscribers or self._cursor is None:
            newest = await store.last_event_id(self.readers)
            if not self.subscribers:
                self._cursor = newest
        self.subscribers.add(sub)
        if sub.run_id is not None:
            self._by_run.setdefault(sub.run_id, set()).add(sub)
        else:
            self._everywhere.add(sub)
        if sub.ping > 0:
            self._ping_every = sub.ping
            if self._pinger is None or self._pinger.done():
                self._pinger = asyncio.create_task(self._pings(), name="sse-pings")
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        sub.close()
        self.subscribers.discard(sub)
        self._everywhere.discard(sub)
        if sub.run_id is not None:
            subs = self._by_run.get(sub.run_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_run[sub.run_id]

    def close(self) -> None:
        """End every stream now (daemon shutdown): writers finish their response instead of being cut."""
        for sub in list(self.subscribers):
            self.unsubscribe(sub)
        if self._pinger is not None:
            self._pinger.cancel()

    async def _pings(self) -> None:
        """One ticker for every subscriber: an idle buffer gets the shared ping comment; ends when none listen."""
        while self.subscribers:
            await asyncio.sleep(self._ping_every)
            frame = ping_frame()
            for sub in list(self.subscribers):
                if sub.ping > 0 and not sub.pending:
                    sub.push(frame, len(frame))

    async def run_backlog(self, run_id: str, after_seq: int) -> AsyncIterator[list[LiveEvent]]:
        """A run's events after `after_seq`, a page at a time (never the whole history in memory); the
        caller writes each page before the next is read, so a slow client slows the reading."""
        for _ in range(1 << 30):
            rows = await store.run_events(self.readers, run_id, after_seq, BACKLOG_PAGE)
            if rows:
                yield [LiveEvent(event_from_row(row)) for row in rows]
            if len(rows) < BACKLOG_PAGE:
                return
            after_seq = rows[-1]["seq"]

    async def global_backlog(self, after_id: int, sub: Subscriber, until_id: int | None = None
                             ) -> AsyncIterator[tuple[list[LiveEvent], int]]:
        """Every event after `after_id` (up to `until_id`) that `sub` wants, a page at a time, each with
        the last id it read (matched or not): the caller's cursor, so filtered-out rows are never re-read."""
        for _ in range(1 << 30):
            rows = await store.events_after(self.readers, after_id, BACKLOG_PAGE, until_id)
            if rows:
                after_id = rows[-1]["id"]
                yield [LiveEvent(event_from_row(row)) for row in rows if sub.wants_row(row)], after_id
            if len(rows) < BACKLOG_PAGE:
                return

    async def run_once(self) -> int:
        return await self._dispatch()

    async def _dispatch(self) -> int:
        if not self.subscribers or self._cursor is None:
            return 0  # nobody listens: no read at all (a new subscriber sets the cursor)
        rows = await store.events_after(self.readers, self._cursor, BATCH)
        for row in rows:
            runs = self._by_run.get(row["run_id"])
            if not runs and not self._everywhere:
                continue  # nobody wants it: not even its payload is decoded
            live = LiveEvent(event_from_row(row))
            size = len(live.data)
            for sub in (*runs, *self._everywhere) if runs else tuple(self._everywhere):
                if sub.run_id is None and not sub.wants(live.event):
                    continue
                sub.push(live, size)
        if rows:
            self._cursor = rows[-1]["id"]
        return len(rows)


__all__ = ["TERMINAL_EVENTS", "EventHub", "LiveEvent", "Subscriber", "stream_view"]
