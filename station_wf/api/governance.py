"""`/api/v1/governance/...` (issue 18): the policies in force and the audit log of their denials."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from station_wf.api.http import Handler, SafeJSONResponse
from station_wf.api.params import int_param
from station_wf.errors import invalid
from station_wf.governance import policies
from station_wf.store import governance_denials


def _denial(row: Any) -> dict[str, Any]:
    return {"id": row["id"], "at": row["at"], "principal": row["principal"], "action": row["action"],
            "workflowId": row["workflow_id"], "runId": row["run_id"], "policy": row["policy"], "message": row["message"]}


async def list_denials(request: Request, state: Any) -> Response:
    """Newest first; `?before=<id>` pages on."""
    limit = int_param(request, "limit", 100)
    if not 1 <= limit <= 1000:
        raise invalid("limit must be between 1 and 1000", {"limit": limit})
    before = int_param(request, "before", 0) or None
    rows = await governance_denials.recent(state.runs.readers, limit, before)
    return SafeJSONResponse({"denials": [_denial(r) for r in rows],
                             "nextBefore": rows[-1]["id"] if len(rows) == limit else None})


async def show_policies(request: Request, state: Any) -> Response:
    current = policies.POLICIES.current()
    return SafeJSONResponse({"file": str(policies.POLICIES.path) if policies.POLICIES.path else None,
                             "loaded": current.source is not None, "actions": sorted(current.rules),
                             "error": policies.POLICIES.error})


def governance_handlers() -> list[tuple[str, Handler, list[str]]]:
    return [
        ("/api/v1/governance/denials", list_denials, ["GET"]),
        ("/api/v1/governance/policies", show_policies, ["GET"]),
    ]
