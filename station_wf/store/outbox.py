"""The outbox (invariant 2): tasks written in the transaction that made them, published by the relay
only after that commit, and deleted only after their own PubAck. The wire form comes from
`station_wf.protocol`; this module only stores it."""

from __future__ import annotations

import sqlite3

from station_wf.protocol import Envelope, Task, encode_task
from station_wf.store.db import Readers, utcnow
from station_wf.store.jsontext import dumps


def enqueue(conn: sqlite3.Connection, envelope: Envelope) -> None:
    conn.execute(
        "INSERT INTO outbox (subject, msg_id, payload, headers, created_at) VALUES (?, ?, ?, ?, ?)",
        (envelope.subject, envelope.msg_id, dumps(envelope.payload), dumps(envelope.headers), utcnow()),
    )


def enqueue_task(conn: sqlite3.Connection, task: Task) -> None:
    enqueue(conn, encode_task(task))


async def rows_after(readers: Readers, after_id: int, limit: int) -> list[sqlite3.Row]:
    return await readers.fetchall(
        "SELECT id, subject, msg_id, payload, headers FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))


def delete(conn: sqlite3.Connection, ids: list[int]) -> None:
    conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])


async def queued_subjects(readers: Readers) -> set[str]:
    """Subjects with a task still waiting to be published (the reconciler leaves those alone)."""
    return {r["subject"] for r in await readers.fetchall("SELECT DISTINCT subject FROM outbox")}


async def depth(readers: Readers) -> int:
    row = await readers.fetchone("SELECT COUNT(*) AS n FROM outbox")
    return row["n"] if row else 0
