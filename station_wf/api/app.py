"""The REST API (Starlette): the app factory and its route table.

One module per resource holds the handlers (`workflows`, `runs`, `people`, `streams`, `schedules`,
`agents`, Station's aliases in `station_routes`); `http` has what they share, `door` the middleware
every request passes, `state` the services they may use. Handlers are thin: they read the request,
call a service, and render; every error is a `ServiceError` rendered here in the one error shape.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from station_wf.api import bundles, hooks, people, runs, schedules, streams, webhook_subscriptions, workflows
from station_wf.api.agents import agent_handlers
from station_wf.api.door import RequestContext, error_response
from station_wf.api.governance import governance_handlers
from station_wf.api.http import Handler, SafeJSONResponse, request_id
from station_wf.api.openapi import openapi_json
from station_wf.api.openapi_docs import docs_vendor
from station_wf.api.state import ApiState
from station_wf.api.station_routes import station_handlers
from station_wf.errors import ServiceError
from station_wf.governance import gate

__all__ = ["ApiState", "build_app"]

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parents[1] / "web"


async def api_not_found(request: Request, state: ApiState) -> Response:
    raise ServiceError(404, "not_found", f"{request.method} {request.url.path}: not found")


async def healthz(request: Request, state: ApiState) -> Response:
    """Liveness: the process answers AND its SQLite writer commits (a dead or failing writer is 503)."""
    writer = state.writer.health()
    return SafeJSONResponse({"status": "ok" if writer.ok else "failing", "writer": writer.to_api()},
                            status_code=200 if writer.ok else 503)


async def readyz(request: Request, state: ApiState) -> Response:
    checks = state.readiness()
    ok = all(checks.values())
    return SafeJSONResponse({"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503)


ROUTES: list[tuple[str, Handler, list[str]]] = [
    ("/healthz", healthz, ["GET"]),
    ("/readyz", readyz, ["GET"]),
    ("/api/v1/workflows", workflows.list_workflows, ["GET"]),
    ("/api/v1/workflows", workflows.create_workflow, ["POST"]),
    ("/api/v1/workflows/schema", workflows.workflow_schema, ["GET"]),
    ("/api/v1/workflows/validate", workflows.validate_workflow, ["POST"]),
    ("/api/v1/workflows/{workflow_id}", workflows.get_workflow, ["GET"]),
    ("/api/v1/workflows/{workflow_id}", workflows.update_workflow, ["PUT"]),
    ("/api/v1/workflows/{workflow_id}", workflows.delete_workflow, ["DELETE"]),
    ("/api/v1/workflows/{workflow_id}/versions", workflows.workflow_versions, ["GET"]),
    # issue 17: enable (disable is DELETE), the file's sync status and a sync of it, rollback
    ("/api/v1/workflows/{workflow_id}/enable", workflows.enable_workflow, ["POST"]),
    ("/api/v1/workflows/{workflow_id}/sync", workflows.workflow_sync_status, ["GET"]),
    ("/api/v1/workflows/{workflow_id}/sync", workflows.sync_workflow, ["POST"]),
    ("/api/v1/workflows/{workflow_id}/rollback", workflows.rollback_workflow, ["POST"]),
    ("/api/v1/workflow-runs", runs.start_run, ["POST"]),
    ("/api/v1/workflow-runs:batch", runs.start_batch, ["POST"]),
    ("/api/v1/workflow-runs", runs.list_runs, ["GET"]),
    ("/api/v1/workflow-runs/stream", streams.global_stream, ["GET"]),  # before {run_id}
    ("/api/v1/workflow-runs/{run_id}", runs.get_run, ["GET"]),
    ("/api/v1/workflow-runs/{run_id}/events", runs.run_events, ["GET"]),
    ("/api/v1/workflow-runs/{run_id}/stream", streams.run_stream, ["GET"]),
    ("/api/v1/workflow-runs/{run_id}/pause", people.pause_run, ["POST"]),
    ("/api/v1/workflow-runs/{run_id}/resume", people.resume_run, ["POST"]),
    ("/api/v1/workflow-runs/{run_id}/cancel", people.cancel_run, ["POST"]),
    ("/api/v1/workflow-runs/{run_id}/redrive", people.redrive_run, ["POST"]),
    ("/api/v1/workflow-runs/{run_id}/rerun", people.rerun_run, ["POST"]),
    ("/api/v1/workflow-runs/{run_id}/children", runs.run_children, ["GET"]),
    ("/api/v1/workflow-runs/{run_id}/signals", people.send_signal, ["POST"]),
    ("/api/v1/workflow-runs/{run_id}/approvals", people.run_approvals, ["GET"]),
    ("/api/v1/workflow-runs/{run_id}/approvals/{approval_id}/approve", people.approve, ["POST"]),
    ("/api/v1/workflow-runs/{run_id}/approvals/{approval_id}/reject", people.reject, ["POST"]),
    ("/api/v1/workflow-approvals", people.approvals_inbox, ["GET"]),
    ("/api/v1/workflow-schedules", schedules.list_schedules, ["GET"]),
    ("/api/v1/workflow-schedules/{schedule_id}/enable", schedules.enable_schedule, ["POST"]),
    ("/api/v1/workflow-schedules/{schedule_id}/disable", schedules.disable_schedule, ["POST"]),
    ("/api/v1/openapi.json", openapi_json, ["GET"]),  # issue 17: the contract (api/openapi.py); the docs page is /docs/
    ("/docs/vendor/{name}", docs_vendor, ["GET"]),
]


class _Guarded:
    """An ASGI app behind the route permission check (an object, so Starlette passes it the raw scope)."""

    def __init__(self, inner: ASGIApp, needs: dict[str, str]) -> None:
        self.inner, self.needs = inner, needs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            gate.check(Request(scope), self.needs)
        except ServiceError as exc:
            rid = scope.get("state", {}).get("request_id", "")
            await error_response(rid, exc.status, exc.code, exc.message, exc.details)(scope, receive, send)
            return
        await self.inner(scope, receive, send)


def build_app(state: ApiState) -> ASGIApp:
    def route(path: str, handler: Handler, methods: list[str]) -> Route:
        needs = gate.route_permissions(path, methods)  # issue 18: every route declares a permission

        async def endpoint(request: Request) -> Response:
            try:
                gate.check(request, needs)
                return await handler(request, state)
            except ServiceError as exc:
                return error_response(request_id(request), exc.status, exc.code, exc.message, exc.details,
                                      gate.error_headers(exc))
            except ClientDisconnect:  # the client went away mid-body: nothing to answer, nothing to log loudly
                log.info("client disconnected during %s %s", request.method, request.url.path)
                return Response(status_code=400)
            except Exception:  # noqa: BLE001 - never leak a traceback to a client
                log.exception("unhandled error on %s %s", request.method, request.url.path)
                return error_response(request_id(request), 500, "internal", "internal error")
        return Route(path, endpoint, methods=methods)

    routes = [route(path, handler, methods) for path, handler, methods in ROUTES]
    routes += [route(path, handler, methods) for path, handler, methods in agent_handlers(lambda: state.agents)]
    routes += [route(path, handler, methods) for path, handler, methods in station_handlers()]  # Station's REST shapes
    if state.integrations is not None:  # issue 19: webhooks out, hooks in, bundles
        routes += [route(p, h, m) for p, h, m in hooks.HANDLERS + webhook_subscriptions.HANDLERS + bundles.HANDLERS]
    routes += [route(path, handler, methods) for path, handler, methods in governance_handlers()]  # issue 18
    def guarded(r: Route) -> Route:
        """An extra route through the same permission check: a function endpoint gets the wrapper; an
        ASGI app (the /mcp endpoint) is checked before it sees the request (issue 18)."""
        if inspect.isfunction(r.endpoint) or inspect.ismethod(r.endpoint):
            return route(r.path, lambda request, _state, e=r.endpoint: e(request), sorted(r.methods or ()))
        return Route(r.path, _Guarded(r.endpoint, gate.route_permissions(r.path, sorted(r.methods or ("GET", "POST", "DELETE")))),
                     methods=list(r.methods) if r.methods else None)

    routes += [guarded(r) for r in state.extra_routes]
    routes.append(route("/api/{rest:path}", api_not_found, ["GET", "POST", "PUT", "DELETE", "PATCH"]))
    # The dashboard: static files served by the daemon itself (no build step), using only the API above.
    routes.append(Mount("/", app=StaticFiles(directory=str(WEB_DIR), html=True), name="web"))

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        code = "method_not_allowed" if status == 405 else "not_found"
        return error_response(request_id(request), status, code, f"{request.method} {request.url.path}: {code.replace('_', ' ')}")

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    return RequestContext(app, state.tokens, state.loopback, state.max_sse)
