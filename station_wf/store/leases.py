"""Leases with fencing tokens (issue 15): which replica runs the singleton loops, and proof of it.

A lease is one row: its holder, a token that grows by one on every change of holder, and when it
expires. `acquire` takes the lease when it is free (released) or expired, and renews it when it is
ours (same holder AND the token we hold; a second replica misconfigured with our id does not hold it
with us). `release` frees it on a clean shutdown, so the next replica takes over at its next try
instead of after the TTL. `check` is the fence: a singleton loop's transaction calls it first with
the token it ran under, and a holder that paused past its TTL (GC, SIGSTOP, a stuck disk) and woke up
after another replica took over fails it, so its transaction rolls back and writes nothing.

`check` is a plain read: it is enough because write transactions are serialised (SQLite's one
writer; on Postgres every write transaction of the deployment takes one advisory lock), so between
our check and our commit no takeover can commit. `acquire` and `release` are compare-and-set on the
token besides.

Time is the Python wall clock (unix seconds) of the replica that writes: replicas need synchronised
clocks (NTP), as every lease system does, and the TTL must exceed the worst clock skew between them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from station_wf.store.db import Readers, Writer

T = TypeVar("T")

SINGLETONS = "singletons"  # the one lease of the singleton loops


class LeaseLost(RuntimeError):
    """The lease this work ran under is no longer ours (taken over, or released): nothing of it commits."""

    def __init__(self, name: str, token: int | None, current: Any) -> None:
        self.name, self.token = name, token
        if current is None:
            now = "no holder"
        else:
            now = f"token {current['token']}, holder {current['holder'] or 'none (released)'}"
        super().__init__(f"lease {name!r}: token {token} is no longer current ({now}); rolled back")


def _row(conn: Any, name: str) -> Any:
    return conn.execute("SELECT holder, token, expires_at FROM leases WHERE name = ?", (name,)).fetchone()


def acquire(conn: Any, name: str, holder: str, token: int | None, ttl: float, now: float | None = None,
            force: bool = False) -> int | None:
    """Renew the lease when `holder` holds it under `token`; else take it when free or expired (or
    `force`: the caller knows it is the only replica) with token + 1. The token held after the call,
    or None when another holder has it."""
    now = time.time() if now is None else now
    conn.execute("INSERT INTO leases (name, holder, token, expires_at, acquired_at, renewed_at) VALUES (?, NULL, 0, 0, ?, ?)"
                 " ON CONFLICT (name) DO NOTHING", (name, now, now))
    row = _row(conn, name)
    if token is not None and row["holder"] == holder and row["token"] == token:
        conn.execute("UPDATE leases SET expires_at = ?, renewed_at = ? WHERE name = ? AND token = ?",
                     (now + ttl, now, name, token))
        return token
    if not (force or row["holder"] is None or row["expires_at"] <= now):
        return None
    taken = row["token"] + 1
    cur = conn.execute("UPDATE leases SET holder = ?, token = ?, expires_at = ?, acquired_at = ?, renewed_at = ?"
                       " WHERE name = ? AND token = ?", (holder, taken, now + ttl, now, now, name, row["token"]))
    return taken if cur.rowcount == 1 else None


def release(conn: Any, name: str, holder: str, token: int) -> bool:
    """Free the lease if `holder` still holds it under `token` (the token stays: the next holder's is +1)."""
    cur = conn.execute("UPDATE leases SET holder = NULL, expires_at = 0 WHERE name = ? AND holder = ? AND token = ?",
                       (name, holder, token))
    return cur.rowcount == 1


def check(conn: Any, name: str, token: int | None) -> None:
    """The fence, first thing in a singleton transaction: raise `LeaseLost` unless `token` is current."""
    row = _row(conn, name) if token is not None else None
    if row is None or row["holder"] is None or row["token"] != token:
        raise LeaseLost(name, token, row)


async def all_leases(readers: Readers) -> list[Any]:
    return await readers.fetchall(
        "SELECT name, holder, token, expires_at, acquired_at, renewed_at FROM leases ORDER BY name")


class FencedWriter:
    """The writer as a singleton loop sees it: every transaction and ride-along it hands in first runs
    `check` with the lease token current at hand-in time (`token()`; None when this replica holds no
    lease, and then nothing is even queued). The loops keep calling `writer.run(fn)` unchanged."""

    def __init__(self, writer: Writer, name: str, token: Callable[[], int | None]) -> None:
        self.writer = writer
        self.name = name
        self.token = token

    def _fenced(self, fn: Callable[[Any], T]) -> Callable[[Any], T]:
        name, token = self.name, self.token()
        if token is None:
            raise LeaseLost(name, None, None)

        def tx(conn: Any) -> T:
            check(conn, name, token)
            return fn(conn)

        return tx

    async def run(self, fn: Callable[[Any], T]) -> T:
        return await self.writer.run(self._fenced(fn))

    def ride_along(self, key: str, fn: Callable[[Any], Any], on_lost: Callable[[], None] | None = None) -> None:
        self.writer.ride_along(key, self._fenced(fn), on_lost)

    def has_riders(self) -> bool:
        return self.writer.has_riders()
