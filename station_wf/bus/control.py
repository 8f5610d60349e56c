"""Cancels that reach the replica executing the step: a core-NATS control subject per deployment.

The API's replica commits the cancel, interrupts its own executions of the run (no round trip on a
single node), then publishes `{"op": "cancel", "runId": ...}` on `Namespace.control_subject`. Every
replica listens; on receipt it interrupts its in-flight executions of that run. The message is a
hint, never the truth: the receiver acts only when its database says the run is CANCELLED (a stale,
forged or early message cannot fail a live step), and a lost one only means the step runs to its end
and its result is discarded, as it always was.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from station_wf.bus.jetstream import Bus
from station_wf.core.model import CANCELLED
from station_wf.protocol import decode_control
from station_wf.store import run_reads
from station_wf.store.db import SqliteReaders

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 2.0


class ControlChannel:
    """`cancel(run_id)` for the API (local interrupt + broadcast); `start()` listens for the others'."""

    def __init__(self, bus: Bus, readers: SqliteReaders, cancel_local: Callable[[str], int]) -> None:
        self.bus = bus
        self.readers = readers
        self.cancel_local = cancel_local
        self.received = 0  # control messages acted on (a cancel confirmed by the database)
        self._sends: set[asyncio.Task] = set()

    async def start(self) -> None:
        await self.bus.subscribe_control(self._on_message)

    def cancel(self, run_id: str) -> int:
        """Called after the cancel committed: interrupt here now, and tell the other replicas."""
        cancelled = self.cancel_local(run_id)
        task = asyncio.get_running_loop().create_task(self._announce(run_id))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)
        return cancelled

    async def _announce(self, run_id: str) -> None:
        try:
            await asyncio.wait_for(self.bus.publish_control("cancel", run_id), PUBLISH_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - a lost hint: the steps elsewhere finish and are discarded
            log.warning("control: could not announce the cancel of %s: %s: %s", run_id, type(exc).__name__, exc)

    async def _on_message(self, data: bytes) -> None:
        decoded = decode_control(data)
        if decoded is None:
            log.debug("control: ignoring a message this engine does not send: %r", data[:200])
            return
        _, run_id = decoded
        try:
            row = await run_reads.run_row(self.readers, run_id)
        except Exception as exc:  # noqa: BLE001 - storage trouble: the step's own commit checks again
            log.warning("control: cannot check run %s: %s: %s", run_id, type(exc).__name__, exc)
            return
        if row is None or row["status"] != CANCELLED:
            log.debug("control: run %s is not cancelled here (%s); ignoring", run_id, None if row is None else row["status"])
            return
        self.received += 1
        n = self.cancel_local(run_id)
        if n:
            log.info("control: interrupted %d execution(s) of cancelled run %s", n, run_id)

    async def close(self) -> None:
        """Let the announcements under way go out (bounded) before the connection closes."""
        if self._sends:
            await asyncio.wait(set(self._sends), timeout=PUBLISH_TIMEOUT_S)
