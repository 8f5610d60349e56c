"""What a failing SQLite means for the callers: which errors break a whole group, and how the API says so.

SQLite reports a full disk, an I/O error or an out-of-memory inside a transaction by rolling the
*whole* transaction back (savepoints included), so the writer must know these apart from an error of
one caller's function (a constraint, a bug) that only undoes that caller's savepoint. On Postgres the
storage errors are a lost connection or a server that refuses work (psycopg's OperationalError: the
writer reconnects, never gives up) and a full disk (DiskFull: 507).
"""

from __future__ import annotations

import sqlite3

import psycopg

from station_wf.errors import ServiceError

# Primary result codes (the low byte of an extended code), from sqlite3.h.
SQLITE_NOMEM = 7
SQLITE_READONLY = 8
SQLITE_INTERRUPT = 9
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
SQLITE_NOTADB = 26

# Errors about the storage itself rather than about what a caller tried to write.
STORAGE_CODES = frozenset({SQLITE_NOMEM, SQLITE_READONLY, SQLITE_INTERRUPT, SQLITE_IOERR, SQLITE_CORRUPT,
                           SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB})
# Of those, the ones a restart may cure (a broken file handle, a wedged process). A full database is
# not among them: restarting cannot free space, and reads keep working while writes answer 507.
FATAL_CODES = frozenset({SQLITE_NOMEM, SQLITE_READONLY, SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_CANTOPEN, SQLITE_NOTADB})


def primary_code(exc: BaseException) -> int | None:
    """The primary SQLite result code of an error, or None for anything that is not an SQLite error."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(exc, sqlite3.Error) or not isinstance(code, int):
        return None
    return code & 0xFF


def is_storage_error(exc: BaseException) -> bool:
    return primary_code(exc) in STORAGE_CODES or isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def _is_full(exc: BaseException) -> bool:
    return primary_code(exc) == SQLITE_FULL or isinstance(exc, psycopg.errors.DiskFull)


def is_fatal(exc: BaseException) -> bool:
    cause = exc.__cause__ if isinstance(exc, StorageError) and exc.__cause__ is not None else exc
    return primary_code(cause) in FATAL_CODES


class StorageError(ServiceError):
    """A write that was not stored because the database could not store it (the API answers 507/503).

    Nothing of the caller's transaction was committed, so retrying later is safe."""

    def __init__(self, cause: BaseException) -> None:
        where = "postgres" if isinstance(cause, psycopg.Error) else "sqlite"
        if _is_full(cause):
            super().__init__(507, "storage_full",
                             "the database is full (STATION_DATABASE_MAX_BYTES or the disk); nothing was stored",
                             {where: str(cause)})
        else:
            super().__init__(503, "storage_unavailable", f"the database could not store this write: {cause}",
                             {where: str(cause)})


def as_storage_error(exc: BaseException) -> StorageError:
    if isinstance(exc, StorageError):
        return exc
    err = StorageError(exc)
    err.__cause__ = exc
    return err


def injected_ioerr(where: str) -> sqlite3.OperationalError:
    """The error a `STATION_FAULT_ERRORS` test hook raises: what SQLite raises on a failing disk."""
    exc = sqlite3.OperationalError(f"disk I/O error (injected at {where})")
    exc.sqlite_errorcode = SQLITE_IOERR  # type: ignore[attr-defined]
    exc.sqlite_errorname = "SQLITE_IOERR"  # type: ignore[attr-defined]
    return exc
