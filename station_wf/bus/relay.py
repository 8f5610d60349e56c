"""Relays from SQLite to JetStream: the outbox (tasks) and the event log (events).

Both read committed rows and publish with a deterministic `Nats-Msg-Id`, and only then forget the
rows (delete, or advance a cursor), so a crash anywhere publishes again and JetStream drops the copy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3

from station_wf.bus.jetstream import Bus
from station_wf.engine.identity import run_event_subject, step_event_subject
from station_wf.faults import crash_point
from station_wf.store.db import SqliteReaders, SqliteWriter

log = logging.getLogger(__name__)

BATCH = 500
IDLE_POLL_S = 1.0


class _Relay:
    """A loop woken by `kick()` (or a poll) that drains its source in batches."""

    name = "relay"

    def __init__(self, writer: SqliteWriter, readers: SqliteReaders, bus: Bus) -> None:
        self.writer = writer
        self.readers = readers
        self.bus = bus
        self._wake = asyncio.Event()
        self.published = 0

    def kick(self) -> None:
        self._wake.set()

    async def drain_once(self) -> int:
        raise NotImplementedError

    async def drain(self) -> int:
        total = 0
        while True:
            n = await self.drain_once()
            total += n
            if n < BATCH:
                return total

    async def idle(self) -> None:
        """Called when nothing woke the relay for a poll period: commit pending ride-alongs."""
        if self.writer.has_riders():
            await self.writer.run(lambda conn: None)

    async def run(self) -> None:
        backoff = 0.1
        while True:
            woken = True
            try:
                await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)
            except TimeoutError:
                woken = False
            self._wake.clear()
            try:
                if not woken:
                    await self.idle()
                await self.drain()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS down, stream gone: retry later, rows are safe
                log.warning("%s: publish failed (%s: %s); retrying in %.1fs", self.name, type(exc).__name__, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                self._wake.set()


class OutboxRelay(_Relay):
    """Publishes outbox rows (invariant 2) and deletes each only after JetStream acked it.

    Deletes ride along with the next group commit (no fsync of their own); until then the relay
    remembers what it published, and a crash before the delete only publishes a duplicate that
    `Nats-Msg-Id` drops. A row that failed to publish is picked up again by the periodic full sweep.
    """

    name = "outbox relay"

    def __init__(self, writer: SqliteWriter, readers: SqliteReaders, bus: Bus) -> None:
        super().__init__(writer, readers, bus)
        self._published_ids: set[int] = set()
        self._high_water = 0

    async def idle(self) -> None:
        await super().idle()
        self._high_water = 0  # the next drain sweeps the whole table

    async def drain_once(self) -> int:
        rows = await self.readers.fetchall(
            "SELECT id, subject, msg_id, payload, headers FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
            (self._high_water, BATCH),
        )
        rows = [r for r in rows if r["id"] not in self._published_ids]
        if not rows:
            return 0
        self._high_water = rows[-1]["id"]
        crash_point("relay.before_publish")
        try:
            await self.bus.publish_batch(
                [(r["subject"], r["payload"].encode(), r["msg_id"], json.loads(r["headers"])) for r in rows])
        except Exception:
            self._high_water = rows[0]["id"] - 1
            raise
        done = [r["id"] for r in rows]
        self._published_ids.update(done)

        def delete(conn: sqlite3.Connection, ids: list[int] = done) -> None:
            conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
            self._published_ids.difference_update(ids)
        self.writer.ride_along("outbox-delete+", delete)
        self.published += len(done)
        return len(rows)


class EventRelay(_Relay):
    """Publishes the event log to WORKFLOW_EVENTS in order, remembering a cursor in SQLite."""

    name = "event relay"

    def __init__(self, writer: SqliteWriter, readers: SqliteReaders, bus: Bus) -> None:
        super().__init__(writer, readers, bus)
        self._cursor: int | None = None

    @staticmethod
    def _message(r: sqlite3.Row) -> tuple[str, bytes, str, dict[str, str]]:
        # The payload is already JSON text in SQLite: splice it in rather than parse and re-encode it.
        body = (f'{{"runId":{json.dumps(r["run_id"])},"seq":{r["seq"]},"type":{json.dumps(r["type"])},'
                f'"stepId":{json.dumps(r["step_id"])},"payload":{r["payload"]},"actor":{json.dumps(r["actor"])},'
                f'"time":{json.dumps(r["created_at"])}}}')
        subject = step_event_subject(r["run_id"], r["step_id"]) if r["step_id"] else run_event_subject(r["run_id"])
        return subject, body.encode(), f"evt:{r['run_id']}:{r['seq']}", {}

    async def drain_once(self) -> int:
        if self._cursor is None:
            row = await self.readers.fetchone("SELECT position FROM relay_cursors WHERE name = 'events'")
            self._cursor = row["position"] if row else 0
        rows = await self.readers.fetchall(
            "SELECT id, run_id, seq, type, step_id, payload, actor, created_at FROM workflow_run_events"
            " WHERE id > ? ORDER BY id LIMIT ?",
            (self._cursor, BATCH),
        )
        if not rows:
            return 0
        # One connection, in order: the stream keeps each run's seq order.
        await self.bus.publish_batch([self._message(r) for r in rows])
        position = rows[-1]["id"]

        def advance(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO relay_cursors (name, position) VALUES ('events', ?)"
                " ON CONFLICT(name) DO UPDATE SET position = excluded.position",
                (position,),
            )
        self.writer.ride_along("event-cursor", advance)  # lost in a crash: events republished, deduplicated
        self._cursor = position
        self.published += len(rows)
        return len(rows)
