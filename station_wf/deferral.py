"""Work a write transaction needs done *outside* itself, then the transaction is run again.

Why: the writer thread must never run user code (a Starlark expression can burn CPU, allocate
gigabytes or crash the native stack). So a transaction function that needs such a value raises
`Deferred`; `Writer.run` rolls that transaction back (its SAVEPOINT), awaits
`Deferred.prepare()` on the event loop (the value is computed in a sandbox process), and runs the
function again with the answer available in its `TxScope`. The re-run re-reads everything, so it is
a compare-and-set on the whole run state, not only its `version`: whatever committed in between is
seen. A scope pins "now" across re-runs, so time-dependent inputs do not change between attempts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

MAX_DEFERRALS = 500  # re-runs of one transaction; a chain of 64 inline steps with several conditions fits


class Deferred(BaseException):  # noqa: N818 - a control-flow signal, like CancelledError
    """Raised inside a transaction function; a BaseException so `except Exception` never swallows it."""

    async def prepare(self, scope: TxScope) -> None:
        raise NotImplementedError

    def merge(self, other: Deferred) -> Deferred:
        """Batch transactions (timers) collect several deferrals and raise one."""
        raise NotImplementedError


class TooManyDeferrals(RuntimeError):
    pass


@dataclass
class TxScope:
    """What survives between re-runs of one logical transaction."""

    now: str | None = None
    answers: dict[Any, Any] = field(default_factory=dict)
    deferrals: int = 0
    committed: list[Callable[[], None]] = field(default_factory=list)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` with this scope current on this thread (an attempt starts with no `after_commit`)."""
        previous = getattr(_local, "scope", None)
        self.committed = []
        _local.scope = self
        try:
            return fn(*args)
        finally:
            _local.scope = previous


_local = threading.local()


def current_scope() -> TxScope | None:
    """The scope of the transaction running on this thread, if any."""
    return getattr(_local, "scope", None)


def after_commit(fn: Callable[[], None]) -> None:
    """Run `fn` once the current transaction has committed (a metric, say), never for a rolled-back
    attempt; outside a writer transaction, at once."""
    scope = getattr(_local, "scope", None)
    if scope is None:
        fn()
    else:
        scope.committed.append(fn)


def pinned_now() -> str | None:
    scope = getattr(_local, "scope", None)
    return None if scope is None else scope.now
