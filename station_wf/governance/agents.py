"""Per-agent `maxConcurrency` (the agent file's front matter): how many steps of one agent run at
once across the deployment, for LLM quota. Checked where the worker begins a step, in its
transaction, counted from the store (steps still RUNNING that hold a slot), so it survives a kill -9
(a dead process's step stops counting once the step is no longer RUNNING).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from station_wf.agents.catalog import AgentCatalog, AgentFileError, split_agent_ref
from station_wf.governance.settings import GOVERNANCE
from station_wf.store import governance_agents

AGENT_ACTION = "agent.run"
RETRY_DELAY_S = 1.0
"""A step refused a slot is tried again this much later (a durable retry timer)."""


def agent_name(action: str, step_input: Any) -> str | None:
    if action != AGENT_ACTION or not isinstance(step_input, dict) or not isinstance(step_input.get("agent"), str):
        return None
    return step_input["agent"]


def take_slot(conn: sqlite3.Connection, step_row: int, run_id: str, action: str, step_input: Any) -> bool:
    """True when the step may run now (it holds one of its agent's slots, or its agent has no limit)."""
    name = agent_name(action, step_input)
    if name is None:
        return True
    limit = GOVERNANCE.agent_limit(name)
    if limit is None:
        return True
    if governance_agents.running(conn, name, step_row) >= limit:
        return False
    governance_agents.hold(conn, step_row, name, run_id)
    return True


def limit_lookup(catalog: AgentCatalog) -> Callable[[str], int | None]:
    """`name` or `name@env` -> that agent file's `maxConcurrency` (None: none, or no such agent: the
    executor reports a missing agent itself)."""
    def limit(ref: str) -> int | None:
        name, env = split_agent_ref(ref)
        try:
            spec = (catalog.sibling(env) if env else catalog).get(name)
        except AgentFileError:
            return None
        return spec.max_concurrency if spec is not None else None

    return limit
