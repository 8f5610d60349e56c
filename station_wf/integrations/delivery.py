"""The outgoing webhook loop: events become deliveries, deliveries are POSTed, signed, retried.

A singleton loop (it runs on the `singletons` lease holder, writing through the lease's fenced
writer). Why it cannot slow a run: it reads the event log through the readers after commit, like the
event relay, and writes only its own rows (deliveries, the cursor, attempts) in small transactions of
its own; POSTs run as tasks of their own, bounded per subscription (`maxConcurrency`) and in all
(`MAX_INFLIGHT`), each with the subscription's timeout, so a receiver that never answers holds only
its own slots, never the pass, the writer or another subscription.

Durability: a delivery row exists before any POST; an attempt is recorded after it. A kill -9 between
the two repeats that POST after the restart with the same `X-Station-Delivery` id (at least once).
Failures are retried with exponential back-off (`backoff * 2^(n-1)`, capped) until the subscription's
`maxAttempts`, then the delivery is `dead` (the dead-letter state) until someone redelivers it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from station_wf.integrations.signing import sign
from station_wf.integrations.subscriptions import wants
from station_wf.loop import Loop
from station_wf.store import hook_deliveries as store
from station_wf.store.db import Readers
from station_wf.store.jsontext import dumps, loads
from station_wf.store.leases import FencedWriter

log = logging.getLogger(__name__)

EVENT_PAGE = 500
MAX_INFLIGHT = 256
MAX_PAYLOAD_BYTES = 256 * 1024  # an event payload bigger than this is sent as a stub (the API has it whole)
USER_AGENT = "station-wf-webhooks"


@dataclass(frozen=True)
class DeliveryConfig:
    backoff_seconds: float = 2.0
    max_backoff_seconds: float = 300.0
    poll_seconds: float = 0.5
    keep_days: float = 30.0        # finished deliveries are forgotten after this (STATION_RETENTION_DAYS; 0: kept)
    prune_every_s: float = 3600.0


def body_for(event: Any, delivery_id: str) -> str:
    """The JSON body of one delivery: the event, its run and workflow (payload stubbed when it is huge)."""
    payload_text = event["payload"] or "null"
    payload = loads(payload_text) if len(payload_text) <= MAX_PAYLOAD_BYTES else {"truncated": True, "bytes": len(payload_text)}
    return dumps({"id": delivery_id, "event": event["type"], "timestamp": event["created_at"], "data": {
        "runId": event["run_id"], "workflowId": event["workflow_id"], "seq": event["seq"], "stepId": event["step_id"],
        "runStatus": event["run_status"], "actor": event["actor"], "payload": payload}})


def backoff(config: DeliveryConfig, attempt: int) -> float:
    return min(config.backoff_seconds * 2 ** (attempt - 1), config.max_backoff_seconds)


class WebhookDeliveries(Loop):
    """Enqueue from the event log, then start a POST task for each due delivery not already in flight."""

    name = "webhook-deliveries"

    def __init__(self, writer: FencedWriter, readers: Readers, config: DeliveryConfig) -> None:
        super().__init__(config.poll_seconds, backoff=(0.5, 10.0), logger=log)
        self.writer = writer
        self.readers = readers
        self.config = config
        self._inflight: dict[str, asyncio.Task] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._http: aiohttp.ClientSession | None = None
        self._pruned_at = 0.0

    async def run(self, loops: int | None = None) -> None:
        try:
            await super().run(loops)
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop the POSTs in flight (their rows stay pending: tried again by the next holder) and the session."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def run_once(self) -> int:
        await self._prune()
        made = await self.enqueue()
        started = 0
        for row in await store.due(self.readers, time.time()):
            if row["delivery_id"] in self._inflight or len(self._inflight) >= MAX_INFLIGHT:
                continue
            task = asyncio.create_task(self._deliver(row), name=f"webhook {row['delivery_id']}")
            self._inflight[row["delivery_id"]] = task
            task.add_done_callback(lambda t, d=row["delivery_id"]: self._inflight.pop(d, None))
            started += 1
        return made + started

    async def enqueue(self) -> int:
        """Events after the cursor, one page, into deliveries for every subscription that wants them."""
        subs = [s for s in await store.list_subscriptions(self.readers) if s["enabled"]]
        if not subs:  # nothing wants anything: no pass reads the log, and nothing is written
            return 0
        expected = await store.cursor(self.readers)
        # A subscription is delivered the events after its creation: the cursor never needs to be behind the oldest.
        position = max(expected or 0, min(int(s["after_event_id"]) for s in subs))
        events = await store.events_after(self.readers, position, EVENT_PAGE)
        if not events and position == expected:
            return 0
        filters = [(s["subscription_id"], json.loads(s["events"]), json.loads(s["workflows"]), s["after_event_id"])
                   for s in subs]
        rows = []
        for event in events:
            for sub_id, kinds, workflows, after in filters:
                if event["id"] > after and wants(kinds, workflows, event["type"], event["workflow_id"]):
                    delivery_id = f"{sub_id}:{event['id']}"
                    rows.append((delivery_id, sub_id, event["id"], event["run_id"], event["workflow_id"], event["type"],
                                 body_for(event, delivery_id)))
        last = events[-1]["id"] if events else position
        try:
            return await self.writer.run(lambda c: store.enqueue(c, expected, last, rows, time.time()))
        except store.CursorMoved:
            return 0  # another pass (a previous holder's, fenced now) got there: read again next pass

    async def _prune(self) -> None:
        """The delivery log is bounded like run history: finished deliveries older than the retention go."""
        if self.config.keep_days <= 0 or time.monotonic() - self._pruned_at < self.config.prune_every_s:
            return
        self._pruned_at = time.monotonic()
        cutoff = datetime.fromtimestamp(time.time() - self.config.keep_days * 86400, UTC)
        before = cutoff.isoformat(timespec="microseconds").replace("+00:00", "Z")
        for _ in range(1000):
            if await self.writer.run(lambda c: store.prune(c, before)) < 1000:
                return

    def _slot(self, subscription_id: str, size: int) -> asyncio.Semaphore:
        slot = self._slots.get(subscription_id)
        if slot is None or getattr(slot, "size", None) != size:
            slot = asyncio.Semaphore(size)
            slot.size = size  # type: ignore[attr-defined]
            self._slots[subscription_id] = slot
        return slot

    async def _deliver(self, row: Any) -> None:
        try:
            async with self._slot(row["subscription_id"], row["max_concurrency"]):
                await self._post(self._session(), row)
        except Exception as exc:  # noqa: BLE001 - e.g. the lease lost mid-way: the row stays pending, tried again
            log.warning("webhook %s: attempt not recorded (%s); it stays queued", row["delivery_id"], exc)

    async def _post(self, http: aiohttp.ClientSession, row: Any) -> None:
        delivery_id, attempt, round_attempt = row["delivery_id"], row["attempts"] + 1, row["round_attempts"] + 1
        body = row["payload"].encode()
        stamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "X-Station-Event": row["event"],
                   "X-Station-Delivery": delivery_id, "X-Station-Timestamp": stamp, "X-Station-Attempt": str(attempt)}
        if row["secret"]:
            headers["X-Station-Signature"] = sign(row["secret"], stamp, body)
        started = time.monotonic()
        status: int | None = None
        text: str | None = None
        error: str | None = None
        try:
            timeout = aiohttp.ClientTimeout(total=row["timeout_seconds"])
            async with http.post(row["url"], data=body, headers=headers, allow_redirects=False, timeout=timeout) as resp:
                status = resp.status
                text = (await resp.content.read(1024)).decode("utf-8", "replace")
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        duration = round((time.monotonic() - started) * 1000)
        if error is None:
            outcome, next_at = "delivered", 0.0
        elif round_attempt >= row["max_attempts"]:
            outcome, next_at = "dead", 0.0
            log.warning("webhook %s to %s is dead after %d attempts: %s", delivery_id, row["url"], round_attempt, error)
        else:
            outcome, next_at = "pending", time.time() + backoff(self.config, round_attempt)
        await self.writer.run(lambda c: store.record_attempt(c, delivery_id, attempt, round_attempt, status, text, error,
                                                             duration, outcome, next_at))
