"""The lease keeper: the singleton loops run on the one replica that holds the `singletons` lease.

One lease for all of them, not one per loop: they share one reason to be singletons (one database, one
deployment), a replica that can renew one lease can renew them all, and one holder is what an
operator can read at a glance. (Spreading them over replicas would buy little: they are light, and
the worker, which is the load, runs on every replica.)

The keeper is a loop on the base (`station_wf/loop.py`) that tries every `ttl / 3`: it takes the lease
when it is free or expired and renews it while it is ours. While it holds the lease the singleton
loops run as tasks of their own; when it loses it (another replica took it after our expiry, or we
could not renew before our own TTL ran out) it cancels them, so singleton work stops within one renew
period. A dead holder's lease is taken over within TTL + TTL/3 (its expiry, then the next try). Their writes go through a `FencedWriter`, so what an old holder still commits after a takeover
(a transaction already on the writer thread, a holder paused past its TTL) is rolled back by the token
check (store/leases.py). On a clean shutdown the lease is released and the next replica takes over at
its next try.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable

from station_wf.loop import Loop
from station_wf.store import leases
from station_wf.store.db import Writer
from station_wf.telemetry.metrics import REGISTRY, Counter, Gauge

log = logging.getLogger(__name__)

lease_held = Gauge("station_lease_held", "1 while this replica holds the lease (and runs its singleton loops).",
                   ["lease"], REGISTRY)
lease_acquired_total = Counter("station_lease_acquired_total", "Times this replica began to hold the lease.",
                               ["lease"], REGISTRY)
lease_lost_total = Counter("station_lease_lost_total", "Times this replica lost the lease it held.", ["lease"], REGISTRY)


STOP_TRIES = 20     # cancels of a singleton task before the keeper gives up waiting for it (logged)
STOP_WAIT_S = 0.5   # how long each cancel is given


def default_replica_id() -> str:
    """hostname:pid plus a random suffix: unique per start, even for a container restarted as pid 1."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class LeaseKeeper(Loop):
    """Holds one lease for this replica and runs `singletons` exactly while it does.

    `exclusive`: this replica knows it is the only one (SQLite: the data-dir lock), so its first try
    takes the lease whoever held it (a restart after kill -9 does not wait out the dead holder's TTL),
    and it never renews: the data-dir lock is the lease, and an idle daemon commits nothing for it.
    `start(loop)` runs one singleton loop as a task (the daemon's spawn, so a crash is seen there)."""

    name = "lease"

    def __init__(self, writer: Writer, holder: str, ttl: float, start: Callable[[Loop], asyncio.Task],
                 *, lease: str = leases.SINGLETONS, exclusive: bool = False) -> None:
        super().__init__(ttl / 3, backoff=(ttl / 3, ttl / 3), logger=log)
        self.writer = writer
        self.holder = holder
        self.ttl = ttl
        self.lease = lease
        self.start_loop = start
        self.exclusive = exclusive
        self.singletons: list[Loop] = []
        self.token: int | None = None       # the token we hold now; None: not holding
        self._last: int | None = None       # the token we held last (renewed if it is still ours)
        self._deadline = 0.0                # monotonic: past it, we no longer count on holding
        self._tasks: list[asyncio.Task] = []
        self.fenced = leases.FencedWriter(writer, lease, lambda: self.token)
        lease_held.set(0, lease=lease)

    @property
    def held(self) -> bool:
        return self.token is not None

    def add(self, loop: Loop) -> Loop:
        """Register a singleton loop (built with `self.fenced` as its writer); it runs while we hold."""
        self.singletons.append(loop)
        if self.held:
            self._tasks.append(self.start_loop(loop))
        return loop

    async def run_once(self) -> int:
        if self.exclusive and self.held:
            return 0
        asked = time.monotonic()
        if self.held and asked >= self._deadline:
            await self._lose("it expired before a renewal got through")
        claim, budget = self.token or self._last, self._deadline - asked if self.held else self.ttl
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancel that lands as the
            # transaction completes, and then the daemon's stop would wait for this loop forever.
            async with asyncio.timeout(max(budget, 0.05)):
                token = await self.writer.run(
                    lambda conn: leases.acquire(conn, self.lease, self.holder, claim, self.ttl, force=self.exclusive))
        except Exception:
            if self.held and time.monotonic() >= self._deadline:
                await self._lose("it expired before a renewal got through")
            raise  # the loop base logs it and tries again in ttl / 3
        if token is None:
            if self.held:
                await self._lose("another replica holds it")
            return 0
        if token != self.token:
            if self.held:
                await self._lose(f"it was taken again under token {token}")
            self._take(token)
        self._deadline = asked + self.ttl
        return 1

    def _take(self, token: int) -> None:
        self.token = self._last = token
        lease_held.set(1, lease=self.lease)
        lease_acquired_total.inc(lease=self.lease)
        log.info("lease %s: held by this replica (%s) under token %d; starting %s", self.lease, self.holder, token,
                 ", ".join(loop.name for loop in self.singletons) or "no loops")
        self._tasks = [self.start_loop(loop) for loop in self.singletons]

    async def _lose(self, why: str) -> None:
        log.warning("lease %s: lost by this replica (%s, token %s): %s; stopping its singleton loops",
                    self.lease, self.holder, self.token, why)
        self.token = None
        lease_held.set(0, lease=self.lease)
        lease_lost_total.inc(lease=self.lease)
        await self.stop_singletons()

    async def stop_singletons(self) -> None:
        """Cancel every singleton task and wait until each has ended. A cancel is repeated while the task
        runs on: Python 3.11's `asyncio.wait_for` (the loop base's wait) can lose one that lands as its
        wait completes, and a loop that lives on would run beside the next holder's."""
        tasks, self._tasks = self._tasks, []
        for _ in range(STOP_TRIES):
            if not tasks:
                return
            for task in tasks:
                task.cancel()  # all at once: a cancel of our own caller mid-way leaves none uncancelled
            await asyncio.wait(tasks, timeout=STOP_WAIT_S)
            for task in tasks:
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved (the daemon's spawn logs a crash)
            tasks = [t for t in tasks if not t.done()]
        if tasks:
            log.error("lease %s: %s did not stop after %d cancels", self.lease, ", ".join(t.get_name() for t in tasks), STOP_TRIES)

    def status(self, rows: list, now: float) -> dict:
        """`GET /api/v1/leases`: every lease row, whether this replica holds it, and who this replica is.
        `exclusive` (SQLite): the data-dir lock is the lease, taken at start and never renewed."""
        return {"replica": self.holder, "exclusive": self.exclusive, "leases": [{
            "name": r["name"], "holder": r["holder"], "token": r["token"],
            "heldHere": r["holder"] == self.holder,
            "expiresInSeconds": None if r["holder"] is None else round(r["expires_at"] - now, 3),
            "acquiredAt": r["acquired_at"], "renewedAt": r["renewed_at"]} for r in rows]}

    async def release(self) -> None:
        """Clean shutdown (after the singleton loops stopped): free the lease for the next replica now."""
        token, self.token = self.token, None
        lease_held.set(0, lease=self.lease)
        if token is None:
            return
        try:
            released = await self.writer.run(lambda conn: leases.release(conn, self.lease, self.holder, token))
        except Exception as exc:  # noqa: BLE001 - then the next replica waits out the TTL
            log.warning("lease %s: could not release it (%s); another replica takes over after the TTL", self.lease, exc)
            return
        if released:
            log.info("lease %s: released by this replica (%s)", self.lease, self.holder)
