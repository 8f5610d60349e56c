"""Relays from SQLite to JetStream: the outbox (tasks) and the event log (events).

Both read committed rows and publish with a deterministic `Nats-Msg-Id`, and only then forget the
rows (delete, or advance a cursor), so a crash anywhere publishes again and JetStream drops the copy.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3

from station_wf.bus.jetstream import Bus
from station_wf.bus.wire import Wire
from station_wf.faults import crash_point
from station_wf.loop import Loop
from station_wf.protocol import encode_event, encode_event_stub, header_block
from station_wf.store import outbox, relay_rows
from station_wf.store.db import Readers, Writer
from station_wf.store.jsontext import loads
from station_wf.store.leases import FencedWriter

log = logging.getLogger(__name__)

BATCH = 500
EVENT_BATCH = 1000
IDLE_POLL_S = 1.0
EVENT_COALESCE_S = 0.02  # under load the event relay drains at most this often (bigger batches, fewer hops)


class _Relay(Loop):
    """A loop woken by `kick()` (after every commit) or a poll, draining its source in batches; a
    failed publish backs off (0.1 s doubling to 2 s) and the rows stay to be published again."""

    name = "relay"
    batch = BATCH

    def __init__(self, writer: Writer, readers: Readers, bus: Bus) -> None:
        super().__init__(IDLE_POLL_S, backoff=(0.1, 2.0), logger=log)
        self.writer = writer
        self.readers = readers
        self.bus = bus

    async def drain_once(self) -> int:
        raise NotImplementedError

    async def run_once(self) -> int:
        return await self.drain_once()

    async def drain(self) -> int:
        """Everything there is now (start-up and shutdown flush)."""
        total = 0
        while True:
            n = await self.drain_once()
            total += n
            if n < self.batch:
                return total

    async def idle(self) -> None:
        """Called when nothing woke the relay for a poll period: commit pending ride-alongs."""
        if self.writer.has_riders():
            await self.writer.run(lambda conn: None)


class RelayPublishError(RuntimeError):
    """Some rows of a batch got no PubAck of their own: they stay, and the relay backs off and retries."""


def _outbox_wire(r: sqlite3.Row) -> Wire:
    headers = r["headers"]
    return r["subject"], header_block(r["msg_id"], loads(headers) if headers and headers != "{}" else None), r["payload"].encode()


def _failures(rows: list[sqlite3.Row], outcomes: list[BaseException | None]) -> list[tuple[sqlite3.Row, BaseException]]:
    return [(r, o) for r, o in zip(rows, outcomes, strict=True) if o is not None]


class OutboxRelay(_Relay):
    """Publishes outbox rows (invariant 2) and deletes each only after its own PubAck.

    Deletes ride along with the next group commit (no fsync of their own); until then the relay
    remembers what it published, and a crash before the delete only publishes a duplicate that
    `Nats-Msg-Id` drops. A row that failed to publish (or whose delete was lost) is published again.
    """

    name = "outbox-relay"

    def __init__(self, writer: Writer, readers: Readers, bus: Bus) -> None:
        super().__init__(writer, readers, bus)
        self._published_ids: set[int] = set()
        self._high_water = 0

    async def idle(self) -> None:
        await super().idle()
        self._high_water = 0  # the next drain sweeps the whole table

    def _forget(self, ids: list[int]) -> None:
        """The delete of these rows was lost (its group rolled back): publish them again."""
        self._published_ids.difference_update(ids)
        self._high_water = 0

    def _delete(self, conn: sqlite3.Connection, ids: list[int]) -> None:
        outbox.delete(conn, ids)
        self._published_ids.difference_update(ids)

    async def drain_once(self) -> int:
        rows = await outbox.rows_after(self.readers, self._high_water, BATCH)
        rows = [r for r in rows if r["id"] not in self._published_ids]
        if not rows:
            return 0
        self._high_water = rows[-1]["id"]
        crash_point("relay.before_publish")
        outcomes = await self.bus.publish_wire([_outbox_wire(r) for r in rows])
        acked = [r["id"] for r, o in zip(rows, outcomes, strict=True) if o is None]
        if acked:
            self._published_ids.update(acked)
            self.writer.ride_along("outbox-delete+", functools.partial(self._delete, ids=acked),
                                   on_lost=functools.partial(self._forget, acked))
        failed = _failures(rows, outcomes)
        if failed:
            self._high_water = failed[0][0]["id"] - 1
            raise RelayPublishError(f"{len(failed)} of {len(rows)} task(s) got no PubAck, first: "
                                    f"{type(failed[0][1]).__name__}: {failed[0][1]}")
        return len(rows)


class EventRelay(_Relay):
    """Publishes the event log to WORKFLOW_EVENTS in order, remembering a cursor in SQLite.

    An event too big for the server's max_payload goes out as a stub (`truncated: true`, with its
    size) and the cursor moves on: one big step output never stops the stream for every other run.
    Readers fetch the full event from the API (`GET /workflow-runs/{id}/events`).

    One cursor row for the deployment: it runs on the lease holder only (the daemon hands it the
    lease's `FencedWriter`, so a cursor written under a stale token is not stored)."""

    name = "event-relay"
    batch = EVENT_BATCH

    def __init__(self, writer: Writer | FencedWriter, readers: Readers, bus: Bus,
                 coalesce_s: float = EVENT_COALESCE_S) -> None:
        super().__init__(writer, readers, bus)
        self._cursor: int | None = None
        self.truncated = 0
        self.coalesce_s = coalesce_s

    async def run(self, loops: int | None = None) -> None:
        self._cursor = None  # read it again: another replica may have moved it while we did not hold the lease
        await super().run(loops)

    async def run_once(self) -> int:
        # Off the critical path: a kick comes with every commit; waiting a few ms lets the commits of
        # that while share one read, one window of publishes and one flush, and leaves the core to
        # the writer and the worker. Events still go out in order, after their commit.
        if self.coalesce_s > 0:
            await asyncio.sleep(self.coalesce_s)
        return await self.drain_once()

    @staticmethod
    def _message(r: sqlite3.Row) -> Wire:
        subject, body, msg_id = encode_event(r)
        return subject, header_block(msg_id), body

    @staticmethod
    def _stub(r: sqlite3.Row, size: int) -> Wire:
        subject, body, msg_id = encode_event_stub(r, size)
        return subject, header_block(msg_id), body

    def _fitting(self, r: sqlite3.Row) -> Wire:
        message = self._message(r)
        if self.bus.fits_wire(message[1], message[2]):
            return message
        self.truncated += 1
        log.warning("event relay: event %s/%s (%s, %d bytes) is over NATS max_payload; publishing a stub",
                    r["run_id"], r["seq"], r["type"], len(message[2]))
        return self._stub(r, len(message[2]))

    async def drain_once(self) -> int:
        if self._cursor is None:
            self._cursor = await relay_rows.cursor(self.readers, "events")
        rows = await relay_rows.events_after(self.readers, self._cursor, self.batch)
        if not rows:
            return 0
        # One connection, in order: the stream keeps each run's seq order.
        outcomes = await self.bus.publish_wire([self._fitting(r) for r in rows])
        failed = _failures(rows, outcomes)
        done = rows if not failed else [r for r in rows if r["id"] < failed[0][0]["id"]]
        if done:
            position = done[-1]["id"]
            # Lost in a crash: events are republished and deduplicated by Nats-Msg-Id.
            self.writer.ride_along("event-cursor", functools.partial(relay_rows.set_cursor, name="events", position=position))
            self._cursor = position
        if failed:
            raise RelayPublishError(f"{len(failed)} of {len(rows)} event(s) got no PubAck, first: "
                                    f"{type(failed[0][1]).__name__}: {failed[0][1]}")
        return len(rows)
