"""`/api/v1/workflow-schedules`: list the cron schedules, switch one on or off (`services/schedules.py`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from station_wf.api.http import SafeJSONResponse
from station_wf.api.state import ApiState


async def list_schedules(request: Request, state: ApiState) -> Response:
    return SafeJSONResponse({"schedules": await state.schedules.list(request.query_params.get("workflowId"))})


async def enable_schedule(request: Request, state: ApiState) -> Response:
    return SafeJSONResponse(await state.schedules.set_enabled(request.path_params["schedule_id"], True))


async def disable_schedule(request: Request, state: ApiState) -> Response:
    return SafeJSONResponse(await state.schedules.set_enabled(request.path_params["schedule_id"], False))
