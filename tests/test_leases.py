"""Leases with fencing tokens (issue 15): the singleton loops run on one replica at a time.

Store level over a real SQLite file and a real Postgres database (acquire/renew/release/check, and a
stale holder's transaction rolled back), keeper level with two keepers on two writers of one database
(takeover after the holder dies, hand-over on release, loss stops the singleton loops), and daemon
level (the timers fire, the lease is taken at once at start-up, even from a holder killed with -9,
and released on SIGTERM).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from station_wf.engine.lease import LeaseKeeper
from station_wf.engine.timers import TimerLoop
from station_wf.loop import Loop
from station_wf.store import leases, relay_rows
from station_wf.store.db import Writer, open_readers
from station_wf.store.definitions import DefinitionCache
from tests.conftest import Daemon, wait_until

NAME = leases.SINGLETONS


@pytest.fixture
def writer(store_target: Path | str):
    w = Writer(store_target)
    w.start()
    yield w
    w.close()


def _acquire(writer: Writer, holder: str, token: int | None, now: float, ttl: float = 2.0,
             force: bool = False) -> int | None:
    return writer.run_sync(lambda c: leases.acquire(c, NAME, holder, token, ttl, now=now, force=force))


def _row(writer: Writer) -> sqlite3.Row:
    return writer.run_sync(lambda c: c.execute("SELECT * FROM leases WHERE name = ?", (NAME,)).fetchone())


# -- store level ---------------------------------------------------------------------------------

def test_a_free_lease_is_taken_and_renewing_keeps_the_token(writer: Writer) -> None:
    assert _acquire(writer, "a", None, now=100.0) == 1
    assert _acquire(writer, "b", None, now=100.5) is None  # held and not expired
    assert _acquire(writer, "a", 1, now=101.0) == 1        # renewed: same token, later expiry
    row = _row(writer)
    assert (row["holder"], row["token"], row["expires_at"], row["acquired_at"], row["renewed_at"]) == ("a", 1, 103.0, 100.0, 101.0)
    assert _acquire(writer, "b", None, now=102.5) is None  # the renewal moved the expiry past 102.5


def test_an_expired_lease_is_taken_over_with_the_next_token_and_the_old_holder_is_fenced(writer: Writer) -> None:
    assert _acquire(writer, "a", None, now=100.0) == 1
    assert _acquire(writer, "b", None, now=102.0) == 2     # expired at 102: taken, token + 1
    assert _acquire(writer, "a", 1, now=102.1) is None      # the old holder's renewal does not win it back
    with pytest.raises(leases.LeaseLost, match="token 1 is no longer current"):
        writer.run_sync(lambda c: leases.check(c, NAME, 1))
    writer.run_sync(lambda c: leases.check(c, NAME, 2))     # the new holder passes


def test_release_hands_the_lease_over_at_once(writer: Writer) -> None:
    assert _acquire(writer, "a", None, now=100.0, ttl=60.0) == 1
    assert writer.run_sync(lambda c: leases.release(c, NAME, "b", 1)) is False  # not b's to release
    assert writer.run_sync(lambda c: leases.release(c, NAME, "a", 1)) is True
    with pytest.raises(leases.LeaseLost):
        writer.run_sync(lambda c: leases.check(c, NAME, 1))  # released: nothing of a's commits any more
    assert _acquire(writer, "b", None, now=100.1, ttl=60.0) == 2  # long before the TTL
    assert writer.run_sync(lambda c: leases.release(c, NAME, "a", 1)) is False


def test_a_second_replica_with_the_same_id_does_not_share_the_lease(writer: Writer) -> None:
    """Renewal needs the holder AND its token: a misconfigured twin (same STATION_REPLICA_ID) waits."""
    assert _acquire(writer, "same", None, now=100.0) == 1
    assert _acquire(writer, "same", None, now=100.5) is None
    assert _acquire(writer, "same", 7, now=100.5) is None


def test_force_takes_the_lease_from_a_live_holder(writer: Writer) -> None:
    """SQLite's start-up: the data-dir lock proves the old holder is dead, so no TTL is waited out."""
    assert _acquire(writer, "dead", None, now=100.0, ttl=60.0) == 1
    assert _acquire(writer, "new", None, now=100.1, ttl=60.0, force=True) == 2
    assert _row(writer)["holder"] == "new"


def test_a_stale_token_transaction_and_ride_along_write_nothing(writer: Writer) -> None:
    assert _acquire(writer, "a", None, now=time.time() - 10, ttl=1.0) == 1
    assert _acquire(writer, "b", None, now=time.time(), ttl=60.0) == 2  # a paused past its TTL: b took over
    stale = leases.FencedWriter(writer, NAME, lambda: 1)
    current = leases.FencedWriter(writer, NAME, lambda: 2)
    lost: list[str] = []

    async def go() -> None:
        with pytest.raises(leases.LeaseLost):
            await stale.run(lambda c: relay_rows.set_cursor(c, "events", 5))
        stale.ride_along("event-cursor", lambda c: relay_rows.set_cursor(c, "events", 6), on_lost=lambda: lost.append("x"))
        await writer.run(lambda c: None)  # commits the ride-along's group
        await current.run(lambda c: relay_rows.set_cursor(c, "other", 7))

    asyncio.run(go())
    rows = writer.run_sync(lambda c: [tuple(r) for r in c.execute("SELECT name, position FROM relay_cursors ORDER BY name")])
    assert rows == [("other", 7)] and lost == ["x"]
    with pytest.raises(leases.LeaseLost):
        leases.FencedWriter(writer, NAME, lambda: None).ride_along("k", lambda c: None)  # holding nothing: refused at once


def test_a_timer_fired_by_a_stale_holder_rolls_back(store_target: Path | str, writer: Writer) -> None:
    """The timer loop of a holder that lost the lease fires nothing: its batch fails the fence whole."""
    def seed(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO workflow_definitions (workflow_id, version, content_hash, source, definition, created_at)"
                     " VALUES ('w', 1, 'h', 'api', '{}', '2000-01-01')")
        conn.execute("INSERT INTO workflow_runs (run_id, workflow_id, workflow_version, content_hash, status, input,"
                     " context, created_at, updated_at) VALUES ('r', 'w', 1, 'h', 'COMPLETED', '{}', '{}', '2000', '2000')")
        conn.execute("INSERT INTO timers (run_id, kind, due_at, created_at) VALUES ('r', 'sleep', 0, '2000')")

    writer.run_sync(seed)
    assert _acquire(writer, "a", None, now=time.time() - 10, ttl=1.0) == 1
    assert _acquire(writer, "b", None, now=time.time(), ttl=60.0) == 2

    async def fire(token: int) -> int:
        readers = open_readers(store_target)
        await readers.open()
        try:
            return await TimerLoop(leases.FencedWriter(writer, NAME, lambda: token), readers, DefinitionCache(),
                                   on_commit=lambda: None).fire_due()
        finally:
            await readers.close()

    async def loop_passes(token: int) -> TimerLoop:
        """Two passes under the loop base's error policy: a fenced-out pass is a failed pass, not a dead loop."""
        readers = open_readers(store_target)
        await readers.open()
        try:
            loop = TimerLoop(leases.FencedWriter(writer, NAME, lambda: token), readers, DefinitionCache(),
                             on_commit=lambda: None)
            loop.backoff = (0.01, 0.01)
            await loop.run(loops=2)
            return loop
        finally:
            await readers.close()

    with pytest.raises(leases.LeaseLost):
        asyncio.run(fire(1))
    stale = asyncio.run(loop_passes(1))
    assert stale.stats.errors == 2 and "LeaseLost" in (stale.stats.last_error or "")
    fired = lambda: writer.run_sync(lambda c: c.execute("SELECT fired_at FROM timers").fetchone()[0])  # noqa: E731
    assert fired() is None
    assert asyncio.run(fire(2)) == 1 and fired() is not None


# -- keeper level: two replicas' keepers on one SQLite file -----------------------------------------

class Beat(Loop):
    """A singleton loop that counts its passes and commits each through the fenced writer."""

    name = "beat"

    def __init__(self, writer: leases.FencedWriter, label: str) -> None:
        super().__init__(0.05)
        self.writer = writer
        self.label = label
        self.running = False

    async def run(self, loops: int | None = None) -> None:
        self.running = True
        try:
            await super().run(loops)
        finally:
            self.running = False

    async def run_once(self) -> int:
        await self.writer.run(lambda c: relay_rows.set_cursor(c, "beat-" + self.label, int(time.time() * 1000)))
        return 1


def _keeper(writer: Writer, holder: str, ttl: float) -> tuple[LeaseKeeper, Beat]:
    keeper = LeaseKeeper(writer, holder, ttl, lambda loop: asyncio.create_task(loop.run(), name=f"{holder}-{loop.name}"))
    beat = Beat(keeper.fenced, holder)
    keeper.add(beat)
    return keeper, beat


async def _until(predicate, timeout: float, what: str) -> float:
    """Seconds until `predicate()` held (bounded in time)."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def test_two_keepers_one_holds_the_other_takes_over_when_it_dies_and_at_once_on_release(store_target: Path | str) -> None:
    ttl = 0.9
    wa, wb = Writer(store_target), Writer(store_target)
    wa.start()
    wb.start()

    async def go() -> None:
        a, beat_a = _keeper(wa, "a", ttl)
        b, beat_b = _keeper(wb, "b", ttl)
        task_a = asyncio.create_task(a.run())
        await _until(lambda: a.held and beat_a.stats.iterations > 0, 5, "a to hold and run")
        task_b = asyncio.create_task(b.run())
        await asyncio.sleep(2 * ttl)  # several renewals of a, several tries of b
        assert a.held and not b.held and beat_a.running and not beat_b.running and beat_b.stats.iterations == 0
        assert a.token == 1

        # a dies (no release, no renewal): b takes over within TTL + one try period.
        task_a.cancel()
        await a.stop_singletons()
        took = await _until(lambda: b.held and beat_b.stats.iterations > 0, 5, "b to take over")
        assert took < ttl + ttl / 3 + 0.5, took
        assert b.token == 2

        # a comes back (a paused holder waking up): it does not get the lease while b renews.
        a2, beat_a2 = _keeper(wa, "a", ttl)
        task_a2 = asyncio.create_task(a2.run())
        await asyncio.sleep(2 * ttl)
        assert not a2.held and not beat_a2.running and b.held

        # b shuts down cleanly: a2 takes over at its next try, long before the TTL could have run out.
        task_b.cancel()
        await b.stop_singletons()
        await b.release()
        released = time.monotonic()
        await _until(lambda: a2.held, 5, "a2 to take over after the release")
        assert time.monotonic() - released < ttl / 3 + 0.3
        assert a2.token == 3
        task_a2.cancel()
        await a2.stop_singletons()

    try:
        asyncio.run(go())
    finally:
        wa.close()
        wb.close()


def test_losing_the_lease_stops_the_singleton_loops_within_one_renew_period(store_target: Path | str) -> None:
    ttl = 1.2
    writer = Writer(store_target)
    writer.start()

    async def go() -> None:
        keeper, beat = _keeper(writer, "a", ttl)
        task = asyncio.create_task(keeper.run())
        await _until(lambda: beat.running and beat.stats.iterations > 0, 5, "the beat to run")
        # Another replica takes the lease (as after a pause of ours past the TTL).
        await writer.run(lambda c: leases.acquire(c, NAME, "b", None, 60.0, force=True))
        stopped = await _until(lambda: not beat.running, 5, "the beat to stop")
        assert stopped < ttl / 3 + 0.3 and not keeper.held
        errors_before = beat.stats.errors
        await asyncio.sleep(ttl)
        assert not beat.running and beat.stats.errors == errors_before  # stopped, not failing in a loop
        task.cancel()
        await keeper.stop_singletons()

    try:
        asyncio.run(go())
        rows = writer.run_sync(lambda c: c.execute("SELECT COUNT(*) FROM relay_cursors WHERE name = 'beat-a'").fetchone()[0])
        assert rows == 1  # it did commit while it held the lease
    finally:
        writer.close()


class Stubborn(Beat):
    """A loop that loses the first cancel it gets, as Python 3.11's `asyncio.wait_for` can."""

    name = "stubborn"

    async def run(self, loops: int | None = None) -> None:
        self.running = True
        try:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass
            await asyncio.sleep(3600)
        finally:
            self.running = False


def test_stopping_the_singleton_loops_repeats_a_cancel_that_was_lost(writer: Writer) -> None:
    async def go() -> None:
        keeper = LeaseKeeper(writer, "a", 0.9, lambda loop: asyncio.create_task(loop.run()))
        stubborn = Stubborn(keeper.fenced, "a")
        keeper.add(stubborn)
        await keeper.run(loops=1)
        await _until(lambda: stubborn.running, 2, "the loop to run")
        await asyncio.wait_for(keeper.stop_singletons(), 5)
        assert not stubborn.running

    asyncio.run(go())


def test_a_keeper_that_cannot_renew_stops_its_singleton_loops_when_its_ttl_runs_out(store_target: Path | str) -> None:
    """The database is unreachable for this replica (its writer closed): by the end of its own TTL it no
    longer counts on the lease, so it is not working when another replica may take over."""
    ttl = 0.9
    writer = Writer(store_target)
    writer.start()

    async def go() -> None:
        keeper, beat = _keeper(writer, "a", ttl)
        task = asyncio.create_task(keeper.run())
        await _until(lambda: beat.running and beat.stats.iterations > 0, 5, "the beat to run")
        writer.close()
        closed = time.monotonic()
        await _until(lambda: not beat.running, 5, "the beat to stop")
        assert time.monotonic() - closed < ttl + ttl / 3 + 0.3 and not keeper.held
        task.cancel()
        await keeper.stop_singletons()

    asyncio.run(go())


def test_an_exclusive_keeper_takes_the_lease_from_a_dead_holder_at_once_and_never_renews(writer: Writer) -> None:
    """SQLite: the data-dir lock proves the row's holder dead; an idle daemon commits nothing for the lease."""
    assert _acquire(writer, "killed", None, now=time.time(), ttl=60.0) == 1

    async def go() -> None:
        keeper = LeaseKeeper(writer, "me", 0.3, lambda loop: asyncio.create_task(loop.run()), exclusive=True)
        beat = Beat(keeper.fenced, "me")
        keeper.add(beat)
        task = asyncio.create_task(keeper.run())
        await _until(lambda: beat.stats.iterations > 0, 2, "the beat to run")  # not after the 60 s TTL
        renewed = _row(writer)["renewed_at"]
        await asyncio.sleep(1.0)  # over three renew periods
        assert keeper.held and keeper.token == 2 and _row(writer)["renewed_at"] == renewed
        task.cancel()
        await keeper.stop_singletons()
        await keeper.release()
        assert _row(writer)["holder"] is None

    asyncio.run(go())


# -- daemon level --------------------------------------------------------------------------------

SLEEPER = """
id: nap
start: nap
states:
  - { name: nap, type: sleep, duration: 0.5s, next: done }
  - { name: done, type: inject, data: { woke: true }, end: true }
"""


def _leases(daemon: Daemon) -> dict:
    resp = daemon.request("GET", "/api/v1/leases")
    assert resp.status_code == 200, resp.text
    return resp.json()


def _held_here(daemon: Daemon) -> bool:
    try:
        body = _leases(daemon)
    except (httpx.HTTPError, AssertionError):
        return False
    return any(lease["name"] == NAME and lease["heldHere"] for lease in body["leases"])


def test_the_daemon_holds_the_lease_at_once_and_its_timers_fire_even_after_kill_9(daemon: Daemon) -> None:
    """A long TTL makes a wait for the dead holder's expiry unmistakable: it must not happen on SQLite
    (pinned to SQLite even when STATION_TEST_PG_SERVER moves the daemon tests to Postgres)."""
    daemon.add_workflow("nap", SLEEPER)
    env = {"STATION_LEASE_TTL_SECONDS": "60", "STATION_REPLICA_ID": "first",
           "STATION_DATABASE_URL": f"sqlite:///{daemon.data_dir / 'station-wf.db'}"}
    daemon.start(extra_env=env)
    wait_until(lambda: _held_here(daemon), 5, what="the lease held")
    body = _leases(daemon)
    assert body["replica"] == "first" and body["exclusive"] is True  # SQLite: the data-dir lock stands behind it
    [lease] = [x for x in body["leases"] if x["name"] == NAME]
    assert lease["holder"] == "first" and lease["token"] >= 1 and 0 < lease["expiresInSeconds"] <= 60
    run = daemon.start_run("nap")
    assert daemon.wait_status(run["id"], timeout=15)["context"]["woke"] is True
    metrics = daemon.request("GET", "/metrics").text
    assert 'station_lease_held{lease="singletons"} 1.0' in metrics
    first_token = lease["token"]

    daemon.kill()  # the lease row still names "first", unexpired for a minute
    daemon.start(extra_env={**env, "STATION_REPLICA_ID": "second"})
    started = time.monotonic()
    run = daemon.start_run("nap")
    assert daemon.wait_status(run["id"], timeout=15)["context"]["woke"] is True
    assert time.monotonic() - started < 15
    [lease] = [x for x in _leases(daemon)["leases"] if x["name"] == NAME]
    assert lease["holder"] == "second" and lease["token"] == first_token + 1

    assert daemon.stop() == 0  # a clean stop releases the lease
    with sqlite3.connect(daemon.data_dir / "station-wf.db") as conn:
        holder, token, expires = conn.execute("SELECT holder, token, expires_at FROM leases WHERE name = ?", (NAME,)).fetchone()
    assert holder is None and token == first_token + 1 and expires == 0
    assert "lease singletons: released by this replica (second)" in daemon.log()


REPLICA_SLEEPER = """
id: nap3
start: nap
states:
  - { name: nap, type: sleep, duration: 3s, next: done }
  - { name: done, type: inject, data: { woke: true }, end: true }
"""


def test_kill_9_of_the_lease_holder_mid_timer_another_replica_takes_over_and_fires_it(
        daemon_factory, postgres_db: str, nats_server) -> None:
    """Two replicas on one Postgres and one NATS. The holder is killed with -9 while a sleep's timer is
    pending; the other takes the lease within TTL + a renew period, fires the timer, and the run
    completes once."""
    ttl = 2.0
    replicas = []
    for name in ("a", "b"):
        d = daemon_factory(name)
        d.add_workflow("nap3", REPLICA_SLEEPER)
        d.env.update({"STATION_DATABASE_URL": postgres_db, "STATION_NATS_EMBEDDED": "false",
                      "STATION_NATS_URL": nats_server.url, "STATION_LEASE_TTL_SECONDS": str(ttl),
                      "STATION_REPLICA_ID": name})
        replicas.append(d)
    a, b = replicas
    a.start()
    wait_until(lambda: _held_here(a), 10, what="a to hold the lease")
    b.start()
    body = _leases(b)
    assert body["replica"] == "b" and body["exclusive"] is False
    [lease] = [x for x in body["leases"] if x["name"] == NAME]
    assert lease["holder"] == "a" and not lease["heldHere"]
    time.sleep(ttl)  # b has tried a few times: it still does not hold it
    assert not _held_here(b) and _held_here(a)

    run = b.start_run("nap3")
    wait_until(lambda: any(e["type"] == "step.started" for e in b.events(run["id"])), 10, what="the sleep to start")
    a.kill()  # mid timer: due in ~3 s, and nobody holds the lease until it expires
    killed = time.monotonic()
    wait_until(lambda: _held_here(b), 3 * ttl + 5, interval=0.05, what="b to take the lease over")
    took = time.monotonic() - killed
    assert took < ttl + ttl / 3 + 2.0, f"b took {took:.2f}s"  # TTL + one renew period (+ process slack)
    [lease] = [x for x in _leases(b)["leases"] if x["name"] == NAME]
    assert lease["holder"] == "b" and lease["token"] == 2

    done = b.wait_status(run["id"], timeout=30)
    assert done["context"]["woke"] is True
    events = b.events(run["id"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    succeeded = [(e["stepId"], e["payload"]["attempt"]) for e in events if e["type"] == "step.succeeded"]
    assert len(succeeded) == len(set(succeeded))
    assert [e["type"] for e in events].count("run.completed") == 1
    assert "lease singletons: held by this replica (b) under token 2" in b.log()
