"""The REST API (Starlette): thin handlers over the services, one error shape, request ids, body limits."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from station_wf.agents.catalog import AgentCatalog
from station_wf.api.agents_routes import agent_handlers
from station_wf.api.auth import Principal, TokenTable
from station_wf.api.door import MAX_BODY_BYTES, LoopbackPolicy, RequestContext, error_response
from station_wf.api.hub import EVENT_QUERY, EventHub, Subscriber, event_from_row
from station_wf.api.idempotency import IdempotencyStore, request_hash
from station_wf.api.jsonio import SafeJSONResponse, decode_text, dumps_safe, loads_strict, refuse_hostile_json
from station_wf.api.params import int_param, last_event_id
from station_wf.api.station_routes import station_handlers, station_start_body, station_stream
from station_wf.dsl.schema import workflow_json_schema
from station_wf.engine.schedules import schedule_clock, schedule_to_api
from station_wf.errors import ServiceError, invalid
from station_wf.services.control import ControlService
from station_wf.services.definitions import (
    DefinitionService,
    add_agent_problems,
    check_definition_text,
    parse_api_body,
    require_known_agents,
    tx_create,
    tx_disable,
)
from station_wf.services.isolated import IsolatedPool
from station_wf.services.offload import DEFAULT as DEFAULT_OFFLOADER
from station_wf.services.offload import Offloader
from station_wf.services.runs import RunService
from station_wf.store.db import utcnow

log = logging.getLogger(__name__)

JSONResponse = SafeJSONResponse  # every response of this module renders without fail
BACKLOG_PAGE = 1000
WEB_DIR = Path(__file__).resolve().parents[1] / "web"


class ApiState:
    """What handlers need from the daemon; kept explicit so the API never reaches into internals."""

    def __init__(self, runs: RunService, definitions: DefinitionService, writer: Any,
                 readiness: Callable[[], dict[str, bool]], tokens: TokenTable, control: ControlService,
                 hub: EventHub, sse_ping: float = 15.0, extra_routes: list[Route] | None = None,
                 agents: AgentCatalog | None = None, offloader: Offloader | None = None,
                 loopback: LoopbackPolicy | None = None, max_sse: int = 256, body_timeout: float = 30.0,
                 isolated: IsolatedPool | None = None) -> None:
        self.runs = runs
        self.definitions = definitions
        self.writer = writer
        self.readiness = readiness
        self.tokens = tokens
        self.control = control
        self.hub = hub
        self.sse_ping = sse_ping
        self.idempotency = IdempotencyStore(writer)
        self.extra_routes = extra_routes or []
        self.agents = agents
        self.offloader = offloader or DEFAULT_OFFLOADER
        self.isolated = isolated or IsolatedPool()
        self.loopback = loopback
        self.max_sse = max_sse
        self.body_timeout = body_timeout

    async def run_backlog(self, run_id: str, after_seq: int) -> AsyncIterator[dict[str, Any]]:
        """A run's events after `after_seq`, read a page at a time (never the whole history in memory)."""
        for _ in range(1 << 30):
            rows = await self.runs.readers.fetchall(
                EVENT_QUERY + " WHERE e.run_id = ? AND e.seq > ? ORDER BY e.seq LIMIT ?", (run_id, after_seq, BACKLOG_PAGE))
            for row in rows:
                yield event_from_row(row)
            if len(rows) < BACKLOG_PAGE:
                return
            after_seq = rows[-1]["seq"]

    async def global_backlog(self, after_id: int, sub: Subscriber, until_id: int) -> AsyncIterator[dict[str, Any]]:
        """Every event after `after_id` up to `until_id` (the hub's cursor when the client subscribed), a
        page at a time: from there the live queue continues, so a resume has no gap however far behind."""
        for _ in range(1 << 30):
            rows = await self.runs.readers.fetchall(
                EVENT_QUERY + " WHERE e.id > ? AND e.id <= ? ORDER BY e.id LIMIT ?", (after_id, until_id, BACKLOG_PAGE))
            for row in rows:
                event = event_from_row(row)
                if sub.wants(event):
                    yield event
            if len(rows) < BACKLOG_PAGE:
                return
            after_id = rows[-1]["id"]


def request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "")


def principal_of(request: Request) -> Principal:
    return request.scope.get("state", {}).get("principal") or Principal("anonymous")


async def idempotent(request: Request, state: ApiState,
                     action: Callable[[bytes, str | None], Awaitable[Response]]) -> Response:
    """Run `action(body, effect_id)` once per Idempotency-Key (when the client sent one); `effect_id` is
    the id the effect must take (None without a key)."""
    body = await read_body(request, state)
    key = request.headers.get("idempotency-key")
    if key is None:
        return await action(body, None)
    scope = f"{request.method} {request.url.path} {principal_of(request).name}"
    return await state.idempotency.run(scope, key, request_hash(request.method, request.url.path, body),
                                       lambda effect_id: action(body, effect_id), request_id(request))


def parse_json(raw: bytes, required: bool = True) -> Any:
    """A JSON body, strictly (see `jsonio`): 400 `malformed_json` for anything that could not be stored."""
    if not raw.strip():
        if required:
            raise invalid("a JSON body is required", code="malformed_json")
        return {}
    return loads_strict(raw)


async def read_body(request: Request, state: ApiState | None = None) -> bytes:
    """Read the body with a hard cap (chunked requests have no content-length to check up front) and a
    time bound per chunk, so a half-sent body cannot hold its request open forever."""
    timeout = state.body_timeout if state is not None else 30.0
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise ServiceError(408, "request_timeout", f"no part of the body arrived for {timeout:g} s") from None
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ServiceError(413, "payload_too_large", f"request body is over {MAX_BODY_BYTES} bytes", {"limit": MAX_BODY_BYTES})
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request, state: ApiState, required: bool = True) -> tuple[Any, str]:
    raw = await read_body(request, state)
    body = await state.offloader.run(parse_json, raw, required) if len(raw) > 65536 else parse_json(raw, required)
    return body, raw.decode("utf-8")


Handler = Callable[[Request, ApiState], Awaitable[Response]]


def build_app(state: ApiState) -> ASGIApp:
    def route(path: str, handler: Handler, methods: list[str]) -> Route:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request, state)
            except ServiceError as exc:
                return error_response(request_id(request), exc.status, exc.code, exc.message, exc.details)
            except ClientDisconnect:  # the client went away mid-body: nothing to answer, nothing to log loudly
                log.info("client disconnected during %s %s", request.method, request.url.path)
                return Response(status_code=400)
            except Exception:  # noqa: BLE001 - never leak a traceback to a client
                log.exception("unhandled error on %s %s", request.method, request.url.path)
                return error_response(request_id(request), 500, "internal", "internal error")
        return Route(path, endpoint, methods=methods)

    routes = [
        route("/healthz", healthz, ["GET"]),
        route("/readyz", readyz, ["GET"]),
        route("/api/v1/workflows", list_workflows, ["GET"]),
        route("/api/v1/workflows", create_workflow, ["POST"]),
        route("/api/v1/workflows/schema", workflow_schema, ["GET"]),
        route("/api/v1/workflows/validate", validate_workflow, ["POST"]),
        route("/api/v1/workflows/{workflow_id}", get_workflow, ["GET"]),
        route("/api/v1/workflows/{workflow_id}", update_workflow, ["PUT"]),
        route("/api/v1/workflows/{workflow_id}", delete_workflow, ["DELETE"]),
        route("/api/v1/workflows/{workflow_id}/versions", workflow_versions, ["GET"]),
        route("/api/v1/workflow-runs", start_run, ["POST"]),
        route("/api/v1/workflow-runs", list_runs, ["GET"]),
        route("/api/v1/workflow-runs/stream", global_stream, ["GET"]),
        route("/api/v1/workflow-runs/{run_id}", get_run, ["GET"]),
        route("/api/v1/workflow-runs/{run_id}/events", run_events, ["GET"]),
        route("/api/v1/workflow-runs/{run_id}/stream", run_stream, ["GET"]),
        route("/api/v1/workflow-runs/{run_id}/pause", pause_run, ["POST"]),
        route("/api/v1/workflow-runs/{run_id}/resume", resume_run, ["POST"]),
        route("/api/v1/workflow-runs/{run_id}/cancel", cancel_run, ["POST"]),
        route("/api/v1/workflow-runs/{run_id}/signals", send_signal, ["POST"]),
        route("/api/v1/workflow-runs/{run_id}/approvals", run_approvals, ["GET"]),
        route("/api/v1/workflow-runs/{run_id}/approvals/{approval_id}/approve", approve, ["POST"]),
        route("/api/v1/workflow-runs/{run_id}/approvals/{approval_id}/reject", reject, ["POST"]),
        route("/api/v1/workflow-approvals", approvals_inbox, ["GET"]),
        route("/api/v1/workflow-schedules", list_schedules, ["GET"]),
        route("/api/v1/workflow-schedules/{schedule_id}/enable", enable_schedule, ["POST"]),
        route("/api/v1/workflow-schedules/{schedule_id}/disable", disable_schedule, ["POST"]),
    ]
    routes += [route(path, handler, methods) for path, handler, methods in agent_handlers(lambda: state.agents)]
    routes += [route(path, handler, methods) for path, handler, methods in station_handlers()]  # Station's REST shapes
    routes.extend(state.extra_routes)
    routes.append(route("/api/{rest:path}", api_not_found, ["GET", "POST", "PUT", "DELETE", "PATCH"]))
    # The dashboard: static files served by the daemon itself (no build step), using only the API above.
    routes.append(Mount("/", app=StaticFiles(directory=str(WEB_DIR), html=True), name="web"))

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        code = "method_not_allowed" if status == 405 else "not_found"
        return error_response(request_id(request), status, code, f"{request.method} {request.url.path}: {code.replace('_', ' ')}")

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    return RequestContext(app, state.tokens, state.loopback, state.max_sse)


async def api_not_found(request: Request, state: ApiState) -> Response:
    raise ServiceError(404, "not_found", f"{request.method} {request.url.path}: not found")


async def healthz(request: Request, state: ApiState) -> Response:
    """Liveness: the process answers AND its SQLite writer commits (a dead or failing writer is 503)."""
    writer = state.writer.health()
    return JSONResponse({"status": "ok" if writer.ok else "failing", "writer": writer.to_api()},
                        status_code=200 if writer.ok else 503)


async def readyz(request: Request, state: ApiState) -> Response:
    checks = state.readiness()
    ok = all(checks.values())
    return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503)


async def list_workflows(request: Request, state: ApiState) -> Response:
    items = await state.definitions.list(request.query_params.get("status"), request.query_params.get("q"))
    return JSONResponse({"workflows": items})


async def workflow_schema(request: Request, state: ApiState) -> Response:
    return JSONResponse(workflow_json_schema())


async def validate_workflow(request: Request, state: ApiState) -> Response:
    """Check a definition (YAML or JSON text) without storing it; 200 either way, `valid` says which."""
    raw = await read_body(request, state)
    source = "request.json" if "json" in (request.headers.get("content-type") or "") else "request.yaml"
    text = decode_text(raw)
    if source.endswith(".json"):
        await state.offloader.run(refuse_hostile_json, text)
    result, defn = await state.isolated.run(check_definition_text, text, source)
    return JSONResponse(await state.offloader.run(add_agent_problems, result, defn, source, state.agents))


async def get_workflow(request: Request, state: ApiState) -> Response:
    version = int_param(request, "version", 0) or None
    return JSONResponse(await state.definitions.get(request.path_params["workflow_id"], version))


async def create_workflow(request: Request, state: ApiState) -> Response:
    body, raw = await json_body(request, state)
    defn = await state.isolated.run(parse_api_body, body, raw)
    await state.offloader.run(require_known_agents, defn, state.agents)
    version = await state.writer.run(tx_create(defn, raw, must_exist=False))
    return JSONResponse(await state.definitions.get(defn["id"], version), status_code=201)


async def update_workflow(request: Request, state: ApiState) -> Response:
    body, raw = await json_body(request, state)
    workflow_id = request.path_params["workflow_id"]
    if isinstance(body, dict) and "id" not in body:
        body = {**body, "id": workflow_id}
    defn = await state.isolated.run(parse_api_body, body, raw)
    await state.offloader.run(require_known_agents, defn, state.agents)
    if defn["id"] != workflow_id:
        raise invalid(f"body id {defn['id']!r} does not match the URL's {workflow_id!r}", {"id": defn["id"]})
    version = await state.writer.run(tx_create(defn, json.dumps(body, sort_keys=True), must_exist=True))
    return JSONResponse(await state.definitions.get(workflow_id, version))


async def delete_workflow(request: Request, state: ApiState) -> Response:
    workflow_id = request.path_params["workflow_id"]
    await state.writer.run(tx_disable(workflow_id))
    return JSONResponse(await state.definitions.get(workflow_id))


async def workflow_versions(request: Request, state: ApiState) -> Response:
    return JSONResponse({"versions": await state.definitions.versions(request.path_params["workflow_id"])})


async def start_run(request: Request, state: ApiState) -> Response:
    async def action(raw: bytes, effect_id: str | None) -> Response:
        body = station_start_body(parse_json(raw))  # Station's `workflow_id` too
        if not isinstance(body, dict):
            raise invalid("the body must be a JSON object {workflowId, version?, input}")
        unknown = sorted(set(body) - {"workflowId", "version", "input"})
        if unknown:
            raise invalid(f"unknown field(s): {', '.join(unknown)}", {"fields": unknown})
        run = await state.runs.start(body.get("workflowId"), body.get("input"), body.get("version"),
                                     traceparent=request.headers.get("traceparent"), run_id=effect_id)
        return JSONResponse({"run": run}, status_code=201, headers={"Location": f"/api/v1/workflow-runs/{run['id']}"})

    return await idempotent(request, state, action)


async def list_runs(request: Request, state: ApiState) -> Response:
    q = request.query_params
    return JSONResponse(await state.runs.list(q.get("workflowId"), q.get("status"), int_param(request, "limit", 50), q.get("cursor")))


async def get_run(request: Request, state: ApiState) -> Response:
    return JSONResponse(await state.runs.get(request.path_params["run_id"]))


async def run_events(request: Request, state: ApiState) -> Response:
    return JSONResponse(await state.runs.events(
        request.path_params["run_id"], int_param(request, "afterSeq", 0), int_param(request, "limit", 100)))


# -- people in the loop and run control ----------------------------------------------------------
def _object(raw: bytes) -> dict[str, Any]:
    body = parse_json(raw, required=False)
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    return body


async def approvals_inbox(request: Request, state: ApiState) -> Response:
    q = request.query_params
    status = q.get("status", "pending") or None
    return JSONResponse({"approvals": await state.control.list_approvals(None if status == "all" else status, q.get("workflowId"))})


async def run_approvals(request: Request, state: ApiState) -> Response:
    return JSONResponse({"approvals": await state.control.run_approvals(request.path_params["run_id"])})


async def _decide(request: Request, state: ApiState, approve: bool) -> Response:
    async def action(raw: bytes, effect_id: str | None) -> Response:
        body = _object(raw)
        text = body.get("comment") if approve else body.get("reason", body.get("comment"))
        approval = await state.control.decide(request.path_params["run_id"], request.path_params["approval_id"], approve,
                                              principal_of(request), text)
        return JSONResponse({"approval": approval})

    return await idempotent(request, state, action)


async def approve(request: Request, state: ApiState) -> Response:
    return await _decide(request, state, True)


async def reject(request: Request, state: ApiState) -> Response:
    return await _decide(request, state, False)


async def send_signal(request: Request, state: ApiState) -> Response:
    async def action(raw: bytes, effect_id: str | None) -> Response:
        body = _object(raw)
        info = await state.control.signal(request.path_params["run_id"], body.get("name"), body.get("payload"), principal_of(request),
                                          effect_id)
        return JSONResponse({"signal": info}, status_code=202)

    return await idempotent(request, state, action)


async def pause_run(request: Request, state: ApiState) -> Response:
    return JSONResponse(await state.control.pause(request.path_params["run_id"], principal_of(request)))


async def resume_run(request: Request, state: ApiState) -> Response:
    return JSONResponse(await state.control.resume(request.path_params["run_id"], principal_of(request)))


async def cancel_run(request: Request, state: ApiState) -> Response:
    body = _object(await read_body(request, state))
    return JSONResponse(await state.control.cancel(request.path_params["run_id"], body.get("reason"), principal_of(request)))


# -- SSE ------------------------------------------------------------------------------------------
TERMINAL_EVENTS = frozenset({"run.completed", "run.failed", "run.cancelled", "run.timed_out"})


def _sse(event: dict[str, Any], ident: int) -> dict[str, Any]:
    data = {k: event[k] for k in ("runId", "seq", "type", "stepId", "payload", "actor", "time") if k in event}
    return {"event": event["type"], "id": str(ident), "data": dumps_safe(data)}


async def _follow(sub: Subscriber, state: ApiState):
    """Queue events until the hub drops us (we fell behind): the client then resumes by Last-Event-ID."""
    while True:
        try:
            event = await asyncio.wait_for(sub.queue.get(), 1.0)
        except TimeoutError:
            if sub.overflowed:
                return
            continue
        if event is None:
            return
        yield event


async def run_stream(request: Request, state: ApiState) -> Response:
    if request.query_params.get("format") == "station":
        return await station_stream(request, state)
    run_id = request.path_params["run_id"]
    last = last_event_id(request)
    run = await state.runs.summary(run_id)  # 404 before the stream starts; no step rows needed
    sub = await state.hub.subscribe(Subscriber(run_id=run_id))  # before the backfill: nothing falls between

    async def events():
        nonlocal last
        try:
            sent = 0
            async for event in state.run_backlog(run_id, last):
                yield _sse(event, event["seq"])
                last, sent = event["seq"], sent + 1
                if event["type"] in TERMINAL_EVENTS:
                    return
            if not sent and run["status"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT") and last >= run["lastEventSeq"]:
                return
            async for event in _follow(sub, state):
                if event["seq"] <= last:
                    continue
                yield _sse(event, event["seq"])
                last = event["seq"]
                if event["type"] in TERMINAL_EVENTS:
                    return
        finally:
            state.hub.unsubscribe(sub)

    return EventSourceResponse(events(), ping=state.sse_ping)


async def global_stream(request: Request, state: ApiState) -> Response:
    q = request.query_params
    statuses = frozenset(s.strip().upper() for s in q.get("status", "").split(",") if s.strip()) or None
    last = last_event_id(request)
    sub = await state.hub.subscribe(Subscriber(workflow_id=q.get("workflowId") or None, statuses=statuses))
    live_from = state.hub.cursor  # everything after it reaches the queue; the backlog pages up to it

    async def events():
        nonlocal last
        try:
            if last:
                async for event in state.global_backlog(last, sub, live_from):
                    yield _sse(event, event["id"])
                    last = event["id"]
                last = max(last, live_from)
            async for event in _follow(sub, state):
                if event["id"] <= last:
                    continue
                yield _sse(event, event["id"])
                last = event["id"]
        finally:
            state.hub.unsubscribe(sub)

    return EventSourceResponse(events(), ping=state.sse_ping)


# -- schedules ------------------------------------------------------------------------------------
async def list_schedules(request: Request, state: ApiState) -> Response:
    q = request.query_params
    sql, params = "SELECT * FROM workflow_schedules WHERE defined = 1", []
    if q.get("workflowId"):
        sql += " AND workflow_id = ?"
        params.append(q["workflowId"])
    rows = await state.runs.readers.fetchall(sql + " ORDER BY schedule_id", params)
    now = schedule_clock()
    return JSONResponse({"schedules": [schedule_to_api(r, now) for r in rows]})


async def _set_schedule(request: Request, state: ApiState, enabled: bool) -> Response:
    sid = request.path_params["schedule_id"]

    def apply(conn: Any) -> Any:
        conn.execute("UPDATE workflow_schedules SET enabled = ?, updated_at = ? WHERE schedule_id = ?", (int(enabled), utcnow(), sid))
        return conn.execute("SELECT * FROM workflow_schedules WHERE schedule_id = ?", (sid,)).fetchone()

    row = await state.writer.run(apply)
    if row is None:
        raise ServiceError(404, "not_found", f"schedule {sid!r} not found", {"id": sid})
    return JSONResponse(schedule_to_api(row, schedule_clock()))


async def enable_schedule(request: Request, state: ApiState) -> Response:
    return await _set_schedule(request, state, True)


async def disable_schedule(request: Request, state: ApiState) -> Response:
    return await _set_schedule(request, state, False)
