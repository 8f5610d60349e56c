"""SQLite access: one writer thread with group commit, aiosqlite readers, and migrations.

Why a writer thread of our own rather than aiosqlite for writes: a transition is several statements
that must read and write atomically, and each aiosqlite await costs ~100 us. Running the whole
transaction as one function on a single writer thread makes it one hop, serialises every writer
(invariant 1: one writer), and lets us commit a batch of independent transactions together (group
commit, each inside its own SAVEPOINT so one failure does not undo the others). A caller's future
resolves only after COMMIT returned, so "ack after commit" holds.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from station_wf.deferral import MAX_DEFERRALS, Deferred, TooManyDeferrals, TxScope, pinned_now

log = logging.getLogger(__name__)

T = TypeVar("T")

MIGRATIONS_DIR = Path(os.environ.get("STATION_MIGRATIONS_DIR") or Path(__file__).resolve().parents[2] / "migrations")
BUSY_TIMEOUT_MS = 30_000
MAX_GROUP = 256


def utcnow() -> str:
    """ISO-8601 UTC with microseconds: sortable text, the one time format stored.

    Inside a transaction that is re-run after a deferral, "now" stays the first attempt's time.
    """
    return pinned_now() or _wall_now()


def _wall_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _configure(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA synchronous=FULL")


def connect(path: Path) -> sqlite3.Connection:
    """A stdlib connection in autocommit mode (we issue BEGIN IMMEDIATE ourselves)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    _configure(conn)
    return conn


def apply_migrations(conn: sqlite3.Connection, migrations_dir: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply `NNNN_name.sql` files in order, each in its own transaction; returns those applied now."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    applied = []
    for file in sorted(migrations_dir.glob("*.sql")):
        version = file.stem
        if version in done:
            continue
        script = file.read_text()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split_sql(script):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, utcnow()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(version)
    return applied


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements (executescript would commit implicitly, outside our transaction)."""
    statements, current = [], []
    for line in script.splitlines():
        current.append(line)
        if sqlite3.complete_statement("\n".join(current)):
            text = "\n".join(current).strip()
            if text.strip(";").strip():
                statements.append(text)
            current = []
    return statements


class WriterClosed(RuntimeError):
    pass


class SqliteWriter:
    """The single writer: runs transaction functions on one thread, committing them in groups."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[tuple[Callable[[sqlite3.Connection], Any], Future] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._riders: dict[str, Callable[[sqlite3.Connection], Any]] = {}
        self._riders_lock = threading.Lock()
        self.commits = 0
        self.transactions = 0

    def start(self) -> None:
        self._conn = connect(self.path)
        apply_migrations(self._conn)
        self._thread = threading.Thread(target=self._loop, name="sqlite-writer", daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` inside a write transaction; returns its result once committed.

        `fn` may raise `Deferred` (it needs a value computed outside the writer, see
        `station_wf.deferral`): it is rolled back, the work is done here, and `fn` runs again.
        """
        scope = TxScope(now=_wall_now())
        while True:
            if self._closed:
                raise WriterClosed("the SQLite writer is closed")
            fut: Future = Future()
            self._queue.put((functools.partial(scope.call, fn), fut))
            try:
                return await asyncio.wrap_future(fut)
            except Deferred as deferred:
                scope.deferrals += 1
                if scope.deferrals > MAX_DEFERRALS:
                    raise TooManyDeferrals(f"a transaction was deferred {MAX_DEFERRALS} times") from None
                await deferred.prepare(scope)

    def ride_along(self, key: str, fn: Callable[[sqlite3.Connection], Any]) -> None:
        """Bookkeeping that may be lost in a crash (an outbox delete, a relay cursor): it joins the next
        group commit instead of paying for its own fsync. A later call with the same key replaces it."""
        with self._riders_lock:
            previous = self._riders.get(key)
            if previous is None or not key.endswith("+"):
                self._riders[key] = fn
            else:  # keys ending in "+" accumulate
                self._riders[key] = lambda conn, a=previous, b=fn: (a(conn), b(conn))

    def has_riders(self) -> bool:
        return bool(self._riders)

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Blocking variant for CLI commands that run without an event loop."""
        fut: Future = Future()
        self._queue.put((fn, fut))
        return fut.result()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._conn is not None:
            self._conn.close()

    def _loop(self) -> None:
        assert self._conn is not None
        conn = self._conn
        while True:
            item = self._queue.get()
            if item is None:
                if self._riders:
                    self._commit_group(conn, [])
                return
            batch = [item]
            stop = False
            while len(batch) < MAX_GROUP:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit_group(conn, batch)
            if stop:
                if self._riders:
                    self._commit_group(conn, [])
                return

    def _commit_group(self, conn: sqlite3.Connection, batch: list[tuple[Callable, Future]]) -> None:
        results: list[tuple[Future, bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            for _, fut in batch:
                fut.set_exception(exc)
            return
        with self._riders_lock:
            riders, self._riders = self._riders, {}
        for key, rider in riders.items():
            conn.execute("SAVEPOINT rider")
            try:
                rider(conn)
                conn.execute("RELEASE rider")
            except Exception:  # noqa: BLE001 - bookkeeping only; the row is published again later
                log.exception("ride-along %s failed", key)
                conn.execute("ROLLBACK TO rider")
                conn.execute("RELEASE rider")
        for fn, fut in batch:
            if not fut.set_running_or_notify_cancel():
                continue
            conn.execute("SAVEPOINT tx")
            try:
                value = fn(conn)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                conn.execute("ROLLBACK TO tx")
                conn.execute("RELEASE tx")
                results.append((fut, False, exc))
            else:
                conn.execute("RELEASE tx")
                results.append((fut, True, value))
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.exception("group commit failed")
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            for fut, _, _ in results:
                fut.set_exception(exc)
            return
        self.commits += 1
        self.transactions += len(results)
        for fut, ok, value in results:
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)


class SqliteReaders:
    """Read-only aiosqlite connections for the API and the relays (WAL lets them run beside the writer)."""

    def __init__(self, path: Path, size: int = 2) -> None:
        self.path = path
        self.size = size
        self._conns: list[aiosqlite.Connection] = []
        self._next = 0

    async def open(self) -> None:
        for _ in range(self.size):
            conn = await aiosqlite.connect(str(self.path), isolation_level=None)
            conn.row_factory = aiosqlite.Row
            await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            await conn.execute("PRAGMA query_only=ON")
            self._conns.append(conn)

    def _pick(self) -> aiosqlite.Connection:
        conn = self._conns[self._next % len(self._conns)]
        self._next += 1
        return conn

    async def fetchall(self, sql: str, params: tuple | list = ()) -> list[sqlite3.Row]:
        return list(await self._pick().execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: tuple | list = ()) -> sqlite3.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def close(self) -> None:
        for conn in self._conns:
            await conn.close()
        self._conns.clear()
