"""Definitions sent to the API are parsed and validated in worker processes, with a time and memory cap.

Why processes rather than threads: a definition is attacker-sized input to a pure-Python parser. On a
thread it still competes with the event loop for the GIL (a 950 KB definition made /healthz slow), and
a pathological one (a YAML merge-key bomb, a schema that explodes) could never be stopped. A worker
process has its own GIL, an address-space limit (`RLIMIT_AS`), and is killed when it runs past the
time limit; the request then gets a clear 422 and the daemon carries on. The pool is started on first
use (spawned: the daemon's threads are never forked; each worker dies with the daemon) and replaced after a kill or a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from station_wf.errors import ServiceError

log = logging.getLogger(__name__)

T = TypeVar("T")


def _limit_memory(limit_bytes: int) -> None:
    """Worker initializer: cap the address space, so a memory bomb fails in the worker, not the host, and
    yield the CPU to the daemon (a validation may be slow; the event loop may not)."""
    import ctypes
    import os
    import resource
    import signal

    with contextlib.suppress(Exception):  # die with the daemon, even on kill -9 (no orphans)
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    with contextlib.suppress(OSError):
        os.nice(10)
    if limit_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    import station_wf.services.definitions  # noqa: F401 - import once per worker, not per request


class IsolatedPool:
    def __init__(self, workers: int = 2, timeout_s: float = 60.0, memory_mb: int = 1024, wait_s: float = 30.0) -> None:
        self.workers = max(1, workers)
        self.timeout_s = timeout_s
        self.memory_bytes = memory_mb << 20
        self.wait_s = wait_s
        self._pool: ProcessPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None
        self._lock = threading.Lock()  # the pool is made on a helper thread and dropped on the loop

    def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[ProcessPoolExecutor, Any]:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_limit_memory, initargs=(self.memory_bytes,))
            pool = self._pool
            return pool, pool.submit(fn, *args)

    def _discard(self) -> None:
        """Kill the workers (one is stuck or broken) and start afresh on next use."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is None:
            return
        for proc in list(getattr(pool, "_processes", {}).values()):
            with contextlib.suppress(Exception):
                proc.kill()
        with contextlib.suppress(Exception):
            pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a worker process (fn and args picklable). 422 `definition_too_costly` when it runs
        out of time or memory; 503 `busy` when every worker stays taken for `wait_s`."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.workers)
        try:
            await asyncio.wait_for(self._slots.acquire(), self.wait_s)
        except TimeoutError:
            raise ServiceError(503, "busy", f"{self.workers} definitions are being validated; try again",
                               {"workers": self.workers}) from None
        try:
            for attempt in range(2):
                # Starting workers spawns processes and waits for them: never on the loop.
                pool, submitted = await asyncio.to_thread(self._submit, fn, args)
                future = asyncio.wrap_future(submitted)
                try:
                    return await asyncio.wait_for(future, self.timeout_s)
                except TimeoutError:
                    self._discard()
                    raise ServiceError(422, "definition_too_costly",
                                       f"the definition took over {self.timeout_s:g} s to parse and validate",
                                       {"limitSeconds": self.timeout_s}) from None
                except (BrokenProcessPool, MemoryError):
                    if self._pool is pool:
                        self._discard()
                    if attempt == 1:  # a second worker died on it too: the input is the cause
                        raise ServiceError(422, "definition_too_costly",
                                           f"the definition needs more than {self.memory_bytes >> 20} MiB to parse and validate",
                                           {"limitMiB": self.memory_bytes >> 20}) from None
                    log.warning("validation worker died; retrying once on a fresh one")
            raise AssertionError("unreachable")
        finally:
            self._slots.release()

    def close(self) -> None:
        self._discard()
