"""The task worker: consumes JetStream tasks, runs executors, commits transitions, then acks.

Order per task (invariant 3): decide and record in one transaction -> execute (heartbeating with
`in_progress()`) -> commit the outcome and the next tasks in one transaction -> ack. A crash before
the ack redelivers the task; the recorded step status tells whether there is anything left to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg

from station_wf.bus.jetstream import TASKS_STREAM, WORKER_CONSUMER, Bus
from station_wf.engine import interpreter as ip
from station_wf.engine.commit import commit_transition
from station_wf.executors.base import ExecutorRegistry, StepCall, StepError, StepResult
from station_wf.store import runs as rs
from station_wf.store.db import SqliteWriter
from station_wf.store.definitions import DefinitionCache
from station_wf.telemetry import classify_error, step_duration_seconds, step_log, step_spans

log = logging.getLogger(__name__)

FETCH_BATCH = 64
PULL_EXPIRES_S = 2.0


@dataclass(frozen=True)
class _Skip:
    reason: str


@dataclass(frozen=True)
class _Committed:
    tasks: int


@dataclass(frozen=True)
class _Run:
    call: StepCall
    attrs: dict[str, Any]


class TaskWorker:
    """Pulls tasks with bounded concurrency; per-task logic is in the `_tx_*` transaction functions."""

    def __init__(
        self,
        writer: SqliteWriter,
        bus: Bus,
        registry: ExecutorRegistry,
        definitions: DefinitionCache,
        on_commit: Callable[[], None],
        *,
        concurrency: int = 256,
        ack_wait: float = 30.0,
    ) -> None:
        self.writer = writer
        self.bus = bus
        self.registry = registry
        self.definitions = definitions
        self.on_commit = on_commit
        self.concurrency = concurrency
        self.heartbeat_s = max(ack_wait / 3, 0.5)
        self.inflight: set[tuple[str, str, int]] = set()
        self._executions: dict[tuple[str, str, int], asyncio.Task] = {}
        self.subscribed = False
        self.executed = 0
        self._active = 0
        self._slots = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()

    # -- loop ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Pull loop: one lingering pull request at a time, each message dispatched the moment it arrives.

        nats-py's `fetch(n)` waits for the whole batch (or its timeout) before returning, which would
        add up to the timeout to a step's latency at light load; this loop does not.
        """
        while not self._stopping.is_set():
            try:
                async with self._slots:
                    await self._slots.wait_for(lambda: self._active < self.concurrency or self._stopping.is_set())
                if self._stopping.is_set():
                    break
                await self._pull(min(FETCH_BATCH, self.concurrency - self._active))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - broker trouble: rebuild topology, then pull again
                self.subscribed = False
                log.warning("worker: pull failed (%s: %s); re-checking streams", type(exc).__name__, exc)
                await asyncio.sleep(0.5)
                with contextlib.suppress(Exception):
                    await self.bus.ensure_topology()
        self.subscribed = False

    async def _pull(self, batch: int) -> None:
        nc = self.bus.nc
        assert nc is not None
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        try:
            request = {"batch": batch, "expires": int(PULL_EXPIRES_S * 1e9)}
            await nc.publish(self.bus.pull_subject, json.dumps(request).encode(), reply=inbox)
            if self.bus.js is not None and not self.subscribed:
                await self.bus.js.consumer_info(TASKS_STREAM, WORKER_CONSUMER)  # raises if the consumer is gone
                self.subscribed = True
            deadline = time.monotonic() + PULL_EXPIRES_S + 1.0
            got = 0
            while got < batch and not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                try:
                    msg = await sub.next_msg(timeout=remaining)
                except TimeoutError:
                    return
                status = msg.headers.get("Status") if msg.headers else None
                if status is None:
                    self.subscribed = True
                    got += 1
                    self._spawn(msg)
                elif status in ("404", "408", "100"):  # no messages / request expired / heartbeat
                    if status != "100":
                        self.subscribed = True
                        return
                else:
                    raise RuntimeError(f"pull request answered {status} {msg.headers.get('Description', '')}")
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _spawn(self, msg: Msg) -> None:
        self._active += 1
        task = asyncio.create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._active -= 1

        async def notify() -> None:
            async with self._slots:
                self._slots.notify_all()

        if not self._stopping.is_set():
            asyncio.get_running_loop().create_task(notify())

    async def stop(self, grace: float) -> None:
        """Stop fetching; let in-flight steps finish within `grace`, else leave them unacked for redelivery."""
        self._stopping.set()
        async with self._slots:
            self._slots.notify_all()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("worker: %d in-flight task(s) left unacked for redelivery", len(pending))
                await asyncio.wait(pending, timeout=5)

    def cancel_run(self, run_id: str) -> int:
        """Cancel this run's executor calls in flight (closing their connections); their results are dropped."""
        cancelled = 0
        for (rid, _, _), task in list(self._executions.items()):
            if rid == run_id and not task.done():
                task.cancel()
                cancelled += 1
        return cancelled

    # -- one task -----------------------------------------------------------------------------
    async def _handle(self, msg: Msg) -> None:
        try:
            data = json.loads(msg.data)
            if msg.subject.startswith("wf.task.step."):
                await self._handle_step(msg, data["runId"], data["stepId"], int(data["attempt"]))
            elif msg.subject.startswith("wf.task.run."):
                tasks = await self.writer.run(lambda c: self._tx_start_run(c, data["runId"]))
                self._after_commit(tasks)
                await msg.ack()
            else:
                log.warning("worker: dropping task on unknown subject %s", msg.subject)
                await msg.ack()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker: task %s failed; will be redelivered", msg.subject)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1)

    def _after_commit(self, tasks: int) -> None:
        """Every commit appends events, and most enqueue tasks: wake the relays now, not at their next poll."""
        self.on_commit()

    async def _handle_step(self, msg: Msg, run_id: str, step: str, attempt: int) -> None:
        key = (run_id, step, attempt)
        if key in self.inflight:  # a duplicate of work this process is doing right now
            await msg.ack()
            return
        self.inflight.add(key)
        try:
            begun = await self.writer.run(lambda c: self._tx_begin_step(c, run_id, step, attempt))
            if isinstance(begun, _Skip):
                log.debug("worker: skip %s/%s#%d: %s", run_id, step, attempt, begun.reason)
                await msg.ack()
                return
            if isinstance(begun, _Committed):
                self._after_commit(begun.tasks)
                await msg.ack()
                return
            call = begun.call
            traceparent = (msg.headers or {}).get("traceparent") or call.traceparent
            with step_spans(traceparent, begun.attrs) as span:
                started = time.monotonic()
                output, error, metadata = await self._execute(msg, call)  # the executor task inherits the span
                elapsed = time.monotonic() - started
                tasks, will_retry = await self.writer.run(
                    lambda c: self._tx_finish_step(c, run_id, step, attempt, output, error, metadata))
                kind = (error or {}).get("type")
                status = ("succeeded" if error is None else "timed_out" if kind == "timeout"
                          else "cancelled" if kind == "cancelled" else "failed")
                error_type = classify_error(error, attempt=attempt, will_retry=will_retry)
                span.set_status(status, error_type, (error or {}).get("message"))
            step_duration_seconds.observe(elapsed, executor=call.action)
            step_log(log, run_id=run_id, step_id=step, attempt=attempt, executor=call.action,
                     duration_ms=elapsed * 1000, status=status, error_type=error_type)
            self._after_commit(tasks)
            await msg.ack()
        finally:
            self.inflight.discard(key)

    async def _execute(self, msg: Msg, call: StepCall) -> tuple[Any, dict[str, Any] | None, dict[str, Any] | None]:
        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(self.heartbeat_s)
                with contextlib.suppress(Exception):
                    await msg.in_progress()

        beat = asyncio.create_task(heartbeat())
        started = time.monotonic()
        key = (call.run_id, call.step_id, call.attempt)
        try:
            executor = self.registry.get(call.action)
            execution = asyncio.create_task(executor.execute(call))
            self._executions[key] = execution
            try:
                output = await asyncio.wait_for(execution, call.timeout_seconds)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the worker itself is stopping: leave the task unacked
                return None, {"type": "cancelled", "message": "the run was cancelled during the call"}, None
            if isinstance(output, StepResult):
                return output.output, None, output.metadata
            return output, None, None
        except StepError as exc:
            return None, exc.to_dict(), exc.metadata or None
        except TimeoutError:
            return None, {"type": "timeout", "message": f"step timed out after {call.timeout_seconds}s"}, None
        except Exception as exc:  # noqa: BLE001 - an executor bug is a failed attempt, not a dead worker
            log.exception("executor %s raised", call.action)
            return None, {"type": "executor_error", "message": f"{type(exc).__name__}: {exc}"}, None
        finally:
            beat.cancel()
            self._executions.pop(key, None)
            self.executed += 1
            log.debug("step %s/%s#%d took %.1f ms", call.run_id, call.step_id, call.attempt, (time.monotonic() - started) * 1000)

    # -- transactions (run on the writer thread: no awaits, no network) ------------------------
    def _tx_start_run(self, conn: sqlite3.Connection, run_id: str) -> int:
        run = rs.load_run(conn, run_id)
        if run is None or run.status != ip.PENDING:
            return 0
        defn = self.definitions.get(conn, run.workflow_id, run.workflow_version)
        return commit_transition(conn, self.definitions, run, ip.start_run(defn, rs.run_state(conn, run)))

    def _tx_begin_step(self, conn: sqlite3.Connection, run_id: str, step: str, attempt: int) -> _Skip | _Committed | _Run:
        run = rs.load_run(conn, run_id)
        if run is None:
            return _Skip("unknown run")
        if run.status not in ip.ACTIVE_RUN_STATUSES:
            return _Skip(f"run is {run.status}")  # paused runs get their tasks again on resume
        row = rs.load_step(conn, run_id, step, attempt)
        if row is None:
            return _Skip("unknown step attempt")
        if row["status"] not in ip.OPEN_STEP_STATUSES:
            return _Skip(f"step attempt is {row['status']}")
        defn = self.definitions.get(conn, run.workflow_id, run.workflow_version)
        view = rs.step_view(row)
        decided = ip.begin_step(defn, rs.run_state(conn, run), view)
        if decided is None:
            return _Skip(f"step attempt is already {row['status']}")
        if isinstance(decided, ip.Transition):
            return _Committed(commit_transition(conn, self.definitions, run, decided, view))
        rs.mark_running(conn, run, row, decided.action, decided.input)
        return _Run(StepCall(
            run_id=run_id, step_id=step, attempt=attempt, idempotency_key=row["idempotency_key"],
            state_name=row["state_name"], action=decided.action, input=decided.input,
            timeout_seconds=decided.timeout_seconds, traceparent=run.traceparent, context=run.context,
        ), {"workflow.id": run.workflow_id, "workflow.version": run.workflow_version, "run.id": run_id,
            "state.name": row["state_name"], "state.type": row["state_type"], "step.id": step, "attempt": attempt,
            "executor": decided.action})

    def _tx_finish_step(
        self, conn: sqlite3.Connection, run_id: str, step: str, attempt: int, output: Any, error: dict[str, Any] | None,
        metadata: dict[str, Any] | None = None,
    ) -> tuple[int, bool]:
        """Commit the outcome; returns (tasks enqueued, whether a failed attempt will be retried)."""
        run = rs.load_run(conn, run_id)
        if run is None or run.status in ip.TERMINAL_RUN_STATUSES:
            return 0, False
        row = rs.load_step(conn, run_id, step, attempt)
        if row is None or row["status"] != ip.RUNNING:  # closed meanwhile: compare-and-set, never a blind write
            return 0, False
        defn = self.definitions.get(conn, run.workflow_id, run.workflow_version)
        view = rs.step_view(row)
        state = rs.run_state(conn, run)
        if metadata:
            conn.execute("UPDATE workflow_run_steps SET metadata = ? WHERE id = ?", (rs.dumps(metadata), row["id"]))
        if error is not None:
            t = ip.step_failed(defn, state, view, error)
        else:
            t = ip.step_succeeded(defn, state, view, output)
        will_retry = any(e.type == "step.failed" and e.payload.get("willRetry") for e in t.events)
        return commit_transition(conn, self.definitions, run, t, view), will_retry
