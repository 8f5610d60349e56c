"""A small MCP server written with the SDK, for the daemon's agent-tool tests.

`python -m tests.mcp_servers.ops_server [stdio|http PORT]`. Tools: `get_pods` and `restart_pod` (a
kubernetes-triage shape), `whoami` (echoes the request's `_meta` and an environment variable, so
tests see the idempotency key and the variables substitution), `hang` (never answers; records its
start and its cancellation in OPS_MARK_DIR), `crash` (the process exits, as a crashing server does).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("ops")
MARKS = Path(os.environ.get("OPS_MARK_DIR", "."))


def mark(name: str) -> None:
    """An empty file per event, named with the pid: the test reads what happened, and in which process."""
    if os.environ.get("OPS_MARK_DIR"):
        (MARKS / f"{name}-{os.getpid()}-{time.monotonic_ns()}").write_text("")


@server.tool()
def get_pods(namespace: str) -> list[dict[str, Any]]:
    """The pods of a namespace and their status."""
    mark("get_pods")
    return [{"name": "api-1", "namespace": namespace, "status": "CrashLoopBackOff"},
            {"name": "db-1", "namespace": namespace, "status": "Running"}]


@server.tool()
def restart_pod(name: str) -> str:
    """Restart one pod."""
    mark("restart_pod")
    return f"restarted {name}"


@server.tool()
def get_cost_and_usage(service: str = "") -> dict[str, Any]:
    """Costs of a service (Station's FinOps demo tool name)."""
    return {"service": service, "usd": 1234.5}


@server.tool()
def whoami(ctx: Context) -> dict[str, Any]:
    """What the caller sent in _meta, and the server's OPS_CLUSTER."""
    mark("whoami")
    meta = ctx.request_context.meta
    if meta is not None and not isinstance(meta, dict):
        meta = meta.model_dump(by_alias=True, exclude_none=True)
    return {"meta": meta or {},
            "cluster": os.environ.get("OPS_CLUSTER"), "pid": os.getpid()}


@server.tool()
async def hang() -> str:
    """Never answers (until cancelled)."""
    mark("hang_started")
    try:
        await anyio.sleep(3600)
    except BaseException:
        mark("hang_cancelled")
        raise
    return "never"


@server.tool()
def crash() -> str:
    """The server process dies mid-call."""
    mark("crash")
    os._exit(3)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "stdio"
    if mode == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("stdio")
