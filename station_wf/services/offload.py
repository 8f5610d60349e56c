"""CPU-bound request work off the event loop, on a few threads: decoding big JSON bodies, checking run
input against its schema, the agents check of a definition, and the start-up sync of workflow files.

Why: on the event loop such work stalls the API, the worker, the timers and the relays together. A
semaphore bounds how many run at once, so a burst waits its turn (or gets 503) rather than taking every
thread. Threads share the GIL, but the loop gets it back every switch interval. Definitions sent to the
API are parsed in worker processes instead (`isolated.py`): they can be made arbitrarily costly.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from station_wf.errors import ServiceError

T = TypeVar("T")


class Offloader:
    def __init__(self, concurrency: int = 2, wait_s: float = 30.0) -> None:
        self.concurrency = max(1, concurrency)
        self.wait_s = wait_s
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="station-validate")
        self._slots: asyncio.Semaphore | None = None

    def _semaphore(self) -> asyncio.Semaphore:
        if self._slots is None:  # created on the loop that uses it
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._slots

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args)` on a validation thread; 503 `busy` when no slot frees up within `wait_s`."""
        slots = self._semaphore()
        try:
            await asyncio.wait_for(slots.acquire(), self.wait_s)
        except TimeoutError:
            raise ServiceError(503, "busy", f"{self.concurrency} definitions are being validated; try again",
                               {"concurrency": self.concurrency}) from None
        try:
            future = asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        except BaseException:
            slots.release()
            raise
        # The slot is held until the thread is done, even if the client goes away meanwhile.
        future.add_done_callback(lambda f: (slots.release(), f.cancelled() or f.exception()))
        return await asyncio.shield(future)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


DEFAULT = Offloader()
"""Used where no daemon wires its own (tests of services, the CLI)."""
