"""The SQL of per-agent `maxConcurrency` (`governance/agents.py`)."""

from __future__ import annotations

import sqlite3

from station_wf.store.db import utcnow

_RUNNING = ("SELECT COUNT(*) FROM governance_agent_slots a JOIN workflow_run_steps s ON s.id = a.step_row"
            " WHERE a.agent = ? AND s.status = 'RUNNING' AND a.step_row <> ?")


def running(conn: sqlite3.Connection, agent: str, step_row: int) -> int:
    """Steps of `agent` holding a slot and still RUNNING (other than this one, which may be redelivered);
    slots of steps that ended are swept here, so the table stays as small as the running set."""
    conn.execute("DELETE FROM governance_agent_slots WHERE agent = ? AND step_row IN (SELECT a.step_row FROM"
                 " governance_agent_slots a JOIN workflow_run_steps s ON s.id = a.step_row WHERE a.agent = ?"
                 " AND s.status <> 'RUNNING')", (agent, agent))
    return int(conn.execute(_RUNNING, (agent, step_row)).fetchone()[0])


def hold(conn: sqlite3.Connection, step_row: int, agent: str, run_id: str) -> None:
    conn.execute("INSERT INTO governance_agent_slots (step_row, agent, run_id, created_at) VALUES (?, ?, ?, ?)"
                 " ON CONFLICT (step_row) DO NOTHING", (step_row, agent, run_id, utcnow()))
