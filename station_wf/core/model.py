"""The core's vocabulary: statuses, the values the interpreter reads and returns, and its rules.

Owns: run and step statuses and their sets (the SQL status lists of `store/` are built from these),
the container types, the reserved input keys, the dataclasses passed between the shell and the
interpreter, `derive_status`, and `Rules` (the settings the interpreter obeys, passed in with the
run state, never read from a module global). Imports only `expr/`: this is the leaf every floor may use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from station_wf.expr.paths import RESERVED_INPUT_KEYS

__all__ = [
    "ACTIVE_RUN_STATUSES", "CANCELLED", "COMPLETED", "CONTAINER_TYPES", "FAILED", "OPEN_STEP_STATUSES", "PAUSED",
    "PENDING", "RESERVED_INPUT_KEYS", "RUNNING", "SUCCEEDED", "TERMINAL_RUN_STATUSES", "TIMED_OUT",
    "WAITING_APPROVAL", "WAITING_SIGNAL", "Event", "Execute", "NewApproval", "NewStep", "NewTimer", "Rules",
    "RunState", "Signal", "StepUpdate", "StepView", "Transition", "derive_status",
]

# Run statuses (PRD 3.6).
PENDING = "PENDING"
RUNNING = "RUNNING"
WAITING_APPROVAL = "WAITING_APPROVAL"
WAITING_SIGNAL = "WAITING_SIGNAL"
PAUSED = "PAUSED"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
TIMED_OUT = "TIMED_OUT"
TERMINAL_RUN_STATUSES = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})
ACTIVE_RUN_STATUSES = frozenset({RUNNING, WAITING_APPROVAL, WAITING_SIGNAL})  # tasks are executed

# Step statuses.
SUCCEEDED = "SUCCEEDED"
OPEN_STEP_STATUSES = frozenset({PENDING, RUNNING, WAITING_APPROVAL, WAITING_SIGNAL})
CONTAINER_TYPES = frozenset({"parallel", "foreach", "try"})



@dataclass(frozen=True)
class Rules:
    """The daemon's settings the interpreter obeys; the shell builds them once and passes them with
    each `RunState` (the defaults are production's), so no test has to patch a global."""

    expression_timeout_s: float = 0.1
    retry_max_backoff_s: float = 3600.0
    step_timeout_default_s: float = 3600.0
    step_timeout_max_s: float = 86400.0
    run_timeout_default_s: float = 0.0  # issue 18: a run's timeout when its workflow names none (0: none)
    run_timeout_max_s: float = 0.0      # issue 18: the longest any run may last (0: no maximum)

    def run_timeout(self, requested: float | None) -> float | None:
        """The run's durable timeout: its workflow's `timeoutSeconds` or the default, at most the maximum."""
        value = float(requested) if requested else self.run_timeout_default_s
        if self.run_timeout_max_s > 0:
            value = min(value, self.run_timeout_max_s) if value > 0 else self.run_timeout_max_s
        return value if value > 0 else None

    def step_timeout(self, requested: float | None) -> float:
        """A step's `timeoutSeconds`, or the default; clamped to the maximum (never refused at run time)."""
        value = float(requested) if requested else self.step_timeout_default_s
        return min(value, self.step_timeout_max_s) if self.step_timeout_max_s > 0 else value


@dataclass(frozen=True)
class StepView:
    """What the interpreter needs to know about one attempt of a step."""

    step_id: str
    state_name: str
    attempt: int
    branch_path: str = ""
    foreach_index: int | None = None
    status: str = PENDING
    state_type: str = ""
    try_number: int = 0  # the attempt within this visit of the state (0: same as `attempt`)
    has_result: bool = False  # the executor's result is recorded; only the decision is left

    @property
    def tries(self) -> int:
        """Retries count per visit: a loop revisiting a state starts again at 1 (review M7)."""
        return self.try_number or self.attempt


@dataclass(frozen=True)
class Signal:
    id: int
    name: str
    payload: Any


@dataclass(frozen=True)
class RunState:
    run_id: str
    context: dict[str, Any]
    engine: dict[str, Any]
    open_steps: tuple[StepView, ...] = ()
    now: str = ""
    signals: tuple[Signal, ...] = ()  # delivered, not yet consumed, in delivery order
    rules: Rules = Rules()


@dataclass(frozen=True)
class NewApproval:
    approval_id: str
    step_id: str
    attempt: int
    state_name: str
    message: str | None
    summary: Any
    approvers: list[str]
    timeout_seconds: float | None
    on_reject: str
    on_timeout: str


@dataclass(frozen=True)
class NewStep:
    step_id: str
    state_name: str
    state_type: str
    branch_path: str
    foreach_index: int | None
    attempt: int
    idempotency_key: str
    delay_seconds: float = 0.0  # > 0: held by a durable timer (retry back-off) before its task
    inline: bool = False  # decided without an executor: may run in the same transaction as its cause
    reopened: bool = False  # a container's new attempt on redrive: RUNNING at once, no task, never begun


@dataclass(frozen=True)
class StepUpdate:
    step_id: str
    attempt: int
    status: str
    output: Any = None
    error: dict[str, Any] | None = None
    only_if_open: bool = False  # cancellations: compare-and-set, never overwrite a closed attempt
    input: dict[str, Any] | None = None  # the rendered input of a built-in wait (approval, signal)


@dataclass(frozen=True)
class NewTimer:
    kind: str  # sleep | run_timeout (retry timers come from NewStep.delay_seconds)
    delay_seconds: float
    step_id: str | None = None
    attempt: int | None = None
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    type: str
    payload: dict[str, Any]
    step_id: str | None = None
    actor: str | None = None  # who caused it, when a person did (redrive); the event log's `actor`


@dataclass
class Transition:
    """Everything one event changes; the shell commits it atomically with the tasks for `new_steps`.

    The shell appends a `step.scheduled` event for each new step, since only it knows the attempt
    number a revisited state continues with.
    """

    run_status: str | None = None
    run_error: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    engine: dict[str, Any] | None = None
    step_updates: list[StepUpdate] = field(default_factory=list)
    new_steps: list[NewStep] = field(default_factory=list)
    timers: list[NewTimer] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    approvals: list[NewApproval] = field(default_factory=list)
    consumed_signals: list[tuple[int, str]] = field(default_factory=list)  # (signal id, step id)
    reopen: bool = False  # an ended run continues (redrive): its error and completion time are cleared


@dataclass(frozen=True)
class Execute:
    """The step needs an executor; the shell records it RUNNING with this rendered input."""

    action: str
    input: dict[str, Any]
    timeout_seconds: float | None


def derive_status(open_statuses: list[str]) -> str:
    """An active run's status from its open steps: work pending wins, then approvals, then signals."""
    if any(s in (PENDING, RUNNING) for s in open_statuses):
        return RUNNING
    if WAITING_APPROVAL in open_statuses:
        return WAITING_APPROVAL
    if WAITING_SIGNAL in open_statuses:
        return WAITING_SIGNAL
    return RUNNING
