"""The one base of every background loop (Prefect's `LoopService` is the model).

A loop is a `run_once()` (one pass, returning how many items it handled) called every `interval`
seconds, or sooner when something `kick()`s it (a commit, a reconnect). The base owns what each loop
used to write by hand, once:

- the wait: `interval` seconds or a kick, whichever comes first (`interval=None`: woken only);
- the error policy: a pass that raises is logged (with its traceback the first time a distinct error
  is seen, one line while it repeats), counted, and followed by a back-off that doubles from
  `backoff[0]` up to `backoff[1]`; the first pass that succeeds resets it. A loop never ends on its
  own error; only cancellation stops it;
- `drain`: a pass that handled a full `batch` goes again at once (not after the interval);
- an overrun warning when a pass takes longer than its interval (counted; logged once a minute);
- `idle()`, called when the wait ended without a kick (the relays commit their ride-alongs there);
- `run(loops=N)` for tests: N passes, then return;
- counters: `stats` per loop object (tests read them) and, per loop name, the process's
  `station_loop_iterations_total{loop}`, `station_loop_items_total{loop}` and
  `station_loop_errors_total{loop}` on `/metrics`.

It imports only telemetry, so any layer may build on it (the SSE hub can adopt it as a woken-only
loop with `interval=None`: its `_dispatch` becomes `run_once`, its `BATCH` the `batch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from station_wf.telemetry.metrics import REGISTRY, Counter

log = logging.getLogger(__name__)

OVERRUN_WARNING_EVERY_S = 60.0

loop_iterations_total = Counter("station_loop_iterations_total", "Passes of each background loop.", ["loop"], REGISTRY)
loop_items_total = Counter("station_loop_items_total",
                           "Items the background loops handled (timers fired, rows published, runs started...).",
                           ["loop"], REGISTRY)
loop_errors_total = Counter("station_loop_errors_total", "Passes of each background loop that failed.", ["loop"], REGISTRY)


@dataclass
class LoopStats:
    iterations: int = 0   # passes run (each `run_once` call)
    items: int = 0        # what the passes handled (timers fired, rows published, runs started...)
    errors: int = 0       # passes that raised
    last_error: str | None = None
    last_duration_s: float = 0.0
    overruns: int = 0     # passes that took longer than the interval


class Loop:
    """Subclasses set `name` and implement `run_once`; see the module docstring for the policy."""

    name = "loop"
    batch: int | None = None           # a pass that handled this many items drains again at once
    max_drain_passes = 1000            # bound on back-to-back passes before the loop waits again

    def __init__(self, interval: float | None, *, backoff: tuple[float, float] | None = None,
                 logger: logging.Logger | None = None) -> None:
        self.interval = interval
        first = interval if interval is not None else 1.0
        self.backoff = backoff if backoff is not None else (first, first)
        self.stats = LoopStats()
        self.log = logger or log
        self._wake = asyncio.Event()
        self._delay: float | None = None  # the current back-off; None while passes succeed
        self._seen_error: str | None = None
        self._last_overrun_warning: float | None = None

    async def run_once(self) -> int:
        raise NotImplementedError

    async def idle(self) -> None:
        """The wait ended without a kick (nothing happened for an interval)."""

    def kick(self) -> None:
        """Run the next pass now instead of at the end of the interval."""
        self._wake.set()

    async def run(self, loops: int | None = None) -> None:
        """Run passes until cancelled, or `loops` of them (tests)."""
        for counter in (loop_iterations_total, loop_items_total, loop_errors_total):
            counter.inc(0, loop=self.name)  # shown from the start, zero included
        done = 0
        while loops is None or done < loops:
            if done or self.interval is None:
                woken = await self._wait()
                if not woken and self._delay is None:
                    await self._guard(self.idle)
            await self._drain()
            done += 1

    async def _wait(self) -> bool:
        """Wait for a kick or the interval; True when kicked. A back-off is waited out in full: kicks
        come with every commit, and must not turn a failing loop into a spinning one."""
        if self._delay is not None:
            await asyncio.sleep(self._delay)
            self._wake.clear()
            return True
        timeout = self.interval
        woken = True
        if timeout is None:
            await self._wake.wait()
        else:
            try:  # asyncio.timeout, not wait_for: Python 3.11's wait_for can lose a cancel that lands with a kick
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                woken = False
        self._wake.clear()
        return woken

    async def _drain(self) -> None:
        for _ in range(self.max_drain_passes):
            started = time.monotonic()
            n = await self._guard(self.run_once)
            elapsed = time.monotonic() - started
            self.stats.iterations += 1
            loop_iterations_total.inc(loop=self.name)
            self.stats.last_duration_s = elapsed
            if self.interval is not None and elapsed > self.interval:
                self._overran(elapsed)
            if n is None or self.batch is None or n < self.batch:
                return

    def _overran(self, elapsed: float) -> None:
        """Warn that a pass took longer than the interval: at most once a minute per loop, since the
        short poll periods (timers 0.1 s, relays 1 s) are overrun by any big batch."""
        self.stats.overruns += 1
        now = time.monotonic()
        if self._last_overrun_warning is None or now - self._last_overrun_warning >= OVERRUN_WARNING_EVERY_S:
            self._last_overrun_warning = now
            self.log.warning("%s: one pass took %.2fs, longer than its %.2fs interval (%d overrun(s) so far)",
                             self.name, elapsed, self.interval, self.stats.overruns)

    async def _guard(self, step: Callable[[], Awaitable[int | None]]) -> int | None:
        """Run one pass under the error policy; its item count, or None when it failed."""
        try:
            n = await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the policy: log, count, back off, go on
            self._failed(exc)
            return None
        self._delay = None
        self._seen_error = None
        if isinstance(n, int) and n:
            self.stats.items += n
            loop_items_total.inc(n, loop=self.name)
        return n or 0

    def _failed(self, exc: Exception) -> None:
        first, cap = self.backoff
        self._delay = first if self._delay is None else min(max(self._delay * 2, first), cap)
        self.stats.errors += 1
        loop_errors_total.inc(loop=self.name)
        text = f"{type(exc).__name__}: {exc}"
        self.stats.last_error = text[:500]
        if text != self._seen_error:
            self._seen_error = text
            self.log.warning("%s: pass failed (%s); retrying in %.1fs", self.name, text, self._delay, exc_info=exc)
        else:
            self.log.warning("%s: pass failed again (%s); retrying in %.1fs", self.name, text, self._delay)


async def cancel(task: asyncio.Task | None) -> None:
    """Stop one loop's task and wait for it (whatever it raised)."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
