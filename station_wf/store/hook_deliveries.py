"""Outgoing webhooks (issue 19): subscriptions, the durable delivery queue, the attempt log.

Deliveries are made from the event log after commit: the loop reads events past the cursor through
the readers (never on the writer), builds the rows in Python, and `enqueue` inserts them and moves the
cursor in one writer transaction, compare-and-set on the cursor, so a crash leaves both or neither and
two passes never enqueue one event twice (the delivery id is `<subscription>:<event id>` besides).
(Station's approval webhooks keep their own queue in `store/webhooks.py`; the cursor table is shared.)
"""

from __future__ import annotations

from typing import Any

from station_wf.store.db import Readers, utcnow

__all__ = [
    "attempts_for", "cursor", "delete_subscription", "deliveries", "delivery", "due", "enqueue", "events_after",
    "get_subscription", "list_subscriptions", "record_attempt", "redeliver", "replace_env_subscriptions",
    "upsert_subscription",
]

CURSOR = "subscriptions"
_SUB_COLUMNS = ("subscription_id, url, secret, events, workflows, source, enabled, max_attempts, timeout_seconds, "
                "max_concurrency, after_event_id, created_at, updated_at")


# -- subscriptions -----------------------------------------------------------------------------
def upsert_subscription(conn: Any, sub: dict[str, Any]) -> None:
    """Create or replace one subscription; a new one is delivered the events after the log's end now."""
    stamp = utcnow()
    last = conn.execute("SELECT COALESCE(MAX(id), 0) FROM workflow_run_events").fetchone()[0]
    conn.execute(
        f"INSERT INTO webhook_subscriptions ({_SUB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (subscription_id) DO UPDATE SET url = excluded.url, secret = excluded.secret, "
        "events = excluded.events, workflows = excluded.workflows, source = excluded.source, "
        "enabled = excluded.enabled, max_attempts = excluded.max_attempts, timeout_seconds = excluded.timeout_seconds, "
        "max_concurrency = excluded.max_concurrency, updated_at = excluded.updated_at",
        (sub["id"], sub["url"], sub.get("secret"), sub["events"], sub["workflows"], sub["source"],
         1 if sub.get("enabled", True) else 0, sub["maxAttempts"], sub["timeoutSeconds"], sub["maxConcurrency"],
         last, stamp, stamp))


def replace_env_subscriptions(conn: Any, subs: list[dict[str, Any]]) -> int:
    """The environment file's subscriptions, as the file now says: upserted, the others of `env` deleted."""
    keep = [s["id"] for s in subs]
    for sub in subs:
        upsert_subscription(conn, sub)
    if keep:
        marks = ",".join("?" * len(keep))
        cur = conn.execute(f"DELETE FROM webhook_subscriptions WHERE source = 'env' AND subscription_id NOT IN ({marks})", keep)
    else:
        cur = conn.execute("DELETE FROM webhook_subscriptions WHERE source = 'env'")
    return cur.rowcount


def delete_subscription(conn: Any, subscription_id: str) -> bool:
    """Delete a subscription and its pending deliveries (delivered and dead ones stay in the log)."""
    conn.execute("UPDATE hook_deliveries SET status = 'dead', last_error = 'subscription deleted', updated_at = ? "
                 "WHERE subscription_id = ? AND status = 'pending'", (utcnow(), subscription_id))
    return conn.execute("DELETE FROM webhook_subscriptions WHERE subscription_id = ?", (subscription_id,)).rowcount == 1


async def list_subscriptions(readers: Readers) -> list[Any]:
    return await readers.fetchall(f"SELECT {_SUB_COLUMNS} FROM webhook_subscriptions ORDER BY subscription_id")


async def get_subscription(readers: Readers, subscription_id: str) -> Any | None:
    return await readers.fetchone(f"SELECT {_SUB_COLUMNS} FROM webhook_subscriptions WHERE subscription_id = ?",
                                  (subscription_id,))


# -- the queue -------------------------------------------------------------------------------------
async def cursor(readers: Readers) -> int | None:
    row = await readers.fetchone("SELECT event_id FROM webhook_cursor WHERE name = ?", (CURSOR,))
    return None if row is None else int(row["event_id"])


async def events_after(readers: Readers, after_id: int, limit: int) -> list[Any]:
    return await readers.fetchall(
        "SELECT e.id, e.run_id, e.seq, e.type, e.step_id, e.payload, e.actor, e.created_at, r.workflow_id,"
        " r.status AS run_status FROM workflow_run_events e JOIN workflow_runs r ON r.run_id = e.run_id"
        " WHERE e.id > ? ORDER BY e.id LIMIT ?", (after_id, limit))


async def max_event_id(readers: Readers) -> int:
    row = await readers.fetchone("SELECT COALESCE(MAX(id), 0) AS a FROM workflow_run_events")
    return int(row["a"]) if row else 0


class CursorMoved(RuntimeError):
    """Another pass moved the cursor since this one read it: nothing of this pass is written."""


def enqueue(conn: Any, expected: int | None, position: int, rows: list[tuple[Any, ...]], now: float) -> int:
    """Insert the deliveries `(delivery_id, subscription_id, event_id, run_id, workflow_id, event, payload)`
    and move the cursor from `expected` to `position`, in the caller's transaction."""
    row = conn.execute("SELECT event_id FROM webhook_cursor WHERE name = ?", (CURSOR,)).fetchone()
    if (None if row is None else int(row[0])) != expected:
        raise CursorMoved(f"webhook cursor is at {row[0] if row else None}, expected {expected}")
    stamp = utcnow()
    if rows:
        conn.executemany(
            "INSERT INTO hook_deliveries (delivery_id, subscription_id, event_id, run_id, workflow_id, event, payload,"
            " status, attempts, round_attempts, next_at, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, 0, ?, ?, ?) ON CONFLICT (delivery_id) DO NOTHING",
            [(*r, now, stamp, stamp) for r in rows])
    conn.execute("INSERT INTO webhook_cursor (name, event_id) VALUES (?, ?) "
                 "ON CONFLICT (name) DO UPDATE SET event_id = excluded.event_id", (CURSOR, position))
    return len(rows)


async def due(readers: Readers, now: float, limit: int = 200) -> list[Any]:
    return await readers.fetchall(
        "SELECT d.delivery_id, d.subscription_id, d.event, d.payload, d.attempts, d.round_attempts, s.url, s.secret,"
        " s.max_attempts, s.timeout_seconds, s.max_concurrency FROM hook_deliveries d"
        " JOIN webhook_subscriptions s ON s.subscription_id = d.subscription_id"
        " WHERE d.status = 'pending' AND d.next_at <= ? AND s.enabled = 1 ORDER BY d.next_at LIMIT ?", (now, limit))


def record_attempt(conn: Any, delivery_id: str, attempt: int, round_attempt: int, status: int | None,
                   body: str | None, error: str | None, duration_ms: int, outcome: str, next_at: float) -> None:
    """One attempt and the delivery's new state (delivered, dead, or pending again at `next_at`); an
    attempt whose delivery was redelivered or finished meanwhile changes only the log."""
    stamp = utcnow()
    conn.execute("INSERT INTO hook_delivery_attempts (delivery_id, attempt, response_status, response_body, error, "
                 "duration_ms, at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (delivery_id, attempt) DO NOTHING",
                 (delivery_id, attempt, status, (body or "")[:1024] or None, error, duration_ms, stamp))
    conn.execute("UPDATE hook_deliveries SET status = ?, attempts = ?, round_attempts = ?, next_at = ?, last_status = ?,"
                 " last_error = ?, updated_at = ? WHERE delivery_id = ? AND status = 'pending' AND attempts = ?",
                 (outcome, attempt, round_attempt, next_at, status, error, stamp, delivery_id, attempt - 1))


def redeliver(conn: Any, delivery_id: str, now: float) -> Any | None:
    """Queue a delivery again now with a fresh round of attempts (dead, delivered or pending alike)."""
    cur = conn.execute("UPDATE hook_deliveries SET status = 'pending', round_attempts = 0, next_at = ?, updated_at = ? "
                       "WHERE delivery_id = ?", (now, utcnow(), delivery_id))
    return cur.rowcount == 1


def prune(conn: Any, before: str, limit: int = 1000) -> int:
    """Forget finished deliveries (delivered or dead) last changed before `before`, at most `limit` a call."""
    ids = [r[0] for r in conn.execute("SELECT delivery_id FROM hook_deliveries WHERE status <> 'pending' AND updated_at < ?"
                                      " ORDER BY updated_at LIMIT ?", (before, limit)).fetchall()]
    if ids:
        marks = ",".join("?" * len(ids))
        conn.execute(f"DELETE FROM hook_delivery_attempts WHERE delivery_id IN ({marks})", ids)
        conn.execute(f"DELETE FROM hook_deliveries WHERE delivery_id IN ({marks})", ids)
    return len(ids)


async def deliveries(readers: Readers, subscription_id: str | None, status: str | None, run_id: str | None,
                     before: int | None, limit: int) -> list[Any]:
    """The delivery log, newest event first, paged by `before` (an event id)."""
    where, params = [], []
    for column, value in (("subscription_id", subscription_id), ("status", status), ("run_id", run_id)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if before is not None:
        where.append("event_id < ?")
        params.append(before)
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    return await readers.fetchall(f"SELECT * FROM hook_deliveries{clause} ORDER BY event_id DESC, delivery_id DESC LIMIT ?",
                                  (*params, limit))


async def delivery(readers: Readers, delivery_id: str) -> Any | None:
    return await readers.fetchone("SELECT * FROM hook_deliveries WHERE delivery_id = ?", (delivery_id,))


async def attempts_for(readers: Readers, delivery_ids: list[str]) -> list[Any]:
    if not delivery_ids:
        return []
    marks = ",".join("?" * len(delivery_ids))
    return await readers.fetchall(f"SELECT * FROM hook_delivery_attempts WHERE delivery_id IN ({marks}) "
                                  "ORDER BY delivery_id, attempt", delivery_ids)
