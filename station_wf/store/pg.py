"""Postgres through psycopg 3: a connection that speaks the store's SQL, the readers, the migrations.

The store's transaction functions are written once, against `conn.execute(sql, params)` with `?`
placeholders and rows read by index or by column name (what sqlite3 gives). `PgConnection` keeps that
contract on psycopg: placeholders translated once per statement text (cached), rows that behave like
`sqlite3.Row`, booleans stored as the integers the schema declares. What has no portable spelling is
a fragment of `store/dialect.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.adapt import Dumper, Loader
from psycopg.pq import TransactionStatus
from psycopg.types.string import StrDumperUnknown

from station_wf.store.dialect import POSTGRES

log = logging.getLogger(__name__)

MIGRATION_LOCK = 0x5354_4E57_4D49_47  # pg_advisory_lock key: one replica migrates at a time
WRITE_LOCK = 0x5354_4E57_5752_4954     # pg_advisory_xact_lock key: one write transaction at a time
CHANGES_CHANNEL = "station_wf_changes"  # NOTIFY channel: a replica committed (payload: its boot id)


def is_postgres_url(url: str | None) -> bool:
    return bool(url) and url.split(":", 1)[0] in ("postgres", "postgresql")  # type: ignore[union-attr]


# -- statements ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4096)
def translate(sql: str) -> str:
    """The store's SQL for psycopg: `?` -> `%s` and a literal `%` doubled, outside quoted text only."""
    out: list[str] = []
    quote: str | None = None
    for ch in sql:
        if quote is not None:
            out.append("%%" if ch == "%" else ch)
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    return "".join(out)


# -- rows ------------------------------------------------------------------------------------------
class Row(tuple):
    """A result row readable by position and by column name, like `sqlite3.Row` (and `dict(row)`)."""

    __slots__ = ()
    _index: dict[str, int] = {}
    _names: list[str] = []

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return self._names


@functools.lru_cache(maxsize=1024)
def _row_class(names: tuple[str, ...]) -> type[Row]:
    return type("Row", (Row,), {"__slots__": (), "_index": {n: i for i, n in enumerate(names)}, "_names": list(names)})


def _row_factory(cursor: Any) -> Any:
    desc = cursor.description
    if desc is None:
        return tuple
    cls = _row_class(tuple(d.name for d in desc))
    return cls


class _BoolAsInt(Dumper):
    """The schema keeps flags in INTEGER columns (as SQLite does): True is 1, not a boolean."""

    oid = psycopg.postgres.types["int8"].oid

    def dump(self, obj: Any) -> bytes:
        return b"1" if obj else b"0"


class _NumericAsNumber(Loader):
    """SUM() and friends answer `numeric`: an int when it is whole, else a float (as SQLite gives)."""

    def load(self, data: Any) -> Any:
        text = bytes(data).decode()
        try:
            return int(text)
        except ValueError:
            return float(text)


class _TextWithoutNul(StrDumperUnknown):
    """Postgres text cannot hold U+0000 (SQLite's can): a raw NUL from outside (a webhook receiver's
    body, an agent's error text) is stored as U+FFFD instead of failing its whole transaction."""

    def dump(self, obj: str) -> Any:
        return super().dump(obj.replace("\x00", "\ufffd") if "\x00" in obj else obj)


def _adapt(conn: psycopg.Connection | psycopg.AsyncConnection) -> None:
    conn.adapters.register_dumper(bool, _BoolAsInt)
    conn.adapters.register_dumper(str, _TextWithoutNul)
    conn.adapters.register_loader("numeric", _NumericAsNumber)


# A replica that stalls (paused, cut off) must not hold the deployment's write lock, nor a half-open
# socket wedge a writer or a listener: the server ends an idle transaction, waits for the lock are
# bounded, and dead peers are noticed by TCP keepalives and the user timeout.
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
               "tcp_user_timeout": 30_000, "connect_timeout": 10}
_WRITER_OPTIONS = "-c idle_in_transaction_session_timeout=15000 -c lock_timeout=30000"


# -- the writer's connection -----------------------------------------------------------------------
class PgConnection:
    """A sync psycopg connection in autocommit mode (the writer issues BEGIN/COMMIT itself), with the
    sqlite3 surface the transaction functions use: execute, executemany, in_transaction."""

    dialect = POSTGRES

    def __init__(self, url: str) -> None:
        self.url = url
        self.raw = psycopg.connect(url, autocommit=True, row_factory=_row_factory, options=_WRITER_OPTIONS, **_KEEPALIVES)
        _adapt(self.raw)

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> psycopg.Cursor:
        return self.raw.execute(translate(sql), params, prepare=None)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> psycopg.Cursor:
        cur = self.raw.cursor()
        cur.executemany(translate(sql), rows)
        return cur

    @property
    def in_transaction(self) -> bool:
        """False once the server or the connection ended the transaction (what SQLite says after rolling
        back a whole group): the group is broken, not just one savepoint."""
        return self.raw.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR)

    @property
    def broken(self) -> bool:
        return self.raw.closed or self.raw.broken

    def close(self) -> None:
        self.raw.close()


# -- readers ---------------------------------------------------------------------------------------
class PgReaders:
    """Async read connections for the API, the hub and the relays (autocommit: each read sees every
    commit before it, of every replica). A connection that broke is replaced on its next use."""

    dialect = POSTGRES

    def __init__(self, url: str, size: int = 2) -> None:
        self.url = url
        self.size = size
        self._conns: list[psycopg.AsyncConnection | None] = []
        self._next = 0

    async def _connect(self) -> psycopg.AsyncConnection:
        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, row_factory=_row_factory, **_KEEPALIVES)
        _adapt(conn)
        return conn

    async def open(self) -> None:
        self._conns = [await self._connect() for _ in range(self.size)]

    async def _pick(self) -> tuple[int, psycopg.AsyncConnection]:
        i = self._next % len(self._conns)
        self._next += 1
        conn = self._conns[i]
        if conn is None or conn.closed or conn.broken:
            conn = self._conns[i] = await self._connect()
        return i, conn

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        i, conn = await self._pick()
        try:
            cur = await conn.execute(translate(sql), params)
            return await cur.fetchall()
        except psycopg.OperationalError:
            if conn.broken:
                self._conns[i] = None  # reconnect on the next use; this read fails (503 to an API caller)
            raise

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def close(self) -> None:
        for conn in self._conns:
            if conn is not None:
                await conn.close()
        self._conns.clear()


# -- migrations ------------------------------------------------------------------------------------
_REWRITES = (
    (re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bTEXT\b"), 'TEXT COLLATE "C"'),
)


def migration_sql(statement: str) -> str:
    """A migration statement (written for SQLite, in the common subset) as Postgres runs it: 64-bit
    integers, double-precision reals, identity columns, and byte-order text (SQLite compares text by
    bytes; so must every ORDER BY and cursor here)."""
    for pattern, replacement in _REWRITES:
        statement = pattern.sub(replacement, statement)
    return statement


def apply_migrations(conn: PgConnection, files: list[Path], split: Any, now: str) -> list[str]:
    """Apply the migrations not yet recorded, each in its own transaction, under a session advisory
    lock so replicas starting together migrate once."""
    raw = conn.raw
    raw.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        raw.execute(migration_sql("CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"))
        done = {row[0] for row in raw.execute("SELECT version FROM schema_migrations")}
        applied = []
        for file in files:
            if file.stem in done:
                continue
            with raw.transaction():
                for statement in split(file.read_text()):
                    raw.execute(migration_sql(statement))
                raw.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (%s, %s)", (file.stem, now))
            applied.append(file.stem)
        return applied
    finally:
        raw.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


# -- change notices --------------------------------------------------------------------------------
class ChangeFeed:
    """LISTENs for the other replicas' commits and calls `on_change` for each (the hub, the relays and
    the timers wake as they do after a local commit). Reconnects with a back-off; after a reconnect it
    calls `on_change` once, since notices sent while it was away are gone."""

    def __init__(self, url: str, boot: str, on_change: Callable[[], None]) -> None:
        self.url = url
        self.boot = boot
        self.on_change = on_change
        self.notices = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True, **_KEEPALIVES) as conn:
                    await conn.execute(f"LISTEN {CHANGES_CHANNEL}")
                    self.on_change()
                    delay = 0.1
                    async for notice in conn.notifies():
                        if notice.payload != self.boot:
                            self.notices += 1
                            self.on_change()
                        if self._stop.is_set():
                            return
            except (psycopg.Error, OSError) as exc:
                log.warning("postgres change feed: %s; reconnecting in %.1f s", exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, 5.0)

    def stop(self) -> None:
        self._stop.set()
