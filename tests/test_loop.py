"""The loop base (`station_wf/loop.py`): passes, kicks, the one error policy, draining, the overrun
warning and the counters, with real asyncio time (short intervals) and no server."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from station_wf.loop import Loop, loop_errors_total, loop_items_total, loop_iterations_total
from station_wf.telemetry.metrics import render_prometheus
from tests.conftest import Daemon, wait_until


class Scripted(Loop):
    """Each pass takes the next outcome: an int (items handled) or an exception to raise."""

    def __init__(self, name: str, outcomes: list[object], interval: float | None = 0.01, **kw: object) -> None:
        super().__init__(interval, **kw)  # type: ignore[arg-type]
        self.name = name
        self.outcomes = list(outcomes)
        self.calls: list[float] = []
        self.idles = 0

    async def run_once(self) -> int:
        self.calls.append(time.monotonic())
        outcome = self.outcomes.pop(0) if self.outcomes else 0
        if isinstance(outcome, BaseException):
            raise outcome
        return int(outcome)  # type: ignore[call-overload]

    async def idle(self) -> None:
        self.idles += 1


def test_run_loops_n_runs_n_passes_and_counts_them() -> None:
    loop = Scripted("t-count", [1, 2, 3])
    asyncio.run(asyncio.wait_for(loop.run(loops=3), 5))
    assert len(loop.calls) == 3
    assert (loop.stats.iterations, loop.stats.items, loop.stats.errors) == (3, 6, 0)
    assert loop_iterations_total.get(loop="t-count") == 3 and loop_items_total.get(loop="t-count") == 6
    assert 'station_loop_iterations_total{loop="t-count"} 3' in render_prometheus()


def test_errors_back_off_doubling_to_the_cap_and_a_success_resets(caplog: pytest.LogCaptureFixture) -> None:
    boom = RuntimeError("nats down")
    loop = Scripted("t-backoff", [boom, boom, boom, boom, 1, 0], interval=0.01, backoff=(0.2, 0.6))
    with caplog.at_level(logging.WARNING, logger="station_wf.loop"):
        asyncio.run(asyncio.wait_for(loop.run(loops=6), 10))
    gaps = [b - a for a, b in zip(loop.calls, loop.calls[1:], strict=False)]
    # after the 1st, 2nd, 3rd and 4th failure: 0.2, 0.4, 0.6 (capped), 0.6; after the success: the interval
    for gap, want in zip(gaps, (0.2, 0.4, 0.6, 0.6), strict=False):
        assert want * 0.9 <= gap < want + 0.25
    assert gaps[4] < 0.2
    assert loop.stats.errors == 4 and loop_errors_total.get(loop="t-backoff") == 4
    assert loop.stats.last_error == "RuntimeError: nats down"
    logged = [r for r in caplog.records if "t-backoff" in r.getMessage()]
    assert len(logged) == 4 and logged[0].exc_info is not None  # the traceback once, then one line each
    assert all(r.exc_info is None for r in logged[1:])


def test_kicks_do_not_cut_a_back_off_short() -> None:
    """Commits kick the relays all the time; a failing relay must still wait out its back-off."""

    async def go(loop: Scripted) -> None:
        task = asyncio.create_task(loop.run(loops=2))
        for _ in range(20):
            loop.kick()
            await asyncio.sleep(0.005)
        await asyncio.wait_for(task, 5)

    loop = Scripted("t-kick-backoff", [RuntimeError("x"), 0], interval=5.0, backoff=(0.2, 0.2))
    asyncio.run(go(loop))
    assert loop.calls[1] - loop.calls[0] >= 0.18


def test_a_kick_runs_the_next_pass_before_the_interval_and_idle_only_on_timeouts() -> None:
    async def go(loop: Scripted) -> float:
        task = asyncio.create_task(loop.run(loops=2))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        loop.kick()
        await asyncio.wait_for(task, 5)
        return time.monotonic() - started

    loop = Scripted("t-kick", [0, 0], interval=30.0)
    assert asyncio.run(go(loop)) < 1.0 and loop.idles == 0
    quiet = Scripted("t-idle", [0, 0, 0], interval=0.01)
    asyncio.run(asyncio.wait_for(quiet.run(loops=3), 5))
    assert quiet.idles == 2  # the two waits between three passes timed out


def test_a_woken_only_loop_waits_for_its_kick() -> None:
    async def go(loop: Scripted) -> None:
        task = asyncio.create_task(loop.run(loops=1))
        await asyncio.sleep(0.1)
        assert loop.calls == []
        loop.kick()
        await asyncio.wait_for(task, 5)

    loop = Scripted("t-woken", [0], interval=None)
    asyncio.run(go(loop))
    assert len(loop.calls) == 1


def test_a_full_batch_drains_again_at_once() -> None:
    loop = Scripted("t-batch", [10, 10, 3, 10], interval=30.0)
    loop.batch = 10
    asyncio.run(asyncio.wait_for(loop.run(loops=1), 5))
    assert len(loop.calls) == 3 and loop.stats.items == 23  # stopped at the short pass, no 30 s wait


def test_an_overrun_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    class Slow(Loop):
        name = "t-slow"

        async def run_once(self) -> int:
            await asyncio.sleep(0.05)
            return 0

    slow = Slow(0.01)
    with caplog.at_level(logging.WARNING, logger="station_wf.loop"):
        asyncio.run(asyncio.wait_for(slow.run(loops=3), 5))
    warned = [r for r in caplog.records if "t-slow: one pass took" in r.getMessage()]
    assert slow.stats.overruns == 3 and len(warned) == 1  # counted each time, logged once a minute


def test_cancellation_stops_the_loop_and_is_not_an_error() -> None:
    async def go(loop: Scripted) -> None:
        task = asyncio.create_task(loop.run())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    loop = Scripted("t-cancel", [], interval=0.01)
    asyncio.run(go(loop))
    assert loop.stats.errors == 0 and loop.stats.iterations >= 2


def test_the_daemons_loops_are_counted_on_metrics(daemon: Daemon) -> None:
    """Every background loop of a real daemon shows its passes; the timer loop's items are timers fired."""
    daemon.add_workflow("nap", """
id: nap
start: z
states:
  - { name: z, type: sleep, duration: 0.2s, next: done }
  - { name: done, type: inject, data: { woke: true }, end: true }
""")
    daemon.add_workflow("ask", """
id: ask
start: a
states:
  - { name: a, type: operation, action: agent.run, input: { agent: worker, task: t }, end: true }
""")
    daemon.start()
    daemon.wait_status(daemon.start_run("nap")["id"])
    daemon.wait_status(daemon.start_run("ask")["id"])  # its step's task goes through the outbox

    def scrape() -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = {}
        for family in text_string_to_metric_families(daemon.request("GET", "/metrics").text):
            for sample in family.samples:
                if sample.name.startswith("station_loop_"):
                    out[(sample.name, sample.labels["loop"])] = sample.value
        return out

    seen = wait_until(lambda: (m := scrape()) and m.get(("station_loop_items_total", "timers"), 0) >= 1 and m,
                      10, what="the timer loop's fired timer on /metrics")
    for name in ("outbox-relay", "event-relay", "reconciler", "timers", "schedules"):
        assert seen[("station_loop_iterations_total", name)] >= 1, name
    assert seen[("station_loop_items_total", "outbox-relay")] >= 1  # the agent step's task at least
    assert seen[("station_loop_errors_total", "timers")] == 0
