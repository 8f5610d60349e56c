"""The executor interface and registry: one small protocol, so a new action is one module."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class StepCall:
    """Everything an executor may use; `idempotency_key` is stable across redeliveries of one attempt."""

    run_id: str
    step_id: str
    attempt: int
    idempotency_key: str
    state_name: str
    action: str
    input: dict[str, Any]
    timeout_seconds: float | None = None
    traceparent: str | None = None
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepResult:
    """An executor's output plus what the run's history should show about how it was produced
    (model, token usage, latency, the rendered prompt). Returning a bare value means no metadata."""

    output: Any
    metadata: dict[str, Any] = field(default_factory=dict)


class StepError(Exception):
    """A failed attempt, with a machine-readable type (timeout, validation, agent_error, ...)."""

    def __init__(self, message: str, *, type: str = "agent_error", details: dict[str, Any] | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.type = type
        self.details = details or {}
        self.metadata = metadata or {}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "message": str(self)}
        if self.details:
            out["details"] = self.details
        return out


class Executor(Protocol):
    action: str

    async def execute(self, call: StepCall) -> Any: ...


class ExecutorRegistry:
    def __init__(self) -> None:
        self._by_action: dict[str, Executor] = {}

    def register(self, executor: Executor) -> None:
        self._by_action[executor.action] = executor

    def get(self, action: str) -> Executor:
        try:
            return self._by_action[action]
        except KeyError:
            known = ", ".join(sorted(self._by_action)) or "none"
            raise StepError(f"no executor for action {action!r} (known: {known})", type="validation") from None
