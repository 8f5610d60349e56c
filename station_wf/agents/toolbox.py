"""What an agent's `tools:` mean: MCP tools of its environment's servers, and other agents (issue 20).

`__get_pods` (Station's spelling) or `get_pods` is the tool `get_pods` of the first of the environment's
servers, in server-name order, that offers it; `grafana/get_dashboard` names the server explicitly, and
is how a clash between two servers is settled (the clash is also listed in the step's metadata).
`__agent_<name>` is the agent of the same environment whose id (or display name), lowercased with
`-`, `.` and spaces as `_`, is `<name>` (Station's agents-as-tools naming).

Servers are started lazily in name order, only until every wanted tool is found, so an agent never
waits on a server it does not use; a server that cannot start fails the step naming it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from station_wf.agents.catalog import AgentCatalog, AgentSpec
from station_wf.executors.base import StepError
from station_wf.mcp.pool import McpPool, McpUnavailable, ToolInfo

AGENT_PREFIX = "__agent_"
_FN_BAD = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class Route:
    """Where a function the model may call goes."""

    function: str
    kind: str  # "mcp" | "agent"
    server: str | None = None
    tool: str | None = None
    agent: AgentSpec | None = None


@dataclass
class Toolbox:
    functions: list[dict[str, Any]] = field(default_factory=list)  # the Chat Completions `tools` parameter
    routes: dict[str, Route] = field(default_factory=dict)
    clashes: dict[str, list[str]] = field(default_factory=dict)  # tool -> servers offering it (first wins)


def agent_key(name: str) -> str:
    return re.sub(r"[-. ]+", "_", name.strip().lower())


def function_name(entry: str) -> str:
    """The name the model sees: the entry without Station's `__`, safe for every OpenAI-compatible server."""
    return _FN_BAD.sub("_", entry.removeprefix("__").replace("/", "__"))[:64] or "tool"


def _function(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    params = schema if schema.get("type") == "object" else {"type": "object", "properties": {}}
    return {"type": "function", "function": {"name": name, "description": description[:1024], "parameters": params}}


def _agent_function(fn: str, agent: AgentSpec) -> dict[str, Any]:
    props: dict[str, Any] = {"task": {"type": "string", "description": "what the agent should do"}}
    if agent.input_schema is not None:
        props["variables"] = agent.input_schema
    schema = {"type": "object", "properties": props, "required": ["task"] + (["variables"] if agent.input_schema else [])}
    return _function(fn, agent.description or f"Ask the agent {agent.name!r}", schema)


async def build_toolbox(spec: AgentSpec, catalog: AgentCatalog, pool: McpPool, depth_left: int) -> Toolbox:
    """Resolve every entry of `spec.tools`; an entry nothing offers fails the step with a clear error."""
    box = Toolbox()
    env = spec.environment or catalog.environment
    agents_wanted: list[str] = []
    mcp_wanted: list[tuple[str, str | None, str]] = []  # (entry, server or None, tool)
    for entry in spec.tools:
        if entry.startswith(AGENT_PREFIX):
            agents_wanted.append(entry)
            continue
        bare = entry.removeprefix("__")
        server, sep, tool = bare.partition("/")
        mcp_wanted.append((entry, server, tool) if sep else (entry, None, bare))
    if agents_wanted:
        env_catalog = catalog.sibling(env)
        by_key = {}
        for a in env_catalog.all():
            by_key.setdefault(agent_key(a.name), a)
            if a.display_name:
                by_key.setdefault(agent_key(a.display_name), a)
        for entry in agents_wanted:
            found = by_key.get(agent_key(entry.removeprefix(AGENT_PREFIX)))
            if found is None:
                raise StepError(f"agent {spec.name!r}: tool {entry!r}: no agent of environment {env!r} is named so",
                                type="validation")
            if found.name == spec.name:
                raise StepError(f"agent {spec.name!r}: tool {entry!r} is the agent itself", type="validation")
            if depth_left <= 0:
                raise StepError(f"agent {spec.name!r}: tool {entry!r}: agents call agents at most "
                                "STATION_AGENT_TOOL_DEPTH levels deep", type="validation")
            fn = function_name(entry)
            if fn in box.routes:
                continue  # two spellings of one tool
            box.routes[fn] = Route(fn, "agent", agent=found)
            box.functions.append(_agent_function(fn, found))
    if mcp_wanted:
        await _resolve_mcp(spec, env, pool, mcp_wanted, box)
    return box


async def _resolve_mcp(spec: AgentSpec, env: str, pool: McpPool, wanted: list[tuple[str, str | None, str]],
                       box: Toolbox) -> None:
    try:
        servers = pool.servers(env)
    except McpUnavailable as exc:
        raise StepError(str(exc), type="configuration") from None
    offered: dict[str, list[ToolInfo]] = {}
    missing = {tool for _, server, tool in wanted if server is None}
    explicit = {server for _, server, _ in wanted if server is not None}
    for server_name in sorted(servers):
        if not missing and server_name not in explicit:
            continue  # every tool is found: later servers are not started for this agent
        try:
            handle = await pool.handle(env, servers[server_name])
        except McpUnavailable as exc:
            raise StepError(f"agent {spec.name!r}: {exc}", type="mcp_unavailable",
                            details={"server": server_name}) from None
        for info in handle.tools:
            offered.setdefault(info.name, []).append(info)
        missing -= {t.name for t in handle.tools}
    for entry, server, tool in wanted:
        if server is not None:
            if server not in servers:
                raise StepError(f"agent {spec.name!r}: tool {entry!r}: environment {env!r} has no MCP server {server!r}",
                                type="validation")
            choices = [i for i in offered.get(tool, []) if i.server == server]
        else:
            choices = offered.get(tool, [])
        if not choices:
            known = ", ".join(sorted(servers)) or "none (template.json mcpServers, mcp-servers/*.json)"
            raise StepError(f"agent {spec.name!r}: tool {entry!r}: none of the MCP servers of environment {env!r} "
                            f"offers {tool!r} (servers: {known})", type="validation")
        if len(choices) > 1:
            box.clashes[tool] = [c.server for c in choices]
        info = choices[0]
        fn = function_name(entry)
        if fn in box.routes:
            continue  # `__get_pods` and `get_pods`: one function
        box.routes[fn] = Route(fn, "mcp", server=info.server, tool=info.name)
        box.functions.append(_function(fn, info.description, info.input_schema))


def bounded_json(value: Any, limit: int) -> Any:
    """The value itself when its JSON is small, else a truncated excerpt of it (the audit never grows unbounded)."""
    text = json.dumps(value, default=str, ensure_ascii=False)
    return value if len(text) <= limit else text[:limit] + "…"
