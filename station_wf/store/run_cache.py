"""Decoded run state kept across a run's transactions, keyed by `(run_id, workflow_runs.version)`.

Why: every transition used to read and JSON-decode the whole context and engine state again. The
writer thread is the only writer of `workflow_runs` and every change of those columns bumps
`version`, so an entry whose version equals the row's is exactly what the row holds.

Coherence with rollbacks: a transaction only *stages* what it wrote; the writer publishes the
staged entries of the transactions that were part of a group after its COMMIT returned, and drops
those of a transaction rolled back to its SAVEPOINT (a failure, a `Deferred` re-run) or of a group
SQLite rolled back. So no entry is ever ahead of the database. Outside a writer group (a script, a
test on a bare connection) nothing is staged: the cache only ever serves the writer thread.

Bounded: least recently used entries go first once the entries' JSON size passes
`LIMITS.run_cache_bytes` (STATION_RUN_CACHE_MB), or their number passes `MAX_ENTRIES`; 0 turns the
cache off. The count bound is there because decoded objects take several times their JSON's bytes (a
small run's entry is ~2 KB of Python objects): 100,000 parked runs must not all stay decoded, and only
the runs in flight (a few hundred) gain from being cached.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from station_wf.core.limits import LIMITS


@dataclass(frozen=True)
class Entry:
    """A run's decoded state at one version. Shared: readers never write into these objects."""

    version: int
    context: dict[str, Any]
    engine: dict[str, Any]
    attempts: dict[str, int] | None  # step id -> highest attempt (None: not known)
    context_size: int  # bytes of JSON the entry stands for (what the bound counts)
    engine_size: int
    blob_size: int = 0  # the stored context blob's bytes, its patches' rows, bytes and last seq
    patch_rows: int = 0  # (store/context_patches.py: when to compact)
    patch_bytes: int = 0
    patch_seq: int = 0

    @property
    def size(self) -> int:
        return self.context_size + self.engine_size


MAX_ENTRIES = 10_000

_lock = threading.Lock()
_entries: OrderedDict[str, Entry] = OrderedDict()
_bytes = 0
_local = threading.local()


def get(run_id: str, version: int) -> Entry | None:
    """The entry at exactly `version`: what this writer group staged first (its own uncommitted
    writes, which its transactions see in the database too), then what committed groups published."""
    staged = getattr(_local, "staged", None)
    if staged is not None:
        mine = staged.get(run_id)
        if mine is not None and mine.version == version:
            return mine
    with _lock:
        entry = _entries.get(run_id)
        if entry is None or entry.version != version:
            return None
        _entries.move_to_end(run_id)
        return entry


def stage(run_id: str, entry: Entry) -> None:
    """What the current transaction wrote; published only if it commits (see the module doc)."""
    staged = getattr(_local, "staged", None)
    if staged is not None and LIMITS.run_cache_bytes > 0:
        staged[run_id] = entry


# -- the writer's side: one group, its transactions' savepoints, its commit ----------------------
def begin_group() -> None:
    _local.staged = {}
    _local.group = []


def checkpoint() -> dict[str, Entry] | None:
    """Before one transaction (or a nested savepoint): what is staged so far."""
    staged = getattr(_local, "staged", None)
    return None if staged is None else dict(staged)


def rollback_to(mark: dict[str, Entry] | None) -> None:
    """The transaction (savepoint) since `mark` was rolled back: forget what it staged."""
    if mark is not None and getattr(_local, "staged", None) is not None:
        _local.staged = mark


def publish() -> None:
    """The group committed: its transactions' entries become visible."""
    staged = getattr(_local, "staged", None)
    _local.staged = None
    if staged:
        with _lock:
            for run_id, entry in staged.items():
                _put(run_id, entry)


def discard() -> None:
    """The group was rolled back (or no group): nothing it staged is true."""
    _local.staged = None


def forget(run_id: str) -> None:
    global _bytes
    with _lock:
        old = _entries.pop(run_id, None)
        if old is not None:
            _bytes -= old.size


def clear() -> None:
    global _bytes
    with _lock:
        _entries.clear()
        _bytes = 0


def stats() -> tuple[int, int]:
    """(entries, bytes)."""
    with _lock:
        return len(_entries), _bytes


def _put(run_id: str, entry: Entry) -> None:
    global _bytes
    old = _entries.pop(run_id, None)
    if old is not None:
        _bytes -= old.size
    limit = LIMITS.run_cache_bytes
    if entry.size > limit // 4:
        return  # one huge run must not flush everyone else; it is decoded per transaction instead
    _entries[run_id] = entry
    _bytes += entry.size
    while (_bytes > limit or len(_entries) > MAX_ENTRIES) and _entries:
        _, dropped = _entries.popitem(last=False)
        _bytes -= dropped.size
