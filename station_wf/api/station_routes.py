"""Station's REST shapes beside ours, so a Station client or script pointed at this daemon keeps working.

Station (cloudshipai/station, `internal/api/v1/workflow_runs.go`, `workflows.go`) names a few things
differently. Each alias here calls the same service as our own path; nothing is decided twice:

* `GET /api/v1/workflow-approvals/{id}`, `POST .../{id}/approve` (`{"comment"}`) and `.../{id}/reject`
  (`{"reason"}`): approvals by id alone, without the run in the path;
* `POST /api/v1/workflows/{workflowId}/runs` (`{"input", "version"}`): start a run of that workflow;
* `POST /api/v1/workflow-runs/{runId}/signal`: our `/signals`;
* `GET /api/v1/workflow-runs/{runId}/steps`: the run's steps as `{"steps": [...]}`;
* `GET /api/v1/workflow-runs/{runId}/stream?format=station`: Station's SSE shape, `event: message`
  with `{"type": "run_update", "run"}` and `{"type": "step_update", "step"}`;
* `workflow_id` beside `workflowId` (and Station's `environmentId`, `options`) in a start body
  (`api/runs.py` `station_start_body`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from station_wf.api.http import SafeJSONResponse, idempotent, parse_json
from station_wf.api.people import decide, send_signal
from station_wf.api.runs import started
from station_wf.api.sse import SseOut, SseResponse
from station_wf.api.state import ApiState
from station_wf.errors import invalid
from station_wf.services.events import Subscriber
from station_wf.services.runs import TERMINAL_RUN_STATUSES
from station_wf.services.sse_frames import sse_frame

Handler = Callable[[Request, ApiState], Awaitable[Response]]
STREAM_MAX_S = 24 * 3600.0  # a Station-format stream ends at the run's end or after a day


async def get_approval(request: Request, state: ApiState) -> Response:
    return SafeJSONResponse({"approval": await state.control.approval(request.path_params["approval_id"])})


async def _decide(request: Request, state: ApiState, approve: bool) -> Response:
    run_id = await state.control.approval_run(request.path_params["approval_id"])  # 404 before the body is read
    return await decide(request, state, run_id, approve)


async def approve(request: Request, state: ApiState) -> Response:
    return await _decide(request, state, True)


async def reject(request: Request, state: ApiState) -> Response:
    return await _decide(request, state, False)


async def start_nested(request: Request, state: ApiState) -> Response:
    async def action(raw: bytes, effect_id: str | None) -> Response:
        body = parse_json(raw, required=False) if raw.strip() else {}
        if not isinstance(body, dict):
            raise invalid("the body must be a JSON object {input, version?}")
        unknown = sorted(set(body) - {"input", "version", "environmentId", "options"})
        if unknown:
            raise invalid(f"unknown field(s): {', '.join(unknown)}", {"fields": unknown})
        return await started(request, state, request.path_params["workflow_id"], body, effect_id)

    return await idempotent(request, state, action)


async def signal(request: Request, state: ApiState) -> Response:
    return await send_signal(request, state)


async def steps(request: Request, state: ApiState) -> Response:
    run = await state.runs.get(request.path_params["run_id"])
    return SafeJSONResponse({"steps": run["steps"]})


async def station_stream(request: Request, state: ApiState) -> Response:
    """Station's SSE: a `run_update` first and whenever the status or current step changes, a
    `step_update` per step as it appears or changes; the stream ends when the run does. Woken by the
    hub when the run has new events (never polled); the frames are this stream's own (its diff)."""
    run_id = request.path_params["run_id"]
    await state.runs.summary(run_id)  # 404 before the stream starts

    async def produce(out: SseOut) -> None:
        sub = Subscriber(run_id=run_id, ping=state.sse_ping)
        out.attach(sub)
        await state.hub.subscribe(sub)  # before the read below: no change falls between
        try:
            seen_run: tuple[Any, ...] | None = None
            seen_steps: dict[str, tuple[Any, ...]] = {}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STREAM_MAX_S
            run = await state.runs.get(run_id)
            for _ in range(1 << 62):
                frames: list[bytes] = []
                key = (run["status"], run.get("currentStep"))
                if key != seen_run:
                    seen_run = key
                    frames.append(_message({"type": "run_update", "run": _brief(run)}))
                for step in run["steps"]:
                    ident = f"{step.get('stepId')}:{step.get('attempt')}"
                    mark = (step.get("status"), step.get("completedAt"))
                    if seen_steps.get(ident) != mark:
                        seen_steps[ident] = mark
                        frames.append(_message({"type": "step_update", "step": step}))
                if frames:
                    await out.write(b"".join(frames))
                if run["status"] in TERMINAL_RUN_STATUSES or loop.time() > deadline:
                    return
                items = await sub.take()
                if not items:
                    return  # cut off or closed; a Station client reconnects and gets the current state
                pings = [item for item in items if isinstance(item, bytes)]
                if pings:
                    await out.write(b"".join(pings))
                if len(pings) < len(items):
                    run = await state.runs.get(run_id)
        finally:
            state.hub.unsubscribe(sub)

    return SseResponse(produce)


def _message(body: dict[str, Any]) -> bytes:
    return sse_frame("message", None, json.dumps(body).encode())


def _brief(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k != "steps"}


async def deliveries(request: Request, state: ApiState) -> Response:
    """The approval's webhook deliveries with every attempt (Station's audit log of notifications)."""
    return SafeJSONResponse({"deliveries": await state.control.deliveries(request.path_params["approval_id"])})


def station_handlers() -> list[tuple[str, Handler, list[str]]]:
    return [
        ("/api/v1/workflow-approvals/{approval_id}/deliveries", deliveries, ["GET"]),
        ("/api/v1/workflow-approvals/{approval_id}/audit", deliveries, ["GET"]),
        ("/api/v1/workflow-approvals/{approval_id}", get_approval, ["GET"]),
        ("/api/v1/workflow-approvals/{approval_id}/approve", approve, ["POST"]),
        ("/api/v1/workflow-approvals/{approval_id}/reject", reject, ["POST"]),
        ("/api/v1/workflows/{workflow_id}/runs", start_nested, ["POST"]),
        ("/api/v1/workflow-runs/{run_id}/signal", signal, ["POST"]),
        ("/api/v1/workflow-runs/{run_id}/steps", steps, ["GET"]),
    ]
