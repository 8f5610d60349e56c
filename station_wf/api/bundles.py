"""`GET /api/v1/bundles`: the bundles installed into this daemon's environments, with their workflows
(id and version), agents and MCP servers (issue 19; installing is `station-wf bundle install`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from station_wf.api.http import SafeJSONResponse
from station_wf.api.state import ApiState
from station_wf.errors import not_found


async def list_bundles(request: Request, state: ApiState) -> Response:
    return SafeJSONResponse({"bundles": await state.integrations.bundles.list(request.query_params.get("workflowId"))})


async def get_bundle(request: Request, state: ApiState) -> Response:
    name = request.path_params["name"]
    for bundle in await state.integrations.bundles.list():
        if bundle["name"] == name:
            return SafeJSONResponse({"bundle": bundle})
    raise not_found("bundle", name)


HANDLERS = [
    ("/api/v1/bundles", list_bundles, ["GET"]),
    ("/api/v1/bundles/{name}", get_bundle, ["GET"]),
]
