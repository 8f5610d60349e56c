"""`/api/v1/governance/...` (issue 18): the policies in force and the audit log of their denials."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from station_wf.api.http import Handler, SafeJSONResponse
from station_wf.api.params import int_param
from station_wf.services import governance


async def list_denials(request: Request, state: Any) -> Response:
    """Newest first; `?before=<id>` pages on."""
    before = int_param(request, "before", 0) or None
    return SafeJSONResponse(await governance.denials(state.runs.readers, int_param(request, "limit", 100), before))


async def show_policies(request: Request, state: Any) -> Response:
    return SafeJSONResponse(governance.policies_status())


def governance_handlers() -> list[tuple[str, Handler, list[str]]]:
    return [
        ("/api/v1/governance/denials", list_denials, ["GET"]),
        ("/api/v1/governance/policies", show_policies, ["GET"]),
    ]
