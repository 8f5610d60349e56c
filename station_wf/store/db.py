"""Database access: one writer thread with group commit, the readers, and migrations.

Why a writer thread of our own rather than aiosqlite for writes: a transition is several statements
that must read and write atomically, and each aiosqlite await costs ~100 us. Running the whole
transaction as one function on a single writer thread makes it one hop, serialises every writer
(invariant 1: one writer), and lets us commit a batch of independent transactions together (group
commit, each inside its own SAVEPOINT so one failure does not undo the others). A caller's future
resolves only after COMMIT returned, so "ack after commit" holds.

The same writer serves Postgres (`store/pg.py`, STATION_DATABASE_URL=postgresql://...), where several
replicas share the database: each replica's writer takes one advisory lock per group, so write
transactions of the whole deployment still run one at a time (SQLite's semantics, kept exactly: event
ids are commit-ordered, a check-then-insert is safe, two transitions of one run never interleave).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiosqlite

from station_wf.deferral import MAX_DEFERRALS, Deferred, TooManyDeferrals, TxScope, pinned_now
from station_wf.errors import ServiceError
from station_wf.faults import fault_error
from station_wf.store import pg, run_cache
from station_wf.store.dialect import SQLITE, Dialect
from station_wf.store.storage_errors import as_storage_error, injected_ioerr, is_fatal, is_storage_error

log = logging.getLogger(__name__)

T = TypeVar("T")

BOOT = uuid.uuid4().hex  # this process, in the change notices it sends (`pg.ChangeFeed` skips its own)
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


class _SqliteBackend:
    """The default store: one file, one daemon (the data-dir lock), `BEGIN IMMEDIATE` per group."""

    shared = False
    dialect = SQLITE

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes

    def open(self) -> sqlite3.Connection:
        conn = connect(self.path)
        apply_migrations(conn)
        if self.max_bytes > 0:
            conn.execute(f"PRAGMA max_page_count = {max_pages(conn, self.max_bytes)}")
        return conn

    def usable(self, conn: Any) -> Any:
        return conn

    @staticmethod
    def begin(conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    @staticmethod
    def before_commit(conn: Any) -> None:
        """Nothing: every reader of an SQLite file is in this process and is kicked after the commit."""


class _PostgresBackend:
    """Postgres shared by the replicas: BEGIN plus the deployment's write lock per group; a broken
    connection (the server restarted) is replaced before the next group."""

    shared = True
    dialect = pg.POSTGRES

    def __init__(self, url: str) -> None:
        self.url = url

    def open(self) -> pg.PgConnection:
        conn = pg.PgConnection(self.url)
        pg.apply_migrations(conn, sorted(MIGRATIONS_DIR.glob("*.sql")), _split_sql, utcnow())
        return conn

    def usable(self, conn: Any) -> Any:
        if conn is None or conn.broken:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            log.warning("postgres writer: reconnecting")
            conn = pg.PgConnection(self.url)
        return conn

    @staticmethod
    def begin(conn: Any) -> None:
        conn.execute("BEGIN")
        conn.execute("SELECT pg_advisory_xact_lock(?)", (pg.WRITE_LOCK,))

    @staticmethod
    def before_commit(conn: Any) -> None:
        """Tell the other replicas that something committed (delivered with the COMMIT, not before)."""
        conn.execute("SELECT pg_notify(?, ?)", (pg.CHANGES_CHANNEL, BOOT))


def max_pages(conn: sqlite3.Connection, max_bytes: int) -> int:
    """The page cap for `max_bytes` (SQLite keeps at least the pages the file already has)."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    return max(1, max_bytes // page_size)


class WriterClosed(ServiceError, RuntimeError):
    """The writer stopped taking work (shut down, or stopped after repeated fatal storage errors)."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "storage_unavailable", message)


FATAL_AFTER = 5          # broken groups in a row, with a fatal cause, before the writer gives up
FAILING_FOR_S = 10.0     # a broken group keeps /healthz red this long (one good commit in between does not
                         # make a full database healthy: the next big write fails again)


@dataclass
class _Rider:
    fn: Callable[[sqlite3.Connection], Any]
    on_lost: Callable[[], None] | None


@dataclass
class WriterHealth:
    """What /healthz says about the writer: the thread lives, and groups commit."""

    alive: bool
    stopped: str | None
    failures_in_row: int
    last_error: str | None
    last_failure_age_s: float | None

    @property
    def ok(self) -> bool:
        recent = self.last_failure_age_s is not None and self.last_failure_age_s < FAILING_FOR_S
        return self.alive and self.stopped is None and not recent

    def to_api(self) -> dict[str, Any]:
        return {"ok": self.ok, "alive": self.alive, "stopped": self.stopped, "failuresInRow": self.failures_in_row,
                "lastError": self.last_error,
                "lastFailureSecondsAgo": None if self.last_failure_age_s is None else round(self.last_failure_age_s, 3)}


class _GroupBroken(Exception):
    """SQLite rolled the whole group back (or could not commit it): every future of it fails."""


class Writer:
    """The single writer: runs transaction functions on one thread, committing them in groups.

    A group that SQLite rolled back as a whole (a full disk, an I/O error, an interrupt) fails every
    future in it, including those whose savepoints were already released, and the thread goes on with
    the next group. After `FATAL_AFTER` broken groups in a row with a fatal cause the writer stops
    taking work and calls `on_fatal`, so the daemon exits non-zero and a supervisor restarts it.
    """

    def __init__(self, target: Path | str, max_bytes: int = 0,
                 on_fatal: Callable[[BaseException], None] | None = None) -> None:
        """`target`: an SQLite file's path, or a postgresql:// URL."""
        if isinstance(target, str) and pg.is_postgres_url(target):
            self._backend: _SqliteBackend | _PostgresBackend = _PostgresBackend(target)
            self.path: Path | None = None
        else:
            self.path = Path(target)
            self._backend = _SqliteBackend(self.path, max_bytes)
        self.max_bytes = max_bytes
        self.on_fatal = on_fatal
        self._queue: queue.SimpleQueue[tuple[Callable[[sqlite3.Connection], Any], Future] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._stopped: BaseException | None = None
        self._shut = False
        self._riders: dict[str, list[_Rider]] = {}
        self._riders_lock = threading.Lock()
        self.commits = 0
        self.transactions = 0
        self.broken_groups = 0
        self._failures_in_row = 0
        self._last_error: str | None = None
        self._last_failure: float | None = None

    @property
    def shared(self) -> bool:
        """Several replicas may write this database (Postgres); False for SQLite (one daemon per file)."""
        return self._backend.shared

    @property
    def dialect(self) -> Dialect:
        return self._backend.dialect

    def start(self) -> None:
        self._conn = self._backend.open()
        self._thread = threading.Thread(target=self._loop, name="db-writer", daemon=True)
        self._thread.start()

    def max_pages(self, conn: sqlite3.Connection) -> int:
        return max_pages(conn, self.max_bytes)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` inside a write transaction; returns its result once committed.

        `fn` may raise `Deferred` (it needs a value computed outside the writer, see
        `station_wf.deferral`): it is rolled back, the work is done here, and `fn` runs again.
        """
        scope = TxScope(now=_wall_now())
        while True:
            if self._closed:
                raise WriterClosed("the database writer is closed")
            fut: Future = Future()
            self._queue.put((functools.partial(scope.call, fn), fut))
            try:
                result = await asyncio.wrap_future(fut)
                for done in scope.committed:  # committed: side effects that must not count a rollback
                    done()
                return result
            except Deferred as deferred:
                scope.deferrals += 1
                if scope.deferrals > MAX_DEFERRALS:
                    raise TooManyDeferrals(f"a transaction was deferred {MAX_DEFERRALS} times") from None
                await deferred.prepare(scope)

    def ride_along(self, key: str, fn: Callable[[sqlite3.Connection], Any],
                   on_lost: Callable[[], None] | None = None) -> None:
        """Bookkeeping that may be lost in a crash (an outbox delete, a relay cursor): it joins the next
        group commit instead of paying for its own fsync. A later call with the same key replaces it;
        keys ending in "+" accumulate (a list, run in order). `on_lost` is called (on the writer thread)
        when the rider failed or its group was rolled back, so its owner can do the work again."""
        rider = _Rider(fn, on_lost)
        with self._riders_lock:
            if key.endswith("+"):
                self._riders.setdefault(key, []).append(rider)
            else:
                self._riders[key] = [rider]

    def has_riders(self) -> bool:
        return bool(self._riders)

    def health(self) -> WriterHealth:
        age = None if self._last_failure is None else time.monotonic() - self._last_failure
        return WriterHealth(alive=self._thread is not None and self._thread.is_alive(),
                            stopped=None if self._stopped is None else str(self._stopped),
                            failures_in_row=self._failures_in_row, last_error=self._last_error, last_failure_age_s=age)

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Blocking variant for CLI commands that run without an event loop."""
        fut: Future = Future()
        self._queue.put((fn, fut))
        return fut.result()

    def close(self) -> None:
        if self._shut:
            return
        self._shut = True
        self._closed = True
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _loop(self) -> None:
        assert self._conn is not None
        while True:
            item = self._queue.get()
            if item is None:
                self._final_riders(self._conn)
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
            try:
                conn = self._backend.usable(self._conn)
            except Exception as exc:  # noqa: BLE001 - the server is down: this group fails, the next retries
                self._unreachable(exc, batch)
                continue
            self._conn = conn
            try:
                self._serve(conn, batch)
            except BaseException as exc:  # noqa: BLE001 - the loop must outlive any one group
                log.exception("database writer: unexpected error around a group")
                for _, fut in batch:
                    _fail(fut, exc)
            if stop:
                self._final_riders(self._conn)
                return

    def _unreachable(self, exc: Exception, batch: list[tuple[Callable, Future]]) -> None:
        """No connection to the database: every caller of the group hears 503, /healthz turns red, and
        the thread waits a moment before the next group tries to reconnect."""
        log.error("database writer: no connection to the database: %s", exc)
        self._conn = None
        self._failures_in_row += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        self._last_failure = time.monotonic()
        error = as_storage_error(exc)
        for _, fut in batch:
            _fail(fut, error)
        time.sleep(min(2.0, 0.1 * self._failures_in_row))

    def _final_riders(self, conn: Any) -> None:
        if self._riders and self._stopped is None and conn is not None:
            with contextlib.suppress(Exception):
                self._commit_group(conn, [])

    def _serve(self, conn: sqlite3.Connection, batch: list[tuple[Callable, Future]]) -> None:
        if self._stopped is not None:
            for _, fut in batch:
                _fail(fut, WriterClosed(f"the database writer stopped: {self._stopped}"))
            return
        self._commit_group(conn, batch)

    def _take_riders(self) -> list[tuple[str, _Rider]]:
        with self._riders_lock:
            riders, self._riders = self._riders, {}
        return [(key, rider) for key, group in riders.items() for rider in group]

    def _commit_group(self, conn: sqlite3.Connection, batch: list[tuple[Callable, Future]]) -> None:
        riders = self._take_riders()
        results: list[tuple[Future, bool, Any]] = []
        lost: list[_Rider] = []
        try:
            self._backend.begin(conn)
            run_cache.begin_group()  # decoded run state staged by the group's transactions (published on COMMIT)
            for key, rider in riders:
                if not self._run_rider(conn, key, rider):
                    lost.append(rider)
            for fn, fut in batch:
                if fut.set_running_or_notify_cancel():
                    results.append(self._run_one(conn, fn, fut))
            if fault_error("writer.commit"):
                raise injected_ioerr("writer.commit")
            self._backend.before_commit(conn)
            conn.execute("COMMIT")
        except BaseException as exc:  # noqa: BLE001 - SQLite undid the group; everyone hears it
            run_cache.discard()
            self._group_broken(conn, exc, batch, riders)
            return
        run_cache.publish()
        self.commits += 1
        self.transactions += len(results)
        self._failures_in_row = 0
        _notify_lost(lost)
        for fut, ok, value in results:
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def _run_rider(self, conn: sqlite3.Connection, key: str, rider: _Rider) -> bool:
        conn.execute("SAVEPOINT rider")
        try:
            rider.fn(conn)
        except Exception as exc:  # noqa: BLE001 - bookkeeping only; its owner does it again (on_lost)
            if not conn.in_transaction:
                raise _GroupBroken(f"ride-along {key}: {exc}") from exc
            log.exception("ride-along %s failed", key)
            conn.execute("ROLLBACK TO rider")
            conn.execute("RELEASE rider")
            return False
        conn.execute("RELEASE rider")
        return True

    def _run_one(self, conn: sqlite3.Connection, fn: Callable, fut: Future) -> tuple[Future, bool, Any]:
        conn.execute("SAVEPOINT tx")
        mark = run_cache.checkpoint()
        try:
            value = fn(conn)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            if not conn.in_transaction:  # SQLite rolled back the whole group, not just this savepoint
                raise _GroupBroken(str(exc)) from exc
            run_cache.rollback_to(mark)  # what the attempt staged is not true (a Deferred re-runs it)
            conn.execute("ROLLBACK TO tx")
            conn.execute("RELEASE tx")
            return fut, False, as_storage_error(exc) if is_storage_error(exc) else exc
        conn.execute("RELEASE tx")
        return fut, True, value

    def _group_broken(self, conn: sqlite3.Connection, exc: BaseException, batch: list[tuple[Callable, Future]],
                      riders: list[tuple[str, _Rider]]) -> None:
        cause = exc.__cause__ if isinstance(exc, _GroupBroken) and exc.__cause__ is not None else exc
        log.error("database writer: group of %d transaction(s) rolled back: %s: %s", len(batch),
                  type(cause).__name__, cause)
        with contextlib.suppress(Exception):  # a lost Postgres connection has nothing to roll back
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        self.broken_groups += 1
        self._failures_in_row += 1
        self._last_error = f"{type(cause).__name__}: {cause}"
        self._last_failure = time.monotonic()
        if is_fatal(cause) and self._failures_in_row >= FATAL_AFTER:
            self._stop_serving(cause)  # before the callers hear: what they see next is consistent
        error = as_storage_error(cause)
        for _, fut in batch:
            _fail(fut, error)
        _notify_lost([rider for _, rider in riders])

    def _stop_serving(self, cause: BaseException) -> None:
        """Repeated fatal errors: refuse all work from now on and tell the daemon to exit non-zero."""
        self._stopped = cause
        self._closed = True
        log.critical("database writer: %d groups in a row failed (%s); refusing writes, stopping the daemon",
                     self._failures_in_row, cause)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)
                break
            _fail(item[1], WriterClosed(f"the database writer stopped: {cause}"))
        if self.on_fatal is not None:
            try:
                self.on_fatal(cause)
            except Exception:  # noqa: BLE001 - the writer keeps refusing work either way
                log.exception("database writer: on_fatal hook failed")


def _fail(fut: Future, exc: BaseException) -> None:
    """Fail a future whatever its state (pending, running or already cancelled by its caller)."""
    with contextlib.suppress(InvalidStateError):
        if not fut.done():
            fut.set_exception(exc)


def _notify_lost(riders: list[_Rider]) -> None:
    for rider in riders:
        if rider.on_lost is not None:
            try:
                rider.on_lost()
            except Exception:  # noqa: BLE001 - one owner's hook must not stop the others
                log.exception("ride-along on_lost hook failed")


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

    dialect = SQLITE


class Readers(Protocol):
    """What the API, the hub and the relays read through (SQLite's aiosqlite pool or `pg.PgReaders`)."""

    dialect: Dialect

    async def open(self) -> None: ...

    async def fetchall(self, sql: str, params: tuple | list = ()) -> list[Any]: ...

    async def fetchone(self, sql: str, params: tuple | list = ()) -> Any | None: ...

    async def close(self) -> None: ...


def open_writer(target: Path | str, max_bytes: int = 0,
                on_fatal: Callable[[BaseException], None] | None = None) -> Writer:
    """The writer for a database: an SQLite path or a postgresql:// URL."""
    return Writer(target, max_bytes=max_bytes, on_fatal=on_fatal)


def open_readers(target: Path | str, size: int = 2) -> Readers:
    """The read pool for the same database as `open_writer(target)`."""
    if isinstance(target, str) and pg.is_postgres_url(target):
        return pg.PgReaders(target, size)
    return SqliteReaders(Path(target), size)
