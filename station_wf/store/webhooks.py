"""The approval webhook queue: deliveries made from the event log, attempts recorded, rows read back."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from station_wf.store.db import Readers, utcnow

__all__ = ["attempts_for", "deliveries_for", "due", "enqueue_from_events", "record_attempt"]

APPROVAL_EVENTS = ("approval.requested", "approval.decided", "approval.timed_out")
_CURSOR = "approvals"


def enqueue_from_events(conn: sqlite3.Connection, urls: list[str], build: Any, now: float, limit: int = 200) -> int:
    """Turn approval events after the cursor into one pending delivery per URL, and move the cursor,
    in the writer's transaction: a crash leaves either both or neither."""
    row = conn.execute("SELECT event_id FROM webhook_cursor WHERE name = ?", (_CURSOR,)).fetchone()
    if row is None:  # first start with webhooks: only what happens from now on is notified
        last = conn.execute("SELECT COALESCE(MAX(id), 0) FROM workflow_run_events").fetchone()[0]
        conn.execute("INSERT INTO webhook_cursor (name, event_id) VALUES (?, ?)", (_CURSOR, last))
        return 0
    cursor = int(row[0])
    marks = ",".join("?" * len(APPROVAL_EVENTS))
    events = conn.execute(
        f"""SELECT e.id, e.run_id, e.type, e.step_id, e.payload, e.created_at, r.workflow_id
            FROM workflow_run_events e JOIN workflow_runs r ON r.run_id = e.run_id
            WHERE e.id > ? AND e.type IN ({marks}) ORDER BY e.id LIMIT ?""",
        (cursor, *APPROVAL_EVENTS, limit)).fetchall()
    newest = conn.execute("SELECT COALESCE(MAX(id), ?) FROM workflow_run_events WHERE id > ?", (cursor, cursor)).fetchone()[0]
    if len(events) == limit:
        newest = events[-1]["id"]
    stamp = utcnow()
    made = 0
    for event in events:
        payload = json.loads(event["payload"] or "{}")
        approval = conn.execute("SELECT * FROM workflow_approvals WHERE approval_id = ?",
                                (payload.get("approvalId"),)).fetchone()
        body = build(event, payload, approval)
        for index, url in enumerate(urls):
            conn.execute(
                """INSERT INTO webhook_deliveries (delivery_id, event_id, approval_id, run_id, event, url,
                   payload, status, attempts, next_at, created_at, updated_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?) ON CONFLICT (delivery_id) DO NOTHING""",
                (f"{event['id']}:{index}", event["id"], payload.get("approvalId"), event["run_id"], event["type"], url,
                 json.dumps(body, separators=(",", ":")), now, stamp, stamp))
            made += 1
    conn.execute("UPDATE webhook_cursor SET event_id = ? WHERE name = ?", (newest, _CURSOR))
    return made


def due(conn: sqlite3.Connection, now: float, limit: int = 50) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM webhook_deliveries WHERE status = 'pending' AND next_at <= ? "
                        "ORDER BY next_at LIMIT ?", (now, limit)).fetchall()


def record_attempt(conn: sqlite3.Connection, delivery_id: str, attempt: int, status: int | None, body: str | None,
                   error: str | None, duration_ms: int, outcome: str, next_at: float) -> None:
    """One attempt and the delivery's new state (delivered, failed, or pending again at `next_at`)."""
    stamp = utcnow()
    conn.execute("INSERT INTO webhook_attempts (delivery_id, attempt, response_status, response_body, error, "
                 "duration_ms, at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (delivery_id, attempt) DO UPDATE SET "
                 "response_status = excluded.response_status, response_body = excluded.response_body, "
                 "error = excluded.error, duration_ms = excluded.duration_ms, at = excluded.at",
                 (delivery_id, attempt, status, (body or "")[:1024] or None, error, duration_ms, stamp))
    conn.execute("UPDATE webhook_deliveries SET status = ?, attempts = ?, next_at = ?, last_status = ?, last_error = ?, "
                 "updated_at = ? WHERE delivery_id = ? AND status = 'pending'",
                 (outcome, attempt, next_at, status, error, stamp, delivery_id))


async def deliveries_for(readers: Readers, approval_id: str) -> list[sqlite3.Row]:
    return await readers.fetchall("SELECT * FROM webhook_deliveries WHERE approval_id = ? ORDER BY event_id, url",
                                  (approval_id,))


async def attempts_for(readers: Readers, delivery_ids: list[str]) -> list[sqlite3.Row]:
    if not delivery_ids:
        return []
    marks = ",".join("?" * len(delivery_ids))
    return await readers.fetchall(f"SELECT * FROM webhook_attempts WHERE delivery_id IN ({marks}) "
                                  "ORDER BY delivery_id, attempt", delivery_ids)
