"""Copy a stopped single node's SQLite database into an empty Postgres database (`station-wf migrate-store`).

Why a copy of every table rather than an export of runs: the daemon's state is the rows (runs, their
events, steps, timers, approvals, signals, the outbox, the relays' cursors), and a run resumes from
exactly those rows on any store. The copy runs in ONE Postgres transaction under the deployment's
write lock, so a replica started too early sees either nothing or everything, and a failure leaves
the target as empty as it was. Identity sequences move past the highest id SQLite ever handed out
(`sqlite_sequence`, not just the surviving rows: retention deletes rows, and event ids are the SSE
cursors clients hold, never to be reused).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from station_wf.store import pg
from station_wf.store.db import MIGRATIONS_DIR, _split_sql, utcnow

BOOKKEEPING = {"schema_migrations", "sqlite_sequence"}  # each store keeps its own


class MigrateStoreError(Exception):
    """A refusal with a message for the operator; nothing was written to the target."""


@dataclass
class Copied:
    """What was copied: rows per table (in copy order), and where each identity sequence now stands."""

    rows: dict[str, int] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)
    migrations_applied: list[str] = field(default_factory=list)


def code_versions(migrations_dir: Path = MIGRATIONS_DIR) -> list[str]:
    return sorted(f.stem for f in migrations_dir.glob("*.sql"))


def open_source(path: Path) -> sqlite3.Connection:
    """The SQLite file, in one read transaction from here on (a consistent snapshot of every table)."""
    if not path.is_file():
        raise MigrateStoreError(f"no SQLite database at {path}")
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise MigrateStoreError(f"{path} is not a readable SQLite database: {exc}") from None
    return conn


def check_source_version(src: sqlite3.Connection, path: Path, expected: list[str]) -> None:
    """The source's schema must be exactly this code's: a copy maps tables one to one."""
    try:
        have = sorted(r[0] for r in src.execute("SELECT version FROM schema_migrations"))
    except sqlite3.OperationalError:
        raise MigrateStoreError(f"{path} has no schema_migrations table: not a station-wf database") from None
    newer = sorted(set(have) - set(expected))
    older = sorted(set(expected) - set(have))
    if newer:
        raise MigrateStoreError(
            f"{path} was migrated by a newer station-wf (it has {', '.join(newer)}, unknown to this version): "
            "run migrate-store from that version")
    if older:
        raise MigrateStoreError(
            f"{path} is older than this version (missing {', '.join(older)}): start this version's daemon on it "
            "once (it migrates at start-up), stop it, then run migrate-store")


def source_tables(src: sqlite3.Connection) -> dict[str, list[str]]:
    """Table -> its columns, parents before children (foreign keys are checked row by row in Postgres)."""
    names = [r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
             if r[0] not in BOOKKEEPING and not r[0].startswith("sqlite_")]
    parents = {t: {r[2] for r in src.execute(f'PRAGMA foreign_key_list("{t}")')} - {t} for t in names}
    ordered: list[str] = []
    while len(ordered) < len(names):  # at most len(names) rounds
        ready = [t for t in names if t not in ordered and parents[t] <= set(ordered)]
        if not ready:
            raise MigrateStoreError(f"foreign keys form a cycle among {sorted(set(names) - set(ordered))}")
        ordered.extend(ready)
    return {t: [r[1] for r in src.execute(f'PRAGMA table_info("{t}")')] for t in ordered}


def high_water_marks(src: sqlite3.Connection) -> dict[str, int]:
    """The highest id each AUTOINCREMENT table ever handed out (absent when SQLite never kept one)."""
    try:
        return {name: int(seq) for name, seq in src.execute("SELECT name, seq FROM sqlite_sequence")}
    except sqlite3.OperationalError:  # no AUTOINCREMENT table has been written yet
        return {}


def target_columns(raw: psycopg.Connection) -> dict[str, dict[str, str]]:
    """Table -> column -> data type, in the target's current schema."""
    out: dict[str, dict[str, str]] = {}
    for table, column, kind in raw.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema()"):
        out.setdefault(table, {})[column] = kind
    return out


def identity_columns(raw: psycopg.Connection) -> dict[str, str]:
    return {t: c for t, c in raw.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND is_identity = 'YES'")}


def _converter(kind: str) -> Callable[[Any], Any] | None:
    """SQLite keeps what it was given; Postgres parses COPY text by the column's type. A whole float in a
    BIGINT column (SQLite's REAL affinity round trip) would not parse as one."""
    if kind == "bigint":
        return lambda v: int(v) if isinstance(v, float) and v.is_integer() else v
    if kind == "text":
        return lambda v: v.decode() if isinstance(v, bytes) else v
    return None


def check_target(raw: psycopg.Connection, tables: dict[str, list[str]], expected: list[str]) -> dict[str, dict[str, str]]:
    """Same schema version and the same columns as the source; every table empty. Returns the target's columns."""
    have = sorted(r[0] for r in raw.execute("SELECT version FROM schema_migrations"))
    if have != expected:
        raise MigrateStoreError(f"the target's schema ({have[-1] if have else 'none'}) is not this version's "
                                f"({expected[-1]}): start it with this version, or use an empty database")
    columns = target_columns(raw)
    for table, cols in tables.items():
        missing = set(cols) - set(columns.get(table, {}))
        if missing:
            raise MigrateStoreError(f"the target's table {table} lacks column(s) {sorted(missing)}")
    refuse_rows(raw, columns)
    return columns


def refuse_rows(raw: psycopg.Connection, columns: dict[str, dict[str, str]]) -> None:
    """Refuse a target holding any row: a copy never merges into a deployment's data."""
    for table in sorted(set(columns) - BOOKKEEPING):
        if raw.execute(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(sql.Identifier(table))).fetchone():
            raise MigrateStoreError(f"the target database is not empty (table {table} has rows): "
                                    "migrate-store copies into an empty database only")


def copy_table(src: sqlite3.Connection, raw: psycopg.Connection, table: str, cols: list[str],
               kinds: dict[str, str]) -> int:
    """Stream one table through COPY; returns its row count."""
    convert = [(_converter(kinds[c]) or (lambda v: v)) for c in cols]
    source_cols = ", ".join(f'"{c}"' for c in cols)
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c in cols))
    count = 0
    with raw.cursor() as cur, cur.copy(statement) as copy:
        for row in src.execute(f'SELECT {source_cols} FROM "{table}"'):
            copy.write_row([f(v) for f, v in zip(convert, row, strict=True)])
            count += 1
    return count


def reset_sequences(raw: psycopg.Connection, identities: dict[str, str], marks: dict[str, int]) -> dict[str, int]:
    """Each identity's next value past both the copied rows and SQLite's high-water mark."""
    out = {}
    for table, column in sorted(identities.items()):
        top = raw.execute(sql.SQL("SELECT COALESCE(MAX({}), 0) FROM {}").format(
            sql.Identifier(column), sql.Identifier(table))).fetchone()[0]
        last = max(int(top), marks.get(table, 0))
        seq = raw.execute("SELECT pg_get_serial_sequence(%s, %s)", (table, column)).fetchone()[0]
        if last > 0:
            raw.execute("SELECT setval(%s, %s, true)", (seq, last))
        else:
            raw.execute("SELECT setval(%s, 1, false)", (seq,))
        out[table] = last + 1
    return out


def migrate(source: Path, url: str, migrations_dir: Path = MIGRATIONS_DIR) -> Copied:
    """Copy `source` into the empty Postgres database at `url` (migrated here first when it has no schema).

    The caller holds the source's data-directory lock (no daemon writes it meanwhile)."""
    expected = code_versions(migrations_dir)
    src = open_source(source)
    try:
        check_source_version(src, source, expected)
        tables = source_tables(src)
        marks = high_water_marks(src)
        try:
            target = pg.PgConnection(url)
        except psycopg.Error as exc:
            raise MigrateStoreError(f"cannot connect to the target database: {exc}".strip()) from None
        try:
            result = Copied()
            refuse_rows(target.raw, target_columns(target.raw))  # before migrating it, too
            result.migrations_applied = pg.apply_migrations(
                target, sorted(migrations_dir.glob("*.sql")), _split_sql, utcnow())
            raw = target.raw
            with raw.transaction():
                raw.execute("SELECT pg_advisory_xact_lock(%s)", (pg.WRITE_LOCK,))  # no replica writes meanwhile
                columns = check_target(raw, tables, expected)
                for table, cols in tables.items():
                    result.rows[table] = copy_table(src, raw, table, cols, columns[table])
                result.sequences = reset_sequences(raw, identity_columns(raw), marks)
            return result
        except psycopg.Error as exc:
            raise MigrateStoreError(f"the copy failed and was rolled back (the target is unchanged): {exc}") from None
        finally:
            target.close()
    finally:
        src.close()
