"""`/api/v1/workflow-runs`: start a run (idempotent with `Idempotency-Key`), start a batch of them
(`:batch`), list, show, its events."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from station_wf.api.http import (
    SafeJSONResponse,
    json_body,
    key_scope,
    keyed_request,
    parse_json,
    principal_of,
    read_body,
    replayed,
)
from station_wf.api.params import int_param
from station_wf.api.state import ApiState
from station_wf.errors import ServiceError, invalid
from station_wf.governance.admission import run_meta
from station_wf.governance.queries import run_filters
from station_wf.services.run_start import batch_items

START_FIELDS = frozenset({"workflowId", "version", "input", "correlationId", "tags"})


def station_start_body(body: Any) -> Any:
    """Station's start body: `workflow_id` means `workflowId`; `environmentId`/`options` are accepted and unused."""
    if not isinstance(body, dict):
        return body
    out = {k: v for k, v in body.items() if k not in ("environmentId", "options")}
    if "workflow_id" in out:
        value = out.pop("workflow_id")
        if "workflowId" in out and out["workflowId"] != value:
            raise invalid("workflowId and workflow_id differ", {"workflowId": out["workflowId"], "workflow_id": value})
        out["workflowId"] = value
    return out


def start_body(raw: bytes) -> dict[str, Any]:
    body = station_start_body(parse_json(raw))  # Station's `workflow_id` too
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object {workflowId, version?, input}")
    unknown = sorted(set(body) - START_FIELDS)
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(unknown)}", {"fields": unknown})
    return body


async def start_run(request: Request, state: ApiState) -> Response:
    """With an Idempotency-Key, the key's reservation, the run and its answer are one transaction."""
    raw = await read_body(request, state)
    keyed = keyed_request(request, raw)
    if keyed is None:
        body = start_body(raw)
        return await started(request, state, body.get("workflowId"), body, None)
    try:
        body = start_body(raw)
    except ServiceError as exc:
        answer = await state.idempotency.refuse(keyed, exc)
    else:
        answer = await state.runs.start_keyed(keyed, body.get("workflowId"), body.get("input"), body.get("version"),
                                              traceparent=request.headers.get("traceparent"),
                                              meta=run_meta(body.get("correlationId"), body.get("tags"),
                                                            principal=principal_of(request)))
    return start_answer(request, answer)


def start_answer(request: Request, answer: Any) -> Response:
    """A keyed start's answer as HTTP: a replay as it was stored, an error raised, a run with its Location
    (shared with the incoming hooks, which start runs the same way)."""
    if answer.replayed:
        return replayed(request, answer)
    if answer.status >= 400:
        error = answer.body["error"]
        raise ServiceError(answer.status, error["code"], error["message"], error["details"])
    run = answer.body["run"]
    return SafeJSONResponse(answer.body, status_code=answer.status, headers={"Location": f"/api/v1/workflow-runs/{run['id']}"})


async def start_batch(request: Request, state: ApiState) -> Response:
    """`{"runs": [...]}`, 1..1000 starts created in one transaction; 200 with a result per item, in
    order (`status` 201 with `run`, or a 4xx with `error`). Per-item `idempotencyKey`s replace the
    Idempotency-Key header, which a batch does not take."""
    if request.headers.get("idempotency-key") is not None:
        raise invalid("a batch takes no Idempotency-Key header: give each item its idempotencyKey",
                      {"header": "Idempotency-Key"})
    body, _ = await json_body(request, state)
    items = batch_items(body)
    results = await state.runs.start_batch(items, request.headers.get("traceparent"), key_scope(request),
                                           principal_of(request))
    return SafeJSONResponse({"results": results})


async def started(request: Request, state: ApiState, workflow_id: Any, body: dict[str, Any], effect_id: str | None) -> Response:
    """Start the run and answer 201 with its Location (shared with Station's nested start route)."""
    run = await state.runs.start(workflow_id, body.get("input"), body.get("version"),
                                 traceparent=request.headers.get("traceparent"), run_id=effect_id,
                                 meta=run_meta(body.get("correlationId"), body.get("tags"), principal=principal_of(request)))
    return SafeJSONResponse({"run": run}, status_code=201, headers={"Location": f"/api/v1/workflow-runs/{run['id']}"})


async def list_runs(request: Request, state: ApiState) -> Response:
    q = request.query_params
    return SafeJSONResponse(await state.runs.list(q.get("workflowId"), q.get("status"), int_param(request, "limit", 50),
                                                  q.get("cursor"), run_filters(q), principal_of(request),
                                                  q.get("parentRunId")))


async def get_run(request: Request, state: ApiState) -> Response:
    return SafeJSONResponse(await state.runs.get(request.path_params["run_id"]))


async def run_events(request: Request, state: ApiState) -> Response:
    return SafeJSONResponse(await state.runs.events(
        request.path_params["run_id"], int_param(request, "afterSeq", 0), int_param(request, "limit", 100)))


async def run_children(request: Request, state: ApiState) -> Response:
    """The runs this run started (`workflow.run`), oldest first."""
    return SafeJSONResponse(await state.runs.children(request.path_params["run_id"]))
