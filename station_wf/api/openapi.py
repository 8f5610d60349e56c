"""The OpenAPI 3.1 document (`GET /api/v1/openapi.json`), built from the app's own route table.

Why it cannot drift: the document's paths are the routes of the running app (`ROUTES`, the agent and
Station handler lists, the daemon's extra routes), each described by its entry in `OPERATIONS`. A
route with no entry (listed under `x-undocumented`), or an entry with no route, fails
`tests/test_openapi.py`; the live daemon's every answer is checked against the document by
`tests/test_schemathesis.py`.

Adding a route: add it to the app as usual, then ONE `Op(...)` line below (method, path, tag, summary,
success schema; query parameters, body, Idempotency-Key, stream as they apply). Response shapes live
in `openapi_schemas.py`. An entry written ahead of its route (another branch's) carries
`pending="<issue>"`: it is published once the app serves the route; drop `pending` when it has landed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from station_wf.api.http import SafeJSONResponse
from station_wf.api.openapi_schemas import (
    ANY,
    BOOL,
    COMPONENTS,
    INT,
    STR,
    Schema,
    arr,
    nullable,
    obj,
    ref,
)

API = "/api/v1"
EXCLUDED_PATHS = frozenset({"/api/{rest:path}"})
"""Routes that are not operations: the catch-all that answers 404 for unknown API paths. (A route whose
endpoint is an ASGI app, such as issue 20's MCP endpoint at /mcp, has no methods and is not an
operation either: MCP describes it.)"""


@dataclass(frozen=True)
class Param:
    name: str
    schema: Schema
    description: str = ""
    where: str = "query"


def q(name: str, schema: Schema, description: str = "") -> Param:
    return Param(name, schema, description)


@dataclass(frozen=True)
class Op:
    """One operation. `ok` is the success answer's JSON schema (`status` its code), `body` the JSON
    request body (`body_required`), `idempotent` when it takes `Idempotency-Key`, `stream` for SSE,
    `media` for a success answer that is not JSON, `public` when no token is needed, `pending` for an
    operation whose route lands with another issue (documented once the app has the route)."""

    method: str
    path: str
    tag: str
    summary: str
    ok: Schema | None = None
    status: int = 200
    query: tuple[Param, ...] = ()
    body: Schema | None = None
    body_required: bool = False
    idempotent: bool = False
    stream: bool = False
    media: tuple[str, ...] = ()
    public: bool = False
    pending: str | None = None
    description: str = ""
    extra: dict[int, tuple[str, Schema | None]] = field(default_factory=dict)


LIMIT = q("limit", {**INT, "minimum": 1, "maximum": 1000}, "page size")
TIME_Q = {**STR, "format": "date-time"}
STATUSES = q("status", STR, "comma-separated run statuses (e.g. RUNNING,WAITING_APPROVAL)")
WORKFLOW = q("workflowId", STR, "only this workflow's")
LAST_ID = Param("Last-Event-ID", {**INT, "minimum": 0}, "resume after this event id (a run's seq; the global stream's id)",
                "header")
LAST_ID_Q = q("lastEventId", {**INT, "minimum": 0}, "the same as the Last-Event-ID header (for clients that cannot set it)")
REASON = {**obj(reason={**STR, "description": "why (kept in the event log)"}), "examples": [{"reason": "not needed"}]}
COMMENT = {**obj(comment=STR), "examples": [{"comment": "looks right"}]}
SIGNAL = {**obj(["name"], name={**STR, "pattern": "^[A-Za-z0-9_-]{1,128}$"}, payload=ANY),
          "examples": [{"name": "go", "payload": {"ok": True}}]}
RUN = {"type": "object", "properties": {"run": ref("Run")}, "required": ["run"]}
APPROVAL = obj(["approval"], approval=ref("Approval"))
HEALTH = obj(["status"], status=STR, writer={"type": "object"}, checks={"type": "object", "additionalProperties": BOOL})
SSE_DOC = ("Server-Sent Events: each event is `id: <id>`, `event: <type>`, `data: <Event JSON>`; comments (`: ping`) keep the "
           "connection alive. Resume with `Last-Event-ID`: no gap, no duplicate.")

OPERATIONS: list[Op] = [
    # -- the daemon
    Op("GET", "/healthz", "daemon", "Liveness (the writer commits)", HEALTH, public=True,
       extra={503: ("the writer is failing", HEALTH)}),
    Op("GET", "/readyz", "daemon", "Readiness (database, NATS, consumer)", HEALTH, public=True,
       extra={503: ("not ready", HEALTH)}),
    Op("GET", "/metrics", "daemon", "Prometheus metrics", media=("text/plain",)),
    Op("GET", f"{API}/leases", "daemon", "Which replica holds each lease",
       obj(["leases"], replica=STR, exclusive=BOOL, leases=arr({"type": "object"}))),
    Op("GET", f"{API}/openapi.json", "daemon", "This document", {"type": "object"}),
    Op("GET", "/docs/vendor/{name}", "daemon", "The API docs page's packaged assets (the page is /docs/)",
       media=("text/javascript", "text/css", "image/png", "text/plain"), public=True),
    # -- workflows
    Op("GET", f"{API}/workflows", "workflows", "List workflows (latest versions)",
       obj(["workflows"], workflows=arr(ref("Workflow"))),
       query=(q("status", STR, "active or disabled"), q("q", STR, "text in the id or name"))),
    Op("POST", f"{API}/workflows", "workflows", "Create a workflow (version 1)", ref("Workflow"), 201,
       body={"type": "object", "description": "a definition, as in a .workflow.yaml file"}, body_required=True),
    Op("GET", f"{API}/workflows/schema", "workflows", "The workflow language's JSON Schema", {"type": "object"}),
    Op("POST", f"{API}/workflows/validate", "workflows", "Check a definition without storing it", ref("Validation"),
       description="The body is the definition's text: YAML (application/yaml, or no type) or JSON (application/json). "
                   "200 either way; `valid` says which."),
    Op("GET", f"{API}/workflows/{{workflow_id}}", "workflows", "A workflow (latest or `version`)", ref("Workflow"),
       query=(q("version", {**INT, "minimum": 0}, "a stored version (0 or absent: the latest)"),)),
    Op("PUT", f"{API}/workflows/{{workflow_id}}", "workflows", "A new version", ref("Workflow"),
       body={"type": "object"}, body_required=True),
    Op("DELETE", f"{API}/workflows/{{workflow_id}}", "workflows", "Disable (runs and versions stay readable)",
       ref("Workflow")),
    Op("GET", f"{API}/workflows/{{workflow_id}}/versions", "workflows", "Every stored version",
       obj(["versions"], versions=arr(ref("Workflow")))),
    # p-17b (issue 17 item 5): enable, the file's sync status, sync one file, rollback
    Op("POST", f"{API}/workflows/{{workflow_id}}/enable", "workflows", "Enable a disabled workflow", ref("Workflow")),
    Op("GET", f"{API}/workflows/{{workflow_id}}/sync", "workflows", "The workflow file against the database",
       ref("SyncStatus")),
    Op("POST", f"{API}/workflows/{{workflow_id}}/sync", "workflows", "Register this workflow's file now",
       obj(["result", "workflow", "sync"], result={**STR, "description": "registered, reactivated, unchanged or disabled"},
           workflow=ref("Workflow"), sync=ref("SyncStatus"))),
    Op("POST", f"{API}/workflows/{{workflow_id}}/rollback", "workflows", "A new version made from an old one",
       ref("Workflow"), 201, body={**obj(["version"], version={**INT, "minimum": 1}), "examples": [{"version": 1}]},
       body_required=True),
    Op("POST", f"{API}/workflows/{{workflow_id}}/runs", "runs", "Start a run of this workflow (Station's shape)", RUN, 201,
       body=obj(input=ANY, version={**INT, "minimum": 1}, environmentId=ANY, options=ANY), idempotent=True),
    # -- runs
    Op("POST", f"{API}/workflow-runs", "runs", "Start a run", RUN, 201, body=ref("StartRun"), body_required=True,
       idempotent=True, description="The 201 shows the run as committed: a run of inject steps is already COMPLETED."),
    Op("POST", f"{API}/workflow-runs:batch", "runs", "Start 1-1000 runs in one transaction",
       obj(["results"], results=arr(ref("BatchResult"))),
       body=obj(["runs"], runs={**arr(ref("BatchItem")), "minItems": 1, "maxItems": 1000}), body_required=True),
    Op("GET", f"{API}/workflow-runs", "runs", "List runs, newest first", ref("RunPage"),
       query=(WORKFLOW, STATUSES, LIMIT, q("cursor", STR, "nextCursor of the previous page"),
              q("parentRunId", STR, "only the children of this run"),
              q("correlationId", STR, "only runs started with this correlation id"),
              q("tag", STR, "name:value; only runs with this tag (repeat for several: all must match)"),
              q("startedAfter", TIME_Q, "only runs created at or after this ISO-8601 time"),
              q("startedBefore", TIME_Q, "only runs created before this ISO-8601 time"))),
    Op("GET", f"{API}/workflow-runs/stream", "streams", "Every run's events, live (SSE)", stream=True,
       query=(WORKFLOW, q("status", STR, "only runs now in these statuses (comma-separated)"), LAST_ID_Q, LAST_ID),
       description=SSE_DOC + " Without Last-Event-ID the stream starts live (no backlog)."),
    Op("GET", f"{API}/workflow-runs/{{run_id}}", "runs", "A run with its steps and context", ref("Run")),
    Op("GET", f"{API}/workflow-runs/{{run_id}}/events", "runs", "The run's event log, a page", ref("EventPage"),
       query=(q("afterSeq", {**INT, "minimum": 0}, "events after this seq"), LIMIT)),
    Op("GET", f"{API}/workflow-runs/{{run_id}}/stream", "streams", "The run's events (SSE), ending with the run",
       stream=True, query=(LAST_ID_Q, LAST_ID, q("format", {**STR, "enum": ["station"]}, "Station's `event: message` shape")),
       description=SSE_DOC + " The stream ends after the run's terminal event (run.completed, run.failed, ...)."),
    Op("GET", f"{API}/workflow-runs/{{run_id}}/steps", "runs", "The run's steps (Station's shape)",
       obj(["steps"], steps=arr(ref("Step")))),
    Op("POST", f"{API}/workflow-runs/{{run_id}}/pause", "control", "Pause a run", ref("Run")),
    Op("POST", f"{API}/workflow-runs/{{run_id}}/resume", "control", "Resume a paused run", ref("Run")),
    Op("POST", f"{API}/workflow-runs/{{run_id}}/cancel", "control", "Cancel a run", ref("Run"), body=REASON),
    Op("POST", f"{API}/workflow-runs/{{run_id}}/signals", "control", "Send a signal", obj(["signal"], signal=ref("Signal")),
       202, body=SIGNAL, body_required=True, idempotent=True),
    Op("POST", f"{API}/workflow-runs/{{run_id}}/signal", "control", "Send a signal (Station's path)",
       obj(["signal"], signal=ref("Signal")), 202, body=SIGNAL, body_required=True, idempotent=True),
    Op("POST", f"{API}/workflow-runs/{{run_id}}/rerun", "control", "Re-run: a new run from this one", RUN, 201,
       body=obj(version={"oneOf": [{**INT, "minimum": 1}, {"const": "latest"}]}, input=ANY), idempotent=True,
       description="Default: the same version and the same input; the new run's `rerunOf` is this run."),
    Op("POST", f"{API}/workflow-runs/{{run_id}}/redrive", "control", "Redrive: re-execute the failed steps", RUN,
       body={"type": "object"}, idempotent=True,
       description="The same run, RUNNING again; only its failed, timed-out or cancelled steps run again. 409 while "
                   "the run is active or when its version is gone."),
    Op("GET", f"{API}/workflow-runs/{{run_id}}/children", "runs", "The run's child runs, oldest first",
       obj(["runs"], runs=arr(ref("Run")))),
    # -- approvals
    Op("GET", f"{API}/workflow-approvals", "approvals", "The approvals inbox",
       obj(["approvals"], approvals=arr(ref("Approval"))),
       query=(q("status", STR, "pending (default), approved, rejected, timed_out, or all"), WORKFLOW)),
    Op("GET", f"{API}/workflow-runs/{{run_id}}/approvals", "approvals", "A run's approvals",
       obj(["approvals"], approvals=arr(ref("Approval")))),
    Op("POST", f"{API}/workflow-runs/{{run_id}}/approvals/{{approval_id}}/approve", "approvals", "Approve", APPROVAL,
       body=COMMENT, idempotent=True),
    Op("POST", f"{API}/workflow-runs/{{run_id}}/approvals/{{approval_id}}/reject", "approvals", "Reject", APPROVAL,
       body=obj(reason=STR, comment=STR), idempotent=True),
    Op("GET", f"{API}/workflow-approvals/{{approval_id}}", "approvals", "An approval by id", APPROVAL),
    Op("POST", f"{API}/workflow-approvals/{{approval_id}}/approve", "approvals", "Approve by id (Station's path)",
       APPROVAL, body=COMMENT, idempotent=True),
    Op("POST", f"{API}/workflow-approvals/{{approval_id}}/reject", "approvals", "Reject by id (Station's path)",
       APPROVAL, body=obj(reason=STR, comment=STR), idempotent=True),
    Op("GET", f"{API}/workflow-approvals/{{approval_id}}/deliveries", "approvals", "The approval's webhook deliveries",
       obj(["deliveries"], deliveries=arr({"type": "object"}))),
    Op("GET", f"{API}/workflow-approvals/{{approval_id}}/audit", "approvals", "The same as /deliveries (Station's name)",
       obj(["deliveries"], deliveries=arr({"type": "object"}))),
    # -- schedules and agents
    Op("GET", f"{API}/workflow-schedules", "schedules", "Cron schedules", obj(["schedules"], schedules=arr(ref("Schedule"))),
       query=(WORKFLOW,)),
    Op("POST", f"{API}/workflow-schedules/{{schedule_id}}/enable", "schedules", "Switch a schedule on", ref("Schedule")),
    Op("POST", f"{API}/workflow-schedules/{{schedule_id}}/disable", "schedules", "Switch a schedule off", ref("Schedule")),
    Op("GET", f"{API}/agents", "agents", "The environment's agents",
       obj(["agents"], environment=STR, agents=arr(ref("Agent")), errors=arr(ANY)),
       query=(q("environment", STR, "another environment under the same directory"),)),
    Op("GET", f"{API}/agents/{{name}}", "agents", "An agent (`name` or `name@environment`)",
       obj(["agent"], agent=ref("Agent")), query=(q("environment", STR),)),
    # -- issue 18 (governance)
    Op("GET", f"{API}/governance/denials", "governance", "The audit log of policy denials, newest first",
       obj(["denials"], denials=arr({"type": "object"}), nextBefore=nullable(INT)),
       query=(LIMIT, q("before", {**INT, "minimum": 0}, "nextBefore of the previous page"))),
    Op("GET", f"{API}/governance/policies", "governance", "The policies in force", {"type": "object"}),
    # -- issue 19 (webhooks out, triggers in, bundles)
    Op("GET", f"{API}/webhook-subscriptions", "integrations", "Webhook subscriptions",
       obj(["subscriptions"], subscriptions=arr({"type": "object"}))),
    Op("POST", f"{API}/webhook-subscriptions", "integrations", "Subscribe a URL to events",
       obj(["subscription"], subscription={"type": "object"}), 201, body={"type": "object"}, body_required=True),
    Op("GET", f"{API}/webhook-subscriptions/{{sid}}", "integrations", "A webhook subscription",
       obj(["subscription"], subscription={"type": "object"})),
    Op("DELETE", f"{API}/webhook-subscriptions/{{sid}}", "integrations", "Remove a webhook subscription", status=204),
    Op("GET", f"{API}/webhook-deliveries", "integrations", "The webhook delivery log", {"type": "object"},
       query=(q("subscriptionId", STR), q("status", STR), q("runId", STR), q("before", {**INT, "minimum": 0}), LIMIT)),
    Op("GET", f"{API}/webhook-deliveries/{{did}}", "integrations", "A delivery with its attempts",
       obj(["delivery"], delivery={"type": "object"})),
    Op("POST", f"{API}/webhook-deliveries/{{did}}/redeliver", "integrations", "Deliver again",
       obj(["delivery"], delivery={"type": "object"}), 202),
    Op("POST", f"{API}/hooks/{{name}}", "integrations", "Fire an inbound trigger (its own auth: see the trigger)", RUN, 201,
       body=ANY, extra={200: ("a replay of an earlier delivery", RUN)}, public=True),
    Op("GET", f"{API}/bundles", "integrations", "Installed bundles", obj(["bundles"], bundles=arr({"type": "object"})),
       query=(WORKFLOW,)),
    Op("GET", f"{API}/bundles/{{name}}", "integrations", "A bundle", obj(["bundle"], bundle={"type": "object"})),
]


def app_operations(routes: Iterable[Any]) -> list[tuple[str, str]]:
    """(method, path) of every operation the app serves: its `Route`s less HEAD, mounts and the catch-all."""
    out: list[tuple[str, str]] = []
    for route in routes:
        if not isinstance(route, Route) or route.path in EXCLUDED_PATHS:
            continue
        out.extend((method, route.path) for method in sorted(route.methods or ()) if method != "HEAD")
    return out


def _parameters(op: Op) -> list[dict[str, Any]]:
    params = [{"name": name, "in": "path", "required": True, "schema": {**STR, "minLength": 1}}
              for name in re.findall(r"{(\w+)}", op.path)]
    params += [{"name": p.name, "in": p.where, "required": False, "schema": p.schema,
                **({"description": p.description} if p.description else {})} for p in op.query]
    if op.idempotent:
        params.append({"$ref": "#/components/parameters/IdempotencyKey"})
    return params


def _operation(op: Op) -> dict[str, Any]:
    if op.stream:
        content: dict[str, Any] = {"text/event-stream": {"schema": {**STR, "description": SSE_DOC},
                                                         "x-event-schema": ref("Event")}}
    elif op.media:
        content = {media: {"schema": STR} for media in op.media}
    else:
        content = {"application/json": {"schema": op.ok or {"type": "object"}}}
    responses: dict[str, Any] = {str(op.status): {"description": "OK", "content": content}}
    if op.status == 204:
        responses = {"204": {"description": "Done (no body)"}}
    for status, (why, schema) in op.extra.items():
        responses[str(status)] = {"description": why, "content": {"application/json": {"schema": schema or ref("Error")}}}
    responses["default"] = {"$ref": "#/components/responses/Error"}
    out: dict[str, Any] = {
        "tags": [op.tag], "summary": op.summary,
        "operationId": re.sub(r"[^A-Za-z0-9]+", "_", f"{op.method.lower()} {op.path}").strip("_"),
        "parameters": _parameters(op), "responses": responses,
    }
    if op.description:
        out["description"] = op.description
    if op.public:
        out["security"] = []
    if op.body is not None:
        out["requestBody"] = {"required": op.body_required, "content": {"application/json": {"schema": op.body}}}
    if op.path.endswith("/workflows/validate"):
        out["requestBody"] = {"required": True, "content": {
            "application/yaml": {"schema": STR}, "application/json": {"schema": {"type": "object"}}}}
    return out


def build_document(served: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The document for the operations the app serves. A served route without an entry is listed under
    `x-undocumented` (the test fails on it); an entry whose route the app lacks is not published."""
    table = {(op.method, op.path): op for op in OPERATIONS}
    paths: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    for method, path in served:
        op = table.get((method, path))
        if op is None:
            missing.append(f"{method} {path}")
        else:
            paths.setdefault(path, {})[method.lower()] = _operation(op)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "station-wf", "version": "1",
                 "description": "A durable workflow orchestrator: definitions, runs, events (SSE), approvals, signals, "
                                "schedules, agents. Errors always have the shape of `Error`."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {}],
        "tags": [{"name": t} for t in ("runs", "streams", "control", "approvals", "workflows", "schedules", "agents",
                                       "governance", "integrations", "daemon")],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": COMPONENTS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description":
                                           "STATION_API_TOKEN or a STATION_API_TOKENS_FILE token. Without tokens the daemon "
                                           "serves loopback only and a caller may name itself with X-Station-Principal."}},
            "parameters": {"IdempotencyKey": {"name": "Idempotency-Key", "in": "header", "required": False,
                                              "schema": {**STR, "minLength": 1, "maxLength": 200},
                                              "description": "the first answer is returned again for the same key and "
                                                             "body within 24 h (another body: 422)"}},
            "responses": {"Error": {"description": "an error, in the one error shape",
                                    "headers": {"X-Request-Id": {"schema": STR}},
                                    "content": {"application/json": {"schema": ref("Error")}}}},
        },
    }
    if missing:
        doc["x-undocumented"] = sorted(set(missing))
    return doc


async def openapi_json(request: Request, state: Any) -> Response:
    """Built once per app from the app's own routes."""
    app = request.app
    doc = getattr(app.state, "openapi_document", None)
    if doc is None:
        doc = build_document(app_operations(app.routes))
        app.state.openapi_document = doc
    return SafeJSONResponse(doc)
