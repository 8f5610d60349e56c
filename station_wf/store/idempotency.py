"""SQL of `Idempotency-Key` reservations (see `services/idempotency.py` for the protocol)."""

from __future__ import annotations

import sqlite3
import uuid

from station_wf.store import dialect

BOOT_ID = uuid.uuid4().hex
"""This daemon process. A reservation with another boot id was left by a process that is gone."""

PURGE_BATCH = 1000


def reserve(conn: sqlite3.Connection, scope: str, key: str, digest: str, now: float, ttl_s: float,
            stale_s: float, effect: str | None = None) -> tuple[str | None, sqlite3.Row | None]:
    """(effect id to act with, None) when this request may act, else (None, the existing row).

    An unanswered reservation of the same body is taken over, keeping its effect id, when it was made
    by an earlier boot (that process died) or is older than `stale_s` (a request that hung). On a store
    shared by replicas another boot id may be a live replica: only the age counts there."""
    conn.execute("DELETE FROM idempotency_keys WHERE scope = ? AND key = ? AND created_at < ?", (scope, key, now - ttl_s))
    effect = effect or str(uuid.uuid4())
    inserted = conn.execute(
        "INSERT INTO idempotency_keys (scope, key, request_hash, created_at, effect_id, boot_id) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (scope, key) DO NOTHING RETURNING key",
        (scope, key, digest, now, effect, BOOT_ID),
    ).fetchone()
    if inserted is not None:
        return effect, None
    row = conn.execute("SELECT * FROM idempotency_keys WHERE scope = ? AND key = ?", (scope, key)).fetchone()
    other_boot = row["boot_id"] != BOOT_ID and not dialect.of(conn).shared
    stale = other_boot or row["created_at"] < now - stale_s
    if row["status"] is None and row["request_hash"] == digest and stale:
        conn.execute("UPDATE idempotency_keys SET created_at = ?, boot_id = ? WHERE scope = ? AND key = ?",
                     (now, BOOT_ID, scope, key))
        return row["effect_id"] or effect, None
    return None, row


def release(conn: sqlite3.Connection, scope: str, key: str) -> None:
    conn.execute("DELETE FROM idempotency_keys WHERE scope = ? AND key = ?", (scope, key))


def store_response(conn: sqlite3.Connection, scope: str, key: str, status: int, body_json: str) -> None:
    conn.execute("UPDATE idempotency_keys SET status = ?, response = ? WHERE scope = ? AND key = ?",
                 (status, body_json, scope, key))


def purge_expired(conn: sqlite3.Connection, cutoff: float, limit: int = PURGE_BATCH) -> int:
    """Delete up to `limit` keys created before `cutoff` (unix seconds); small batches keep the writer free."""
    rowid = dialect.of(conn).rowid
    return conn.execute(
        f"DELETE FROM idempotency_keys WHERE {rowid} IN (SELECT {rowid} FROM idempotency_keys WHERE created_at < ? LIMIT ?)",
        (cutoff, limit)).rowcount
