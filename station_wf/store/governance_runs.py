"""Correlation ids and tags of runs (issue 18): written at the start, filtered on by the run list."""

from __future__ import annotations

import json
import sqlite3
from typing import Any


def set_meta(conn: sqlite3.Connection, run_id: str, correlation_id: str | None, tags: dict[str, str]) -> None:
    conn.execute("UPDATE workflow_runs SET correlation_id = ?, tags = ? WHERE run_id = ?",
                 (correlation_id, json.dumps(tags, sort_keys=True) if tags else None, run_id))
    if tags:
        conn.executemany("INSERT INTO workflow_run_tags (run_id, name, value) VALUES (?, ?, ?)",
                         [(run_id, name, value) for name, value in sorted(tags.items())])


def list_filters(correlation_id: str | None, tags: dict[str, str], started_after: str | None,
                 started_before: str | None) -> tuple[list[str], list[Any]]:
    """WHERE terms (and their parameters) for the run list: all must hold. Times compare as the
    stored ISO-8601 UTC text (`created_at`: when the start was accepted)."""
    where: list[str] = []
    params: list[Any] = []
    if correlation_id is not None:
        where.append("correlation_id = ?")
        params.append(correlation_id)
    for name, value in sorted(tags.items()):
        where.append("EXISTS (SELECT 1 FROM workflow_run_tags t WHERE t.run_id = workflow_runs.run_id"
                     " AND t.name = ? AND t.value = ?)")
        params.extend((name, value))
    if started_after is not None:
        where.append("created_at >= ?")
        params.append(started_after)
    if started_before is not None:
        where.append("created_at < ?")
        params.append(started_before)
    return where, params
