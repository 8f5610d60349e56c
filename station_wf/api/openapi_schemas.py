"""The OpenAPI document's `components`: the documents the API sends and takes, as JSON Schema 2020-12
(OpenAPI 3.1). They say what the handlers render (`services/runs.py` `run_to_api`, `control.py`
`approval_to_api`, `definitions.py` `definition_to_api`, ...); the schemathesis test checks every answer
of a live daemon against them. Documents may gain fields: no `additionalProperties: false` on answers.
"""

from __future__ import annotations

from typing import Any

from station_wf.services import runs as services_runs

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """`schema` or null (3.1: a type list, or `anyOf` for a `$ref`)."""
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    kind = schema.get("type")
    return {**schema, "type": [*(kind if isinstance(kind, list) else [kind]), "null"]}


def obj(required: tuple[str, ...] | list[str] = (), **properties: Schema) -> Schema:
    out: Schema = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    return out


def arr(items: Schema) -> Schema:
    return {"type": "array", "items": items}


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
BOOL: Schema = {"type": "boolean"}
TIME: Schema = {"type": "string", "format": "date-time"}
ANY: Schema = {}
"""Any JSON value (inputs, outputs, payloads: the workflow decides)."""

RUN_STATUSES = sorted(services_runs.RUN_STATUSES)

STEP = obj(
    ["stepId", "stateName", "stateType", "attempt", "status"],
    stepId=STR, stateName=STR, stateType=STR, branchPath=nullable(STR), foreachIndex=nullable(INT), attempt=INT,
    status=STR, executor=nullable(STR), idempotencyKey=nullable(STR), input=ANY, output=ANY, error=ANY, metadata=ANY,
    createdAt=nullable(TIME), startedAt=nullable(TIME), completedAt=nullable(TIME),
)

RUN = obj(
    ["id", "workflowId", "workflowVersion", "status", "lastEventSeq", "createdAt"],
    id=STR, workflowId=STR, workflowVersion=INT, contentHash=nullable(STR),
    status={**STR, "description": "one of " + ", ".join(RUN_STATUSES) + " (more may come)"},
    input=ANY, error=ANY, version={**INT, "description": "the run row's version (optimistic concurrency)"},
    lastEventSeq=INT, createdAt=TIME, startedAt=nullable(TIME), updatedAt=nullable(TIME), completedAt=nullable(TIME),
    context={"description": "the run's context document (absent in lists)"},
    steps=arr(ref("Step")), currentSteps=arr(ref("Step")),
    # issue 16: re-run, redrive, child workflows, continue-as-new
    parent=nullable(obj(["runId", "stepId"], runId=STR, stepId=STR)), rerunOf=nullable(STR),
    continuedFrom=nullable(STR), continuedAs=nullable(STR), depth=INT, redriveCount=INT,
    # issue 18: correlation and tags; a run waiting for a concurrency slot shows where it is in line
    correlationId=nullable(STR), tags={"type": "object", "additionalProperties": STR},
    queue=nullable(obj(["key", "position"], key=STR, position=INT, limit=nullable(INT))),
)

EVENT = obj(
    ["seq", "type"],
    runId={**STR, "description": "on streams only (a list's run is in its URL)"}, seq=INT, type=STR,
    stepId=nullable(STR), payload=ANY, actor=nullable(STR), time=TIME,
)

APPROVAL = obj(
    ["id", "runId", "stepId", "status"],
    id=STR, runId=STR, stepId=STR, attempt=INT, workflowId=STR, stateName=STR,
    status={**STR, "description": "pending, approved, rejected or timed_out"},
    message=nullable(STR), summary=ANY, approvers=arr(STR), onReject=nullable(STR), onTimeout=nullable(STR),
    decidedBy=nullable(STR), comment=nullable(STR), createdAt=TIME, expiresAt=nullable(TIME), decidedAt=nullable(TIME),
)

WORKFLOW = obj(
    ["id", "version", "status"],
    id=STR, version=INT, versionLabel=nullable(STR), name=nullable(STR), description=nullable(STR),
    contentHash=STR, status={**STR, "description": "active or disabled"}, source=nullable(STR),
    sourceFile=nullable(STR), environment=nullable(STR), createdAt=TIME, lastRunAt=nullable(TIME),
    definition={"type": "object", "description": "the normalized definition (absent in lists)"},
    raw={**STR, "description": "the text it was made from (absent in lists)"},
    sync=nullable(ref("SyncStatus")),
)

SYNC_STATUS = obj(
    ["workflowId", "state"],
    workflowId=STR, state={**STR, "description": "in_sync, file_changed, file_removed or not_file_synced"},
    sourceFile=nullable(STR), environment=nullable(STR), storedVersion=nullable(INT), storedHash=nullable(STR),
    fileHash=nullable(STR),
)

PROBLEM = obj(["message"], file=nullable(STR), line=nullable(INT), column=nullable(INT), path=nullable(STR), message=STR)

SCHEDULE = obj(
    ["id", "workflowId", "cron", "enabled"],
    id=STR, workflowId=STR, cron=STR, timezone=STR, input=ANY, enabled=BOOL, defined=BOOL, lastFireAt=nullable(TIME),
    lastRunId=nullable(STR), lastError=ANY, nextFireAt=nullable(TIME),
)

AGENT = obj(
    ["name"],
    name=STR, environment=nullable(STR), description=nullable(STR), model=nullable(STR), endpoint=nullable(STR),
    baseUrl=nullable(STR), apiKeyEnv=nullable(STR), inputSchema=ANY, outputSchema=ANY, config=ANY,
    contentHash=nullable(STR), sourceFile=nullable(STR), displayName=nullable(STR), notes=arr(STR), template=nullable(STR),
)

ERROR = obj(
    ["error"],
    error=obj(["code", "message", "details", "request_id"],
              code={**STR, "description": "stable, machine-readable (not_found, invalid_request, conflict, ...)"},
              message={**STR, "description": "for people"}, details=ANY,
              request_id={**STR, "description": "also in the X-Request-Id header; quote it in reports"}),
)

START = {
    "type": "object",
    "properties": {"workflowId": STR, "version": {**INT, "minimum": 1}, "input": ANY,
                   "workflow_id": {**STR, "description": "Station's name for workflowId"},
                   "environmentId": {"description": "Station's; accepted and unused"},
                   "options": {"description": "Station's; accepted and unused"},
                   "correlationId": {**STR, "maxLength": 256, "description": "for finding related runs (issue 18)"},
                   "tags": {"type": "object", "additionalProperties": STR, "maxProperties": 32}},
    "description": "workflowId (or Station's workflow_id) is required; input is checked against the workflow's inputSchema",
    "examples": [{"workflowId": "hello", "input": {"name": "Ada"}}],
}

BATCH_ITEM = {**obj(["workflowId"], workflowId=STR, version={**INT, "minimum": 1}, input=ANY, idempotencyKey=STR,
                    correlationId=STR, tags={"type": "object", "additionalProperties": STR}),
              "examples": [{"workflowId": "hello", "input": {"name": "a"}, "idempotencyKey": "job-1"}]}
BATCH_RESULT = obj(["index", "status"], index=INT, status=INT, run=ref("Run"),
                   error=obj(["code", "message"], code=STR, message=STR, details=ANY), replayed=BOOL)

COMPONENTS: dict[str, Schema] = {
    "Run": RUN, "Step": STEP, "Event": EVENT, "Approval": APPROVAL, "Workflow": WORKFLOW, "Problem": PROBLEM,
    "Schedule": SCHEDULE, "SyncStatus": SYNC_STATUS, "Agent": AGENT, "Error": ERROR, "StartRun": START, "BatchItem": BATCH_ITEM,
    "BatchResult": BATCH_RESULT,
    "RunPage": obj(["runs", "nextCursor"], runs=arr(ref("Run")), nextCursor=nullable(STR)),
    "EventPage": obj(["events", "nextAfterSeq"], events=arr(ref("Event")), nextAfterSeq=nullable(INT)),
    "Validation": obj(["valid", "errors"], valid=BOOL, errors=arr(ref("Problem")), warnings=arr(ref("Problem")),
                      workflowId=nullable(STR), dialect=STR, dialectReason=STR),
    "Signal": obj(["signalId", "name", "consumed"], signalId=INT, name=STR, consumed=BOOL),
}
