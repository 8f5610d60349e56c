"""The task worker: consumes JetStream tasks, runs executors, commits transitions, then acks.

Order per task (invariant 3): decide and record in one transaction -> execute (heartbeating with
`in_progress()`) -> record the executor's result -> decide what follows and commit it with the next
tasks -> ack. A crash before the ack redelivers the task; the recorded step status (and result) tells
what is left to do. The transactions themselves are in `step_tx.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg

from station_wf.bus.jetstream import Bus
from station_wf.core import interpreter as ip
from station_wf.core.limits import LIMITS
from station_wf.engine.step_tx import LOGGED_MARK, Committed, Skip, StepTransactions, Unknown, encode_result
from station_wf.executors.base import ExecutorRegistry, StepCall, StepError, StepResult
from station_wf.protocol import MalformedTask, Task, decode_task
from station_wf.store.db import Writer
from station_wf.store.definitions import DefinitionCache
from station_wf.telemetry import classify_error, step_duration_seconds, step_log, step_spans

log = logging.getLogger(__name__)

FETCH_BATCH = 64
NOT_OURS_DELAY_S = 30.0
CANCELLED_MEMORY_S = 300.0
AUDIT_ON_STOP_S = 3.0  # issue 20 review M3: recording the tool calls of a delivery given up on when stopping


class TaskWorker:
    """Pulls tasks with bounded concurrency; per-task logic is in the `StepTransactions` functions."""

    def __init__(
        self,
        writer: Writer,
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
        self.tx = StepTransactions(definitions)
        self.on_commit = on_commit
        self.concurrency = concurrency
        self.heartbeat_s = max(ack_wait / 3, 0.5)
        self.inflight: set[tuple[str, str, int]] = set()
        self._executions: dict[tuple[str, str, int], asyncio.Task] = {}
        self._cancelled: dict[str, float] = {}  # run id -> when its cancel committed (review L3)
        self.boot_seq: int | None = None  # the task stream's last sequence when this process started
        self._active = 0
        self._slots = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()

    @property
    def subscribed(self) -> bool:
        """Readiness: the worker pulls and its consumer answers."""
        return not self._stopping.is_set() and self.bus.consumer_ready

    def is_inflight(self, task: Task) -> bool:
        """Is this process handling `task` right now? (The reconciler leaves such work alone.)"""
        return task.work_key in self.inflight

    # -- loop ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Pull loop: one lingering pull request at a time (`Bus.pull`), each message dispatched the
        moment it arrives, never more in flight than `concurrency`."""
        while not self._stopping.is_set():
            try:
                if self.boot_seq is None and self.bus.js is not None:
                    self.boot_seq = await self.bus.task_stream_last_seq()
                async with self._slots:
                    await self._slots.wait_for(lambda: self._active < self.concurrency or self._stopping.is_set())
                if self._stopping.is_set():
                    break
                batch = min(FETCH_BATCH, self.concurrency - self._active)
                async with contextlib.aclosing(self.bus.pull(batch, self._stopping)) as messages:
                    async for msg in messages:
                        self._spawn(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - broker trouble: rebuild topology, then pull again
                self.bus.consumer_ready = False
                log.warning("worker: pull failed (%s: %s); re-checking streams", type(exc).__name__, exc)
                await asyncio.sleep(0.5)
                with contextlib.suppress(Exception):
                    await self.bus.ensure_topology()

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

    async def log_tool_call(self, call: StepCall, entry: dict[str, Any]) -> None:
        """An agent's tool call as it happens (review M3 of issue 20): its own small transaction, so a
        delivery killed later still leaves it; the step's record then skips it. Never fails the step."""
        row = dict(entry)
        entry[LOGGED_MARK] = True  # first: a cancel during the commit below must not make the record write it twice
        try:
            logged = await self.writer.run(lambda c: self.tx.log_tool_call(c, call.run_id, call.step_id,
                                                                           call.attempt, row))
        except Exception as exc:  # noqa: BLE001 - the record writes it instead
            entry.pop(LOGGED_MARK, None)
            log.warning("worker: tool call of %s/%s#%d not logged now: %s", call.run_id, call.step_id, call.attempt, exc)
            return
        if logged:
            self.on_commit()

    async def _audit_interrupted(self, executor: Any, call: StepCall) -> None:
        """The tool calls a delivery made before the worker's grace ran out are audited now (review M3 of
        issue 20): the redelivery runs the attempt again, and without this they would leave no trace."""
        calls = (_partial(executor, call) or {}).get("toolCalls")
        if not calls:
            return
        try:
            await asyncio.wait_for(self.writer.run(lambda c: self.tx.record_interrupted_tool_calls(
                c, call.run_id, call.step_id, call.attempt, calls)), AUDIT_ON_STOP_S)
            self.on_commit()
        except Exception as exc:  # noqa: BLE001 - stopping goes on: the attempt runs again anyway
            log.warning("worker: the tool calls of %s/%s#%d were not audited: %s", call.run_id, call.step_id,
                        call.attempt, exc)

    def cancel_run(self, run_id: str) -> int:
        """Cancel this run's executor calls in flight (closing their connections); their results are dropped.
        Called after the cancel committed; a call whose step began just before it is refused when it
        would start, so its effect never happens after the cancel."""
        now = time.monotonic()
        self._cancelled = {r: t for r, t in self._cancelled.items() if now - t < CANCELLED_MEMORY_S}
        self._cancelled[run_id] = now
        cancelled = 0
        for (rid, _, _), task in list(self._executions.items()):
            if rid == run_id and not task.done():
                task.cancel()
                cancelled += 1
        return cancelled

    # -- one task -----------------------------------------------------------------------------
    def _suspect(self, msg: Msg) -> bool:
        """Was this task queued before this process started? A predecessor may have died handling it,
        and JetStream's delivery count restarted with the consumer, so the count is kept in SQLite."""
        if self.boot_seq is None:
            return True
        try:
            return msg.metadata.sequence.stream <= self.boot_seq
        except Exception:  # noqa: BLE001 - not a JetStream message: count it, to be safe
            return True

    async def _handle(self, msg: Msg) -> None:
        try:
            task = decode_task(self.bus.ns.local(msg.subject), msg.data, msg.headers)
        except MalformedTask as exc:  # a malformed task can never succeed: drop it, loudly
            log.warning("worker: terminating malformed task on %s: %s", msg.subject, exc)
            with contextlib.suppress(Exception):
                await msg.term()
            return
        counted = False
        try:
            if self._suspect(msg):
                # Committed BEFORE deciding: a task that kills the process every time still ends.
                await self.writer.run(lambda c: self.tx.count_delivery(c, task, None))
                counted = True
            if task.kind == "step":
                await self._handle_step(msg, task, counted=counted)
            else:
                outcome = await self.writer.run(lambda c: self.tx.start_run(c, task.run_id))
                if isinstance(outcome, Unknown):
                    await self._not_ours(msg)
                    return
                self.on_commit()
                await msg.ack()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("worker: task %s failed; will be redelivered", msg.subject)
            cause = f"{type(exc).__name__}: {exc}"[:2000]
            with contextlib.suppress(Exception):
                await self.writer.run(lambda c: self.tx.count_delivery(c, task, cause, increment=not counted))
            with contextlib.suppress(Exception):
                await msg.nak(delay=1)

    async def _not_ours(self, msg: Msg) -> None:
        """A task for a run this database does not know: another deployment's, or a deleted run's. Never
        acked silently (review C2): given back a few times, then terminated with a warning."""
        try:
            delivered = msg.metadata.num_delivered
        except Exception:  # noqa: BLE001
            delivered = LIMITS.max_deliveries + 1
        if delivered > LIMITS.max_deliveries:
            log.warning("worker: terminating task %s: its run is not in this database (%d deliveries)", msg.subject, delivered)
            await msg.term()
        else:
            log.warning("worker: task %s names a run this database does not know; giving it back", msg.subject)
            await msg.nak(delay=NOT_OURS_DELAY_S)

    async def _handle_step(self, msg: Msg, task: Task, counted: bool = False) -> None:
        run_id, step, attempt = key = task.work_key
        if key in self.inflight:
            # A copy of work this process is doing right now: given back, not acked, so it is still
            # there if the original handler dies before committing (review L4).
            await msg.nak(delay=self.heartbeat_s)
            return
        self.inflight.add(key)
        try:
            begun = await self.writer.run(lambda c: self.tx.begin_step(c, run_id, step, attempt))
            if isinstance(begun, Unknown):
                await self._not_ours(msg)
                return
            if isinstance(begun, Skip):
                log.debug("worker: skip %s/%s#%d: %s", run_id, step, attempt, begun.reason)
                await (msg.nak(delay=begun.later) if begun.later is not None else msg.ack())
                return
            if isinstance(begun, Committed):
                self.on_commit()
                await msg.ack()
                return
            call = begun.call
            traceparent = task.traceparent or call.traceparent
            with step_spans(traceparent, begun.attrs) as span:
                started = time.monotonic()
                output, error, metadata = await self._execute(msg, call, begun.timeout_s)  # the executor task inherits the span
                elapsed = time.monotonic() - started
                result = encode_result(output, error)
                # The result is stored before, and apart from, the decision: both go to the writer back
                # to back (one group commit, each in its own savepoint), so a failing decision keeps the
                # record. A task already counted as suspect waits for the record first, so a crash while
                # deciding cannot lose it either.
                record = asyncio.ensure_future(self.writer.run(lambda c: self.tx.record(c, run_id, step, attempt, result, metadata)))
                if counted:
                    await record
                decide = asyncio.ensure_future(self.writer.run(lambda c: self.tx.decide(c, run_id, step, attempt)))
                try:
                    await record
                finally:
                    _, will_retry = await decide
                kind = (error or {}).get("type")
                status = ("succeeded" if error is None else "timed_out" if kind == "timeout"
                          else "cancelled" if kind == "cancelled" else "failed")
                error_type = classify_error(error, attempt=attempt, will_retry=will_retry)
                span.set_status(status, error_type, (error or {}).get("message"))
            step_duration_seconds.observe(elapsed, executor=call.action)
            step_log(log, run_id=run_id, step_id=step, attempt=attempt, executor=call.action,
                     duration_ms=elapsed * 1000, status=status, error_type=error_type)
            self.on_commit()  # every commit appends events and most enqueue tasks: wake the relays now
            await msg.ack()
        finally:
            self.inflight.discard(key)

    async def _execute(self, msg: Msg, call: StepCall, timeout_s: float | None = None,
                       ) -> tuple[Any, dict[str, Any] | None, dict[str, Any] | None]:
        """Run the executor until it returns, fails, or the attempt's deadline (`call.timeout_seconds`
        is what is left of the durable timeout, `timeout_s` the whole of it, for the message)."""
        if call.run_id in self._cancelled:
            return None, {"type": "cancelled", "message": "the run was cancelled before the call started"}, None
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
                    await self._audit_interrupted(executor, call)
                    raise  # the worker itself is stopping: leave the task unacked
                return None, {"type": "cancelled", "message": "the run was cancelled during the call"}, _partial(executor, call)
            if isinstance(output, StepResult):
                return output.output, None, output.metadata
            return output, None, None
        except StepError as exc:
            return None, exc.to_dict(), exc.metadata or None
        except TimeoutError:
            return None, ip.step_timeout_error(call.state_name, timeout_s or call.timeout_seconds or 0), \
                _partial(self.registry.get(call.action), call)
        except Exception as exc:  # noqa: BLE001 - an executor bug is a failed attempt, not a dead worker
            log.exception("executor %s raised", call.action)
            return None, {"type": "executor_error", "message": f"{type(exc).__name__}: {exc}"}, None
        finally:
            beat.cancel()
            self._executions.pop(key, None)
            log.debug("step %s/%s#%d took %.1f ms", call.run_id, call.step_id, call.attempt, (time.monotonic() - started) * 1000)


def _partial(executor: Any, call: StepCall) -> dict[str, Any] | None:
    """What an interrupted executor had done (issue 20: an agent's tool calls so far), for the record."""
    take = getattr(executor, "interrupted_metadata", None)
    return take(call) if callable(take) else None
