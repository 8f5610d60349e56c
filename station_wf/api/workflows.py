"""`/api/v1/workflows`: list, show, create, new version (PUT), disable (DELETE), enable, versions,
rollback, the file's sync status and a sync of it, the JSON Schema of a definition, and
validate-without-storing."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from station_wf.api.http import SafeJSONResponse, json_body, read_body
from station_wf.api.params import int_param
from station_wf.api.state import ApiState
from station_wf.dsl.schema import workflow_json_schema
from station_wf.services.storable import decode_text


async def list_workflows(request: Request, state: ApiState) -> Response:
    items = await state.definitions.list(request.query_params.get("status"), request.query_params.get("q"))
    return SafeJSONResponse({"workflows": items})


async def workflow_schema(request: Request, state: ApiState) -> Response:
    return SafeJSONResponse(workflow_json_schema())


async def validate_workflow(request: Request, state: ApiState) -> Response:
    """Check a definition (YAML or JSON text) without storing it; 200 either way, `valid` says which."""
    raw = await read_body(request, state)
    source = "request.json" if "json" in (request.headers.get("content-type") or "") else "request.yaml"
    return SafeJSONResponse(await state.definitions.validate(decode_text(raw), source))


async def get_workflow(request: Request, state: ApiState) -> Response:
    version = int_param(request, "version", 0) or None
    return SafeJSONResponse(await state.definitions.get(request.path_params["workflow_id"], version))


async def create_workflow(request: Request, state: ApiState) -> Response:
    body, raw = await json_body(request, state)
    return SafeJSONResponse(await state.definitions.create(body, raw), status_code=201)


async def update_workflow(request: Request, state: ApiState) -> Response:
    body, raw = await json_body(request, state)
    return SafeJSONResponse(await state.definitions.update(request.path_params["workflow_id"], body, raw))


async def delete_workflow(request: Request, state: ApiState) -> Response:
    return SafeJSONResponse(await state.definitions.disable(request.path_params["workflow_id"]))


async def workflow_versions(request: Request, state: ApiState) -> Response:
    return SafeJSONResponse({"versions": await state.definitions.versions(request.path_params["workflow_id"])})



async def enable_workflow(request: Request, state: ApiState) -> Response:
    return SafeJSONResponse(await state.definitions.enable(request.path_params["workflow_id"]))


async def workflow_sync_status(request: Request, state: ApiState) -> Response:
    return SafeJSONResponse(await state.definitions.sync_status(request.path_params["workflow_id"]))


async def sync_workflow(request: Request, state: ApiState) -> Response:
    return SafeJSONResponse(await state.definitions.sync_file(request.path_params["workflow_id"]))


async def rollback_workflow(request: Request, state: ApiState) -> Response:
    body, _ = await json_body(request, state)
    return SafeJSONResponse(await state.definitions.rollback(request.path_params["workflow_id"], body), status_code=201)
