"""Installed bundles (issue 19): one row per bundle and environment, written in the transaction that
syncs the bundle's workflows, so the row and the workflow versions it lists agree."""

from __future__ import annotations

from typing import Any

from station_wf.store.db import Readers, utcnow
from station_wf.store.jsontext import dumps, loads

__all__ = ["bundle_of", "get", "latest_version", "list_bundles", "record"]


def record(conn: Any, name: str, environment: str, version: str, content_hash: str, description: str | None,
           workflows: list[dict[str, Any]], agents: list[str], mcp_servers: list[str]) -> None:
    stamp = utcnow()
    conn.execute(
        "INSERT INTO bundles (name, environment, version, content_hash, description, workflows, agents, mcp_servers,"
        " installed_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name, environment) DO UPDATE SET"
        " version = excluded.version, content_hash = excluded.content_hash, description = excluded.description,"
        " workflows = excluded.workflows, agents = excluded.agents, mcp_servers = excluded.mcp_servers,"
        " updated_at = excluded.updated_at",
        (name, environment, version, content_hash, description, dumps(workflows), dumps(agents), dumps(mcp_servers),
         stamp, stamp))


def get(conn: Any, name: str, environment: str) -> Any | None:
    return conn.execute("SELECT * FROM bundles WHERE name = ? AND environment = ?", (name, environment)).fetchone()


def latest_version(conn: Any, workflow_id: str) -> int | None:
    row = conn.execute("SELECT MAX(version) FROM workflow_definitions WHERE workflow_id = ?", (workflow_id,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


async def bundle_of(readers: Readers, environment: str | None, workflow_id: str) -> dict[str, Any] | None:
    """The bundle (name, version) that installed `workflow_id` into `environment`, or None."""
    if environment is None:
        return None
    for row in await readers.fetchall("SELECT name, version, workflows FROM bundles WHERE environment = ? ORDER BY name",
                                      (environment,)):
        if any(w.get("id") == workflow_id for w in loads(row["workflows"])):
            return {"name": row["name"], "version": row["version"]}
    return None


async def list_bundles(readers: Readers) -> list[Any]:
    return await readers.fetchall("SELECT * FROM bundles ORDER BY name, environment")
