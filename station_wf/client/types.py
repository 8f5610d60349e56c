"""The API's documents as typed dicts: what `Client` and `AsyncClient` return.

They are the JSON the daemon sends, unchanged (camelCase keys), so a value can be printed, stored or
sent back as it is; `total=False` because documents gain fields over time (a client of an older
release must keep working against a newer daemon). The OpenAPI document (`/api/v1/openapi.json`)
describes the same shapes for other languages.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

RunStatus = Literal["PENDING", "RUNNING", "WAITING_APPROVAL", "WAITING_SIGNAL", "PAUSED",
                    "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
"""A run in one of these has ended (a run that continued as new is COMPLETED, `continuedAs` naming its successor)."""


class Step(TypedDict, total=False):
    stepId: str
    stateName: str
    stateType: str
    branchPath: str | None
    foreachIndex: int | None
    attempt: int
    status: str
    executor: str | None
    idempotencyKey: str | None
    input: Any
    output: Any
    error: Any
    metadata: Any
    createdAt: str | None
    startedAt: str | None
    completedAt: str | None


class RunParent(TypedDict):
    runId: str
    stepId: str


class Run(TypedDict, total=False):
    id: str
    workflowId: str
    workflowVersion: int
    contentHash: str
    status: str
    input: Any
    error: Any
    version: int
    lastEventSeq: int
    createdAt: str
    startedAt: str | None
    updatedAt: str
    completedAt: str | None
    context: Any
    steps: list[Step]
    currentSteps: list[Step]
    # issue 16 (re-run, redrive, child workflows, continue-as-new)
    parent: RunParent | None
    rerunOf: str | None
    continuedFrom: str | None
    continuedAs: str | None
    depth: int
    redriveCount: int


class RunPage(TypedDict):
    runs: list[Run]
    nextCursor: str | None


class Event(TypedDict, total=False):
    runId: str
    seq: int
    type: str
    stepId: str | None
    payload: Any
    actor: str | None
    time: str


class EventPage(TypedDict):
    events: list[Event]
    nextAfterSeq: int | None


class BatchItem(TypedDict, total=False):
    workflowId: str
    version: int
    input: Any
    idempotencyKey: str


class ErrorBody(TypedDict):
    code: str
    message: str
    details: Any


class BatchResult(TypedDict, total=False):
    index: int
    status: int
    run: Run
    error: ErrorBody
    replayed: bool


class Approval(TypedDict, total=False):
    id: str
    runId: str
    stepId: str
    attempt: int
    workflowId: str
    stateName: str
    status: str
    message: str | None
    summary: Any
    approvers: list[str]
    onReject: str | None
    onTimeout: str | None
    decidedBy: str | None
    comment: str | None
    createdAt: str
    expiresAt: str | None
    decidedAt: str | None


class Delivery(TypedDict, total=False):
    id: str
    event: str
    url: str
    status: str
    attempts: list[dict[str, Any]]


class Signal(TypedDict):
    signalId: int
    name: str
    consumed: bool


class Workflow(TypedDict, total=False):
    id: str
    version: int
    versionLabel: str | None
    name: str | None
    description: str | None
    contentHash: str
    status: str
    source: str
    sourceFile: str | None
    environment: str | None
    createdAt: str
    lastRunAt: str | None
    sync: SyncStatus | None
    definition: dict[str, Any]
    raw: str


class SyncStatus(TypedDict, total=False):
    workflowId: str
    state: str
    sourceFile: str | None
    environment: str | None
    storedVersion: int | None
    storedHash: str | None
    fileHash: str | None


class Problem(TypedDict, total=False):
    file: str
    line: int | None
    column: int | None
    path: str
    message: str


class Validation(TypedDict, total=False):
    valid: bool
    errors: list[Problem]
    warnings: list[Problem]
    workflowId: str | None


class Schedule(TypedDict, total=False):
    id: str
    workflowId: str
    cron: str
    timezone: str
    input: Any
    enabled: bool
    defined: bool
    lastFireAt: str
    lastRunId: str | None
    lastError: Any
    nextFireAt: str | None


class Agent(TypedDict, total=False):
    name: str
    environment: str
    description: str | None
    model: str | None
    endpoint: str | None
    baseUrl: str | None
    apiKeyEnv: str | None
    inputSchema: Any
    outputSchema: Any
    config: Any
    contentHash: str
    sourceFile: str
    displayName: str | None
    notes: list[str]
    template: str


class AgentList(TypedDict):
    environment: str
    agents: list[Agent]
    errors: list[Any]


class Health(TypedDict, total=False):
    status: str
    writer: dict[str, Any]
    checks: dict[str, bool]


def is_terminal(run: Run) -> bool:
    """The run has ended (no more events will come)."""
    return run.get("status") in TERMINAL_STATUSES
