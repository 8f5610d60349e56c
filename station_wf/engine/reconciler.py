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

import asyncio
import json
import logging
import time
from datetime import UTC, datetime, timedelta

from station_wf.bus.jetstream import TASK_SUBJECTS, TASKS_STREAM, Bus
from station_wf.engine.identity import run_task_subject, step_task_subject
from station_wf.engine.worker import TaskWorker
from station_wf.store.db import SqliteReaders

log = logging.getLogger(__name__)


def _iso_ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Reconciler:
    def __init__(self, readers: SqliteReaders, bus: Bus, worker: TaskWorker, *, interval: float = 5.0, grace: float | None = None) -> None:
        self.readers = readers
        self.bus = bus
        self.worker = worker
        self.interval = interval
        self.grace = grace if grace is not None else max(2 * interval, 2.0)
        self.republished = 0
        self.last_pass: float | None = None

    async def run(self) -> None:
        while True:
            try:
                await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS may be down; try again next period
                log.warning("reconciler: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self.interval)

    async def reconcile_once(self, grace: float | None = None) -> int:
        await self.bus.ensure_topology()
        cutoff = _iso_ago(self.grace if grace is None else grace)
        queued = {r["subject"] for r in await self.readers.fetchall("SELECT DISTINCT subject FROM outbox")}
        candidates: list[tuple[str, str, dict, dict]] = []
        for r in await self.readers.fetchall(
            """SELECT s.run_id, s.step_id, s.attempt, s.idempotency_key, r.traceparent
               FROM workflow_run_steps s JOIN workflow_runs r ON r.run_id = s.run_id
               WHERE s.status IN ('PENDING', 'RUNNING') AND r.status IN ('RUNNING', 'WAITING_APPROVAL', 'WAITING_SIGNAL')
                 AND s.created_at < ?
                 AND NOT (s.status = 'RUNNING' AND s.state_type IN ('parallel', 'foreach', 'try', 'sleep'))
                 AND NOT EXISTS (SELECT 1 FROM timers t WHERE t.run_id = s.run_id AND t.step_id = s.step_id
                                 AND t.fired_at IS NULL AND t.kind != 'step_timeout')""",
            (cutoff,),
        ):
            if (r["run_id"], r["step_id"], r["attempt"]) in self.worker.inflight:
                continue
            headers = {"idempotency-key": r["idempotency_key"]}
            if r["traceparent"]:
                headers["traceparent"] = r["traceparent"]
            candidates.append((
                step_task_subject(r["run_id"], r["step_id"]), f"step:{r['idempotency_key']}",
                {"runId": r["run_id"], "stepId": r["step_id"], "attempt": r["attempt"]}, headers,
            ))
        for r in await self.readers.fetchall(
            "SELECT run_id, traceparent FROM workflow_runs WHERE status = 'PENDING' AND created_at < ?", (cutoff,)
        ):
            headers = {"traceparent": r["traceparent"]} if r["traceparent"] else {}
            candidates.append((run_task_subject(r["run_id"]), f"run:{r['run_id']}:start", {"runId": r["run_id"]}, headers))
        count = 0
        candidates = [c for c in candidates if c[0] not in queued]
        live = await self._live_subjects() if candidates else set()
        for subject, msg_id, payload, headers in candidates:
            if subject in live if live is not None else await self.bus.task_is_live(subject):
                continue
            body = json.dumps(payload).encode()
            ack = await self.bus.publish(subject, body, msg_id, headers)
            if getattr(ack, "duplicate", False):
                # The broker remembers the id but not the message (lost after it was stored):
                # publish a copy under a fresh id; the worker's status check keeps it harmless.
                await self.bus.publish(subject, body, f"{msg_id}:r{time.time_ns()}", headers)
            count += 1
        if count:
            log.warning("reconciler: re-published %d lost task(s)", count)
        self.republished += count
        self.last_pass = time.monotonic()
        return count

    async def _live_subjects(self) -> set[str] | None:
        """Subjects with a task still in the work queue, in one request; None if the server left some out."""
        assert self.bus.js is not None
        info = await self.bus.js.stream_info(TASKS_STREAM, subjects_filter=TASK_SUBJECTS[0])
        subjects = info.state.subjects or {}
        if info.state.messages and sum(subjects.values()) < info.state.messages:
            return None  # a truncated answer: ask per subject this time
        return set(subjects)
