"""Where runs come from and what they started: re-runs, child runs, continue-as-new, redrives (issue 16).

The columns are migration 0016's. Writer-side functions take the writer's connection; the async ones
are the readers' (the API's run documents and the children list).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from station_wf.core import model
from station_wf.store import vocab as v
from station_wf.store.db import Readers
from station_wf.store.jsontext import dumps, loads
from station_wf.store.run_unit import step_view


@dataclass(frozen=True)
class Origin:
    """What a new run records about where it came from (all optional: a plain start has none)."""

    parent_run_id: str | None = None
    parent_step_id: str | None = None
    parent_attempt: int | None = None
    parent_waits: bool = False
    depth: int = 0
    lineage: tuple[str, ...] = ()  # workflow ids from the root down to the parent
    rerun_of: str | None = None
    continued_from: str | None = None


def record_origin(conn: sqlite3.Connection, run_id: str, origin: Origin) -> None:
    """Written right after the run's insert, in the same transaction."""
    conn.execute(
        """UPDATE workflow_runs SET parent_run_id = ?, parent_step_id = ?, parent_attempt = ?, parent_waits = ?, depth = ?,
               lineage = ?, rerun_of = ?, continued_from = ? WHERE run_id = ?""",
        (origin.parent_run_id, origin.parent_step_id, origin.parent_attempt, int(origin.parent_waits), origin.depth,
         dumps(list(origin.lineage)) if origin.lineage else None, origin.rerun_of, origin.continued_from, run_id))


def origin_of(conn: sqlite3.Connection, run_id: str) -> Origin | None:
    row = conn.execute(
        """SELECT parent_run_id, parent_step_id, parent_attempt, parent_waits, depth, lineage, rerun_of, continued_from
           FROM workflow_runs WHERE run_id = ?""", (run_id,)).fetchone()
    if row is None:
        return None
    return Origin(row["parent_run_id"], row["parent_step_id"], row["parent_attempt"], bool(row["parent_waits"]), row["depth"] or 0,
                  tuple(loads(row["lineage"])) if row["lineage"] else (), row["rerun_of"], row["continued_from"])


def parent_link(conn: sqlite3.Connection, run_id: str) -> Origin | None:
    """The run's parent step as the columns name it now (None for a top-level run)."""
    origin = origin_of(conn, run_id)
    return origin if origin is not None and origin.parent_run_id else None


def waited_child(conn: sqlite3.Connection, parent_run_id: str, step_id: str, attempt: int) -> tuple[str, str] | None:
    """(run id, status) of the run a step attempt waited for: the last of a continue-as-new chain."""
    row = conn.execute(
        """SELECT run_id, status FROM workflow_runs WHERE parent_run_id = ? AND parent_step_id = ? AND parent_attempt = ?
             AND parent_waits = 1 AND continued_as IS NULL ORDER BY id DESC LIMIT 1""",
        (parent_run_id, step_id, attempt)).fetchone()
    return None if row is None else (row["run_id"], row["status"])


def waited_children_of_step(conn: sqlite3.Connection, parent_run_id: str, step_id: str, attempt: int) -> list[str]:
    """The active runs a step attempt waits for (its child, or that child's continue-as-new successor)."""
    rows = conn.execute(
        f"""SELECT run_id FROM workflow_runs WHERE parent_run_id = ? AND parent_step_id = ? AND parent_attempt = ?
              AND parent_waits = 1 AND status NOT IN {v.TERMINAL_RUNS} ORDER BY id""",
        (parent_run_id, step_id, attempt)).fetchall()
    return [r["run_id"] for r in rows]


def repoint_parent(conn: sqlite3.Connection, run_id: str, attempt: int) -> None:
    """A redriven parent step's new attempt now waits for this child."""
    conn.execute("UPDATE workflow_runs SET parent_attempt = ? WHERE run_id = ?", (attempt, run_id))


def head_of(conn: sqlite3.Connection, run_id: str) -> sqlite3.Row | None:
    """A run's workflow, version, status and traceparent, without decoding its context."""
    return conn.execute("SELECT workflow_id, workflow_version, status, traceparent FROM workflow_runs WHERE run_id = ?",
                        (run_id,)).fetchone()


def mark_continued(conn: sqlite3.Connection, run_id: str, successor: str) -> None:
    conn.execute("UPDATE workflow_runs SET continued_as = ? WHERE run_id = ?", (successor, run_id))


def run_error(conn: sqlite3.Connection, run_id: str) -> str | None:
    """The run's error as stored (JSON text), for the outcome a child hands back to its parent."""
    row = conn.execute("SELECT error FROM workflow_runs WHERE run_id = ?", (run_id,)).fetchone()
    return None if row is None else row["error"]


def count_redrive(conn: sqlite3.Connection, run_id: str) -> int:
    """The run's redrive number (1 for its first redrive)."""
    return int(conn.execute("UPDATE workflow_runs SET redrive_count = redrive_count + 1 WHERE run_id = ? "
                            "RETURNING redrive_count", (run_id,)).fetchone()[0])


def latest_attempts(conn: sqlite3.Connection, run_id: str) -> list[model.StepView]:
    """The latest attempt of every step of the run, ordered by when that attempt was created."""
    latest: dict[str, sqlite3.Row] = {}
    for row in conn.execute("SELECT * FROM workflow_run_steps WHERE run_id = ? ORDER BY id", (run_id,)):
        latest.pop(row["step_id"], None)  # re-inserted: the dict's order is the latest attempts' order
        latest[row["step_id"]] = row
    return [step_view(r) for r in latest.values()]


def active_children(conn: sqlite3.Connection, run_id: str, statuses: Collection[str] | None = None,
                    waited_only: bool = False) -> list[str]:
    """The run's child runs that have not ended (or are in `statuses`), oldest first; `waited_only`:
    those a parent step waits for (a `wait: false` child outlives its parent)."""
    wanted = tuple(statuses) if statuses is not None else None
    rows = conn.execute(f"SELECT run_id, status, parent_waits FROM workflow_runs WHERE parent_run_id = ? "
                        f"AND status NOT IN {v.TERMINAL_RUNS} ORDER BY id", (run_id,)).fetchall()
    return [r["run_id"] for r in rows if (wanted is None or r["status"] in wanted) and (r["parent_waits"] or not waited_only)]


async def children(readers: Readers, run_id: str, limit: int = 1000) -> list[sqlite3.Row]:
    return await readers.fetchall("SELECT * FROM workflow_runs WHERE parent_run_id = ? ORDER BY id LIMIT ?", (run_id, limit))


def lineage_to_api(row: Any) -> dict[str, Any]:
    """The run document's lineage fields (a row read before migration 0016 has none of them)."""
    keys = row.keys() if hasattr(row, "keys") else ()
    if "parent_run_id" not in keys:
        return {"parent": None, "rerunOf": None, "continuedFrom": None, "continuedAs": None, "depth": 0, "redriveCount": 0}
    parent = ({"runId": row["parent_run_id"], "stepId": row["parent_step_id"], "attempt": row["parent_attempt"]}
              if row["parent_run_id"] else None)
    return {"parent": parent, "rerunOf": row["rerun_of"], "continuedFrom": row["continued_from"],
            "continuedAs": row["continued_as"], "depth": row["depth"] or 0, "redriveCount": row["redrive_count"] or 0}
