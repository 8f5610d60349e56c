"""Workflow definitions: versioned by content hash, disabled (never deleted) when their file goes away."""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any

from station_wf.deferral import after_commit
from station_wf.store.db import Readers, utcnow

_LATEST = "SELECT * FROM workflow_definitions WHERE workflow_id = ? ORDER BY version DESC LIMIT 1"
_VERSION = "SELECT * FROM workflow_definitions WHERE workflow_id = ? AND version = ?"


def content_hash(raw: str) -> str:
    return "sha256:" + hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True)
class Registered:
    workflow_id: str
    version: int
    created: bool          # a new version was written
    reactivated: bool      # the workflow had been disabled and is active again


def latest_row(conn: sqlite3.Connection, workflow_id: str) -> sqlite3.Row | None:
    return conn.execute(_LATEST, (workflow_id,)).fetchone()


def child_starters(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """(workflow id, definition JSON) of each workflow whose latest version is active and may start
    runs (`workflow.run`): the graph a new definition's cycle check is made against."""
    rows = conn.execute(
        """SELECT d.workflow_id, d.definition FROM workflow_definitions d
           WHERE d.status = 'active' AND d.definition LIKE '%workflow.run%'
             AND d.version = (SELECT MAX(x.version) FROM workflow_definitions x WHERE x.workflow_id = d.workflow_id)""").fetchall()
    return [(r["workflow_id"], r["definition"]) for r in rows]


def version_row(conn: sqlite3.Connection, workflow_id: str, version: int | None) -> sqlite3.Row | None:
    """Inside a writer transaction: one version's row, or the latest (None)."""
    return latest_row(conn, workflow_id) if version is None else conn.execute(_VERSION, (workflow_id, version)).fetchone()


_generation = itertools.count(1)
_written = [0]
"""Bumped by every definition write (in its transaction and again once it committed): cached heads
filled before the bump are not trusted after it."""


def _changed() -> None:
    _written[0] = next(_generation)


def _definitions_written() -> None:
    """A write to workflow_definitions: forget the cached heads now and once more after the commit (a
    start reading meanwhile may have cached the old head again)."""
    _changed()
    after_commit(_changed)


def latest_head(conn: sqlite3.Connection, workflow_id: str) -> tuple[int, str] | None:
    """Inside a writer transaction: (latest version, status), what a start from a cached head checks."""
    row = conn.execute("SELECT version, status FROM workflow_definitions WHERE workflow_id = ? ORDER BY version DESC LIMIT 1",
                       (workflow_id,)).fetchone()
    return None if row is None else (row["version"], row["status"])


def register(
    conn: sqlite3.Connection,
    definition: dict[str, Any],
    raw: str,
    *,
    source: str,
    source_file: str | None = None,
    environment: str | None = None,
) -> Registered:
    """Write a new version when the content changed; re-activate a disabled workflow otherwise."""
    wf_id = definition["id"]
    digest = content_hash(raw)
    _definitions_written()
    head = latest_row(conn, wf_id)
    if head is not None and head["content_hash"] == digest:
        reactivated = head["status"] != "active"
        if reactivated:
            conn.execute("UPDATE workflow_definitions SET status = 'active' WHERE workflow_id = ?", (wf_id,))
        return Registered(wf_id, head["version"], False, reactivated)
    version = 1 if head is None else head["version"] + 1
    conn.execute(
        """INSERT INTO workflow_definitions (workflow_id, version, version_label, name, description, content_hash,
               source, source_file, environment, status, definition, raw, created_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', ?, ?, ?)""",
        (
            wf_id, version, definition.get("versionLabel"), definition.get("name"), definition.get("description"),
            digest, source, source_file, environment, json.dumps(definition), raw, utcnow(),
        ),
    )
    if head is not None and head["status"] != "active":
        conn.execute("UPDATE workflow_definitions SET status = 'active' WHERE workflow_id = ?", (wf_id,))
    return Registered(wf_id, version, True, head is not None and head["status"] != "active")


def set_status(conn: sqlite3.Connection, workflow_id: str, status: str) -> int:
    _definitions_written()
    return conn.execute(
        "UPDATE workflow_definitions SET status = ? WHERE workflow_id = ? AND status != ?", (status, workflow_id, status)
    ).rowcount


def disable_missing_files(conn: sqlite3.Connection, environment: str, present: set[str]) -> list[str]:
    """Disable file-synced workflows of `environment` whose file is gone; their history stays."""
    rows = conn.execute(
        """SELECT d.workflow_id FROM workflow_definitions d
           WHERE d.version = (SELECT MAX(version) FROM workflow_definitions WHERE workflow_id = d.workflow_id)
             AND d.source = 'file' AND d.environment = ? AND d.status = 'active'""",
        (environment,),
    ).fetchall()
    gone = [r["workflow_id"] for r in rows if r["workflow_id"] not in present]
    for wf_id in gone:
        set_status(conn, wf_id, "disabled")
    return gone


@dataclass(frozen=True)
class Head:
    """A workflow's definition row (latest, or the version asked for) and its decoded definition."""
    row: sqlite3.Row
    definition: dict[str, Any]
    generation: int


class DefinitionCache:
    """Parsed definitions by (id, version), and the active head of each workflow id for starts.

    Versions are immutable, so (id, version) entries never go stale. Heads can: a write through this
    module forgets them (`_definitions_written`), and a start re-checks its head inside its own
    transaction (`latest_head`), so even a write by another process (`station-wf sync`) is seen."""

    MAX_HEADS = 4096

    def __init__(self) -> None:
        self._items: dict[tuple[str, int], dict[str, Any]] = {}
        self._heads: dict[tuple[str, int | None], Head] = {}
        self._lock = threading.Lock()

    def head(self, workflow_id: str, version: int | None) -> Head | None:
        """The cached active head (version None: the latest), if no definition write happened since."""
        found = self._heads.get((workflow_id, version))
        if found is None or found.generation != _written[0]:
            return None
        return found

    @staticmethod
    def generation() -> int:
        """Read before the head's row is read: a write in between makes the entry stale at once."""
        return _written[0]

    def put_head(self, version: int | None, row: sqlite3.Row, defn: dict[str, Any], generation: int) -> None:
        """Cache an active head (a disabled one is never cached: re-enabling must be seen at once)."""
        if row["status"] != "active":
            return
        with self._lock:
            if len(self._heads) >= self.MAX_HEADS:
                self._heads.clear()
            self._heads[(row["workflow_id"], version)] = Head(row, defn, generation)

    def forget_head(self, workflow_id: str) -> None:
        with self._lock:
            self._heads.pop((workflow_id, None), None)

    def get(self, conn: sqlite3.Connection, workflow_id: str, version: int) -> dict[str, Any]:
        key = (workflow_id, version)
        found = self._items.get(key)
        if found is not None:
            return found
        row = conn.execute(
            "SELECT definition FROM workflow_definitions WHERE workflow_id = ? AND version = ?", key
        ).fetchone()
        if row is None:
            raise LookupError(f"workflow {workflow_id!r} version {version} not found")
        defn = json.loads(row["definition"])
        with self._lock:
            self._items[key] = defn
        return defn

    def peek(self, workflow_id: str, version: int) -> dict[str, Any] | None:
        """The cached definition, without a connection (None when not loaded yet)."""
        return self._items.get((workflow_id, version))

    def put(self, workflow_id: str, version: int, defn: dict[str, Any]) -> None:
        with self._lock:
            self._items[(workflow_id, version)] = defn


def definition_status(conn: sqlite3.Connection, workflow_id: str, version: int) -> str | None:
    """The status a start must see inside its own transaction (a workflow disabled meanwhile cannot start)."""
    row = conn.execute("SELECT status FROM workflow_definitions WHERE workflow_id = ? AND version = ?",
                       (workflow_id, version)).fetchone()
    return None if row is None else row["status"]


# -- reads for the API (the readers' pool) ------------------------------------------------------
async def read_definition(readers: Readers, workflow_id: str, version: int | None = None) -> sqlite3.Row | None:
    """That version of the workflow, or its latest one when `version` is None."""
    if version is None:
        return await readers.fetchone(_LATEST, (workflow_id,))
    return await readers.fetchone(_VERSION, (workflow_id, version))


async def read_versions(readers: Readers, workflow_id: str) -> list[sqlite3.Row]:
    """Every version of the workflow, newest first."""
    return await readers.fetchall("SELECT * FROM workflow_definitions WHERE workflow_id = ? ORDER BY version DESC",
                                  (workflow_id,))


async def read_heads(readers: Readers) -> list[sqlite3.Row]:
    """Each workflow's latest version with `last_run_at` (its newest run's creation time), by id."""
    return await readers.fetchall(
        # The newest run by id (the (workflow_id, id) index: one seek per workflow, not a scan of its runs).
        """SELECT d.*, (SELECT r.created_at FROM workflow_runs r WHERE r.workflow_id = d.workflow_id
                        ORDER BY r.id DESC LIMIT 1) AS last_run_at
           FROM workflow_definitions d
           WHERE d.version = (SELECT MAX(version) FROM workflow_definitions WHERE workflow_id = d.workflow_id)
           ORDER BY d.workflow_id""")


# -- issue 17: file sync status, enable, rollback ------------------------------------------------------
_FILE_SOURCES = """SELECT d.workflow_id, d.version, d.source_file, d.environment FROM workflow_definitions d
   WHERE d.source = 'file' AND d.source_file IS NOT NULL
     AND d.version = (SELECT MAX(version) FROM workflow_definitions
                      WHERE workflow_id = d.workflow_id AND source = 'file' AND source_file IS NOT NULL)"""


async def read_file_sources(readers: Readers, workflow_id: str | None = None) -> list[sqlite3.Row]:
    """Each workflow's newest version that came from a file (its file and environment): what a file sync
    compares the latest stored version against. A PUT after the file keeps the file tracked."""
    if workflow_id is None:
        return await readers.fetchall(_FILE_SOURCES)
    return await readers.fetchall(_FILE_SOURCES + " AND d.workflow_id = ?", (workflow_id,))
