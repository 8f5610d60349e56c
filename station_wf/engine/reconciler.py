"""The reconciler (invariant 8): JetStream may forget a task; SQLite knows which runs must progress.

Steps that wait on purpose have no task and are skipped: containers whose children run, sleeps, and
attempts held by a retry timer.

Every few seconds it lists open steps of running runs (and runs not yet started) that are older than
a grace period, skips those with live work here or a row still in the outbox, asks JetStream once per
pass which task subjects are still queued (one `stream_info` with a subjects filter, not one call per
step: review M8), and re-publishes the ones that are gone. Steps past their delivery budget are FAILED
and so never come back. Publishing uses the task's
deterministic `Nats-Msg-Id`, so a copy that was not lost after all is dropped by the broker or, at
worst, by the worker's step-status check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from station_wf.bus.jetstream import Bus
from station_wf.loop import Loop
from station_wf.protocol import Task, encode_task, run_task, step_task
from station_wf.store import outbox
from station_wf.store import runs as rs
from station_wf.store.db import Readers

log = logging.getLogger(__name__)


def _iso_ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Reconciler(Loop):
    """`is_inflight(task)` says whether this process is handling that task right now (the worker's
    set): such work is never re-published, however old its row."""

    name = "reconciler"

    def __init__(self, readers: Readers, bus: Bus, is_inflight: Callable[[Task], bool], *, interval: float = 5.0,
                 grace: float | None = None) -> None:
        super().__init__(interval, logger=log)
        self.readers = readers
        self.bus = bus
        self.is_inflight = is_inflight
        self.grace = grace if grace is not None else max(2 * interval, 2.0)

    async def run_once(self) -> int:
        return await self.reconcile_once()

    async def reconcile_once(self, grace: float | None = None) -> int:
        await self.bus.ensure_topology()
        cutoff = _iso_ago(self.grace if grace is None else grace)
        queued = await outbox.queued_subjects(self.readers)
        candidates = [step_task(r["run_id"], r["step_id"], r["attempt"], r["idempotency_key"], r["traceparent"])
                      for r in await rs.lost_task_candidates(self.readers, cutoff)]
        candidates = [t for t in candidates if not self.is_inflight(t)]
        candidates += [run_task(r["run_id"], r["traceparent"]) for r in await rs.unstarted_runs(self.readers, cutoff)]
        pairs = [(t, e) for t, e in ((t, encode_task(t)) for t in candidates) if e.subject not in queued]
        count = 0
        live = await self.bus.live_task_subjects() if pairs else set()
        for task, envelope in pairs:
            if envelope.subject in live if live is not None else await self.bus.task_is_live(envelope.subject):
                continue
            ack = await self.bus.publish(envelope.subject, envelope.body, envelope.msg_id, envelope.headers)
            if getattr(ack, "duplicate", False):
                # The broker remembers the id but not the message (lost after it was stored):
                # publish a copy under a fresh id; the worker's status check keeps it harmless.
                again = encode_task(task.again(f"r{time.time_ns()}"))
                await self.bus.publish(again.subject, again.body, again.msg_id, again.headers)
            count += 1
        if count:
            log.warning("reconciler: re-published %d lost task(s)", count)
        return count
