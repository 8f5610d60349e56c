"""The REST API (Starlette): thin handlers over the services, one error shape, request ids, body limits."""

from __future__ import annotations

import hmac
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from station_wf.errors import ServiceError, invalid
from station_wf.services.definitions import DefinitionService, parse_api_body, tx_create, tx_disable
from station_wf.services.runs import RunService

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20


class ApiState:
    """What handlers need from the daemon; kept explicit so the API never reaches into internals."""

    def __init__(self, runs: RunService, definitions: DefinitionService, writer: Any,
                 readiness: Callable[[], dict[str, bool]], api_token: str | None) -> None:
        self.runs = runs
        self.definitions = definitions
        self.writer = writer
        self.readiness = readiness
        self.api_token = api_token


def error_response(request_id: str, status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details, "request_id": request_id}}
    return JSONResponse(body, status_code=status, headers={"X-Request-Id": request_id})


class RequestContext:
    """Pure ASGI middleware: request id, bearer auth, and the 1 MiB body limit, before any handler runs."""

    def __init__(self, app: ASGIApp, api_token: str | None) -> None:
        self.app = app
        self.api_token = api_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = headers.get("x-request-id") or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        path = scope["path"]
        if self.api_token and path.startswith("/api/"):
            supplied = headers.get("authorization", "")
            if not hmac.compare_digest(supplied.encode(), f"Bearer {self.api_token}".encode()):
                await error_response(request_id, 401, "unauthorized", "missing or wrong bearer token")(scope, receive, send)
                return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            await error_response(request_id, 413, "payload_too_large",
                                 f"request body is over {MAX_BODY_BYTES} bytes", {"limit": MAX_BODY_BYTES})(scope, receive, send)
            return

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                hdrs = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in hdrs):
                    hdrs.append((b"x-request-id", request_id.encode()))
                message["headers"] = hdrs
            await send(message)

        await self.app(scope, receive, send_with_id)


def request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "")


async def read_body(request: Request) -> bytes:
    """Read the body with a hard cap (chunked requests have no content-length to check up front)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ServiceError(413, "payload_too_large", f"request body is over {MAX_BODY_BYTES} bytes", {"limit": MAX_BODY_BYTES})
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request, required: bool = True) -> tuple[Any, str]:
    raw = await read_body(request)
    if not raw.strip():
        if required:
            raise invalid("a JSON body is required", code="malformed_json")
        return {}, ""
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text), text
    except ValueError as exc:
        raise invalid(f"malformed JSON: {exc}", {"line": getattr(exc, "lineno", None), "column": getattr(exc, "colno", None)},
                      code="malformed_json") from None


def int_param(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise invalid(f"query parameter {name!r} must be an integer", {name: value}) from None


Handler = Callable[[Request, ApiState], Awaitable[Response]]


def build_app(state: ApiState) -> ASGIApp:
    def route(path: str, handler: Handler, methods: list[str]) -> Route:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request, state)
            except ServiceError as exc:
                return error_response(request_id(request), exc.status, exc.code, exc.message, exc.details)
            except Exception:  # noqa: BLE001 - never leak a traceback to a client
                log.exception("unhandled error on %s %s", request.method, request.url.path)
                return error_response(request_id(request), 500, "internal", "internal error")
        return Route(path, endpoint, methods=methods)

    routes = [
        route("/healthz", healthz, ["GET"]),
        route("/readyz", readyz, ["GET"]),
        route("/api/v1/workflows", list_workflows, ["GET"]),
        route("/api/v1/workflows", create_workflow, ["POST"]),
        route("/api/v1/workflows/{workflow_id}", get_workflow, ["GET"]),
        route("/api/v1/workflows/{workflow_id}", update_workflow, ["PUT"]),
        route("/api/v1/workflows/{workflow_id}", delete_workflow, ["DELETE"]),
        route("/api/v1/workflows/{workflow_id}/versions", workflow_versions, ["GET"]),
        route("/api/v1/workflow-runs", start_run, ["POST"]),
        route("/api/v1/workflow-runs", list_runs, ["GET"]),
        route("/api/v1/workflow-runs/{run_id}", get_run, ["GET"]),
        route("/api/v1/workflow-runs/{run_id}/events", run_events, ["GET"]),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        code = "method_not_allowed" if status == 405 else "not_found"
        return error_response(request_id(request), status, code, f"{request.method} {request.url.path}: {code.replace('_', ' ')}")

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    return RequestContext(app, state.api_token)


async def healthz(request: Request, state: ApiState) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request, state: ApiState) -> Response:
    checks = state.readiness()
    ok = all(checks.values())
    return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503)


async def list_workflows(request: Request, state: ApiState) -> Response:
    items = await state.definitions.list(request.query_params.get("status"), request.query_params.get("q"))
    return JSONResponse({"workflows": items})


async def get_workflow(request: Request, state: ApiState) -> Response:
    version = int_param(request, "version", 0) or None
    return JSONResponse(await state.definitions.get(request.path_params["workflow_id"], version))


async def create_workflow(request: Request, state: ApiState) -> Response:
    body, raw = await json_body(request)
    defn = parse_api_body(body, raw)
    version = await state.writer.run(tx_create(defn, raw, must_exist=False))
    return JSONResponse(await state.definitions.get(defn["id"], version), status_code=201)


async def update_workflow(request: Request, state: ApiState) -> Response:
    body, raw = await json_body(request)
    workflow_id = request.path_params["workflow_id"]
    if isinstance(body, dict) and "id" not in body:
        body = {**body, "id": workflow_id}
    defn = parse_api_body(body, raw)
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
    body, _ = await json_body(request)
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object {workflowId, version?, input}")
    unknown = sorted(set(body) - {"workflowId", "version", "input"})
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(unknown)}", {"fields": unknown})
    run = await state.runs.start(body.get("workflowId"), body.get("input"), body.get("version"),
                                 traceparent=request.headers.get("traceparent"))
    return JSONResponse({"run": run}, status_code=201, headers={"Location": f"/api/v1/workflow-runs/{run['id']}"})


async def list_runs(request: Request, state: ApiState) -> Response:
    q = request.query_params
    return JSONResponse(await state.runs.list(q.get("workflowId"), q.get("status"), int_param(request, "limit", 50), q.get("cursor")))


async def get_run(request: Request, state: ApiState) -> Response:
    return JSONResponse(await state.runs.get(request.path_params["run_id"]))


async def run_events(request: Request, state: ApiState) -> Response:
    return JSONResponse(await state.runs.events(
        request.path_params["run_id"], int_param(request, "afterSeq", 0), int_param(request, "limit", 100)))
