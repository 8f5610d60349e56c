"""Approval webhooks as Station documents them (`docs/station/workflow-webhooks.md`).

On `approval.requested`, `approval.decided` and `approval.timed_out`, a JSON notification with
approve/reject links is POSTed to every configured URL. Durability comes from the event log: a
cursor over `workflow_run_events` turns approval events into `webhook_deliveries` rows in one writer
transaction, so a daemon restart loses none and repeats none (one delivery per event and URL). A
sender loop POSTs what is due, signs the exact body with HMAC-SHA256 when a secret is set
(`X-Station-Signature: sha256=<hex>`, with `X-Station-Timestamp` and `X-Station-Delivery`), and
retries failures (non-2xx, timeouts, refused connections) with exponential back-off up to a bound;
every attempt is a row, read back by `GET /api/v1/workflow-approvals/{id}/deliveries`. Delivery is at
least once: a receiver de-duplicates on `X-Station-Delivery`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from station_wf.loop import Loop
from station_wf.store import webhooks as ws
from station_wf.store.db import Writer
from station_wf.store.leases import FencedWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WebhookConfig:
    urls: tuple[str, ...]
    secret: str | None = None
    public_url: str = "http://127.0.0.1:8587"
    timeout_seconds: float = 10.0
    max_attempts: int = 5
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 300.0
    poll_seconds: float = 0.5


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` over `<timestamp>.<body>`: the timestamp is signed too, so a replay is visible."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def notification(config: WebhookConfig, event: Any, payload: dict[str, Any], approval: Any) -> dict[str, Any]:
    """Station's payload fields (snake_case), plus the decision for decided / timed-out events."""
    approval_id = payload.get("approvalId")
    base = config.public_url.rstrip("/")
    body: dict[str, Any] = {
        "event": event["type"],
        "approval_id": approval_id,
        "workflow_id": event["workflow_id"],
        "run_id": event["run_id"],
        "step_name": approval["state_name"] if approval is not None else None,
        "message": approval["message"] if approval is not None else payload.get("message"),
        "approvers": json.loads(approval["approvers"]) if approval is not None and approval["approvers"] else [],
        "metadata": {"summary": payload.get("summary")} if payload.get("summary") is not None else {},
        "approve_url": f"{base}/api/v1/workflow-approvals/{approval_id}/approve",
        "reject_url": f"{base}/api/v1/workflow-approvals/{approval_id}/reject",
        "created_at": approval["created_at"] if approval is not None else event["created_at"],
        "timeout_at": approval["expires_at"] if approval is not None else None,
        "event_id": event["id"],
    }
    if event["type"] != "approval.requested":
        body.update({"decision": payload.get("decision"), "decided_by": payload.get("decidedBy"),
                     "comment": payload.get("comment"), "decided_at": payload.get("decidedAt")})
    return body


class ApprovalWebhooks(Loop):
    """The enqueue-and-send loop; one per deployment: it runs on the lease holder (the daemon hands it
    the lease's `FencedWriter`), and deliveries are keyed, so a second one would repeat nothing."""

    name = "approval-webhooks"

    def __init__(self, writer: Writer | FencedWriter, config: WebhookConfig) -> None:
        super().__init__(config.poll_seconds, logger=log)
        self.writer = writer
        self.config = config
        self._inflight: set[str] = set()
        self._http: aiohttp.ClientSession | None = None

    async def run(self, loops: int | None = None) -> None:
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_seconds)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            self._http = http
            try:
                await super().run(loops)
            finally:
                self._http = None

    async def run_once(self) -> int:
        """Turn new approval events into deliveries, then POST what is due."""
        assert self._http is not None
        http = self._http
        await self.writer.run(lambda c: ws.enqueue_from_events(
            c, list(self.config.urls), lambda e, p, a: notification(self.config, e, p, a), time.time()))
        rows = await self.writer.run(lambda c: ws.due(c, time.time()))
        fresh = [r for r in rows if r["delivery_id"] not in self._inflight]
        if fresh:
            await asyncio.gather(*(self._deliver(http, row) for row in fresh))
        return len(fresh)

    async def _deliver(self, http: aiohttp.ClientSession, row: Any) -> None:
        delivery_id = row["delivery_id"]
        self._inflight.add(delivery_id)
        try:
            attempt = int(row["attempts"]) + 1
            body = row["payload"].encode()
            stamp = str(int(time.time()))
            headers = {"Content-Type": "application/json", "User-Agent": "station-wf-webhooks",
                       "X-Station-Event": row["event"], "X-Station-Delivery": delivery_id, "X-Station-Timestamp": stamp}
            if self.config.secret:
                headers["X-Station-Signature"] = sign(self.config.secret, stamp, body)
            started = time.monotonic()
            status: int | None = None
            text: str | None = None
            error: str | None = None
            try:
                async with http.post(row["url"], data=body, headers=headers, allow_redirects=False) as resp:
                    status = resp.status
                    text = (await resp.content.read(1024)).decode("utf-8", "replace")
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            duration = round((time.monotonic() - started) * 1000)
            if error is None:
                outcome, next_at = "delivered", 0.0
            elif attempt >= self.config.max_attempts:
                outcome, next_at = "failed", 0.0
                log.warning("approval webhook %s to %s failed after %d attempts: %s", delivery_id, row["url"], attempt, error)
            else:
                delay = min(self.config.backoff_seconds * 2 ** (attempt - 1), self.config.max_backoff_seconds)
                outcome, next_at = "pending", time.time() + delay
            await self.writer.run(lambda c: ws.record_attempt(c, delivery_id, attempt, status, text, error, duration,
                                                              outcome, next_at))
        finally:
            self._inflight.discard(delivery_id)


def deliveries_to_api(deliveries: list[Any], attempts: list[Any]) -> list[dict[str, Any]]:
    by_delivery: dict[str, list[dict[str, Any]]] = {}
    for a in attempts:
        by_delivery.setdefault(a["delivery_id"], []).append({
            "attempt": a["attempt"], "responseStatus": a["response_status"], "responseBody": a["response_body"],
            "error": a["error"], "durationMs": a["duration_ms"], "at": a["at"]})
    return [{"id": d["delivery_id"], "event": d["event"], "url": d["url"], "status": d["status"],
             "attempts": d["attempts"], "lastStatus": d["last_status"], "lastError": d["last_error"],
             "payload": json.loads(d["payload"]), "createdAt": d["created_at"], "updatedAt": d["updated_at"],
             "attemptLog": by_delivery.get(d["delivery_id"], [])} for d in deliveries]
