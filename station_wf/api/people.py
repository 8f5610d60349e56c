"""People in the loop and run control: the approvals inbox, a run's approvals, approve/reject,
signals, pause/resume/cancel. Who acts is the request's principal (`api/door.py`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from station_wf.api.http import SafeJSONResponse, idempotent, json_object, principal_of, read_body
from station_wf.api.state import ApiState


async def approvals_inbox(request: Request, state: ApiState) -> Response:
    q = request.query_params
    status = q.get("status", "pending") or None
    return SafeJSONResponse({"approvals": await state.control.list_approvals(None if status == "all" else status,
                                                                             q.get("workflowId"))})


async def run_approvals(request: Request, state: ApiState) -> Response:
    return SafeJSONResponse({"approvals": await state.control.run_approvals(request.path_params["run_id"])})


async def decide(request: Request, state: ApiState, run_id: str, approve: bool) -> Response:
    """Approve or reject (idempotent with a key); `comment`, or for a rejection `reason`."""
    approval_id = request.path_params["approval_id"]

    async def action(raw: bytes, effect_id: str | None) -> Response:
        body = json_object(raw)
        text = body.get("comment") if approve else body.get("reason", body.get("comment"))
        approval = await state.control.decide(run_id, approval_id, approve, principal_of(request), text)
        return SafeJSONResponse({"approval": approval})

    return await idempotent(request, state, action)


async def approve(request: Request, state: ApiState) -> Response:
    return await decide(request, state, request.path_params["run_id"], True)


async def reject(request: Request, state: ApiState) -> Response:
    return await decide(request, state, request.path_params["run_id"], False)


async def send_signal(request: Request, state: ApiState) -> Response:
    async def action(raw: bytes, effect_id: str | None) -> Response:
        body = json_object(raw)
        info = await state.control.signal(request.path_params["run_id"], body.get("name"), body.get("payload"),
                                          principal_of(request), effect_id)
        return SafeJSONResponse({"signal": info}, status_code=202)

    return await idempotent(request, state, action)


async def pause_run(request: Request, state: ApiState) -> Response:
    return SafeJSONResponse(await state.control.pause(request.path_params["run_id"], principal_of(request)))


async def resume_run(request: Request, state: ApiState) -> Response:
    return SafeJSONResponse(await state.control.resume(request.path_params["run_id"], principal_of(request)))


async def cancel_run(request: Request, state: ApiState) -> Response:
    body = json_object(await read_body(request, state))
    return SafeJSONResponse(await state.control.cancel(request.path_params["run_id"], body.get("reason"),
                                                       principal_of(request)))


async def redrive_run(request: Request, state: ApiState) -> Response:
    """Continue an ended run in place (idempotent with a key: a retried request does not redrive twice)."""
    async def action(raw: bytes, effect_id: str | None) -> Response:
        json_object(raw)
        return SafeJSONResponse({"run": await state.control.redrive(request.path_params["run_id"], principal_of(request))})

    return await idempotent(request, state, action)


async def rerun_run(request: Request, state: ApiState) -> Response:
    """A new run from this one's input and version (or the body's); 201 with its Location."""
    async def action(raw: bytes, effect_id: str | None) -> Response:
        run = await state.runs.rerun(request.path_params["run_id"], json_object(raw),
                                     request.headers.get("traceparent"), effect_id, principal_of(request))
        return SafeJSONResponse({"run": run}, status_code=201, headers={"Location": f"/api/v1/workflow-runs/{run['id']}"})

    return await idempotent(request, state, action)
