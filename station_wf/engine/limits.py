"""Bounds a run cannot exceed, set once from the daemon's settings.

They live in one small module (not threaded through every constructor) because every transaction
that commits a transition checks them: the worker, the timer loop and the control API alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MIB = 1 << 20


@dataclass
class Limits:
    max_deliveries: int = 5
    step_timeout_default_s: float = 3600.0
    step_timeout_max_s: float = 86400.0
    max_steps_per_run: int = 10_000
    max_events_per_run: int = 100_000
    max_context_bytes: int = 16 * MIB
    retry_max_backoff_s: float = 3600.0

    def step_timeout(self, requested: float | None) -> float:
        """A step's `timeoutSeconds`, or the default; clamped to the maximum (never refused at run time)."""
        value = float(requested) if requested else self.step_timeout_default_s
        return min(value, self.step_timeout_max_s) if self.step_timeout_max_s > 0 else value


LIMITS = Limits()


def configure(settings: Any) -> None:
    """Copy the daemon's settings into LIMITS (fields of the same names on `Settings`)."""
    LIMITS.max_deliveries = int(settings.max_deliveries)
    LIMITS.step_timeout_default_s = float(settings.step_timeout_default_seconds)
    LIMITS.step_timeout_max_s = float(settings.step_timeout_max_seconds)
    LIMITS.max_steps_per_run = int(settings.max_steps_per_run)
    LIMITS.max_events_per_run = int(settings.max_events_per_run)
    LIMITS.max_context_bytes = int(settings.max_context_bytes)
    LIMITS.retry_max_backoff_s = float(settings.retry_max_backoff_seconds)


def exceeded(steps: int, events: int, new_steps: int, new_events: int, state_bytes: int) -> dict[str, Any] | None:
    """The error that fails a run about to pass a cap, or None. Pure: the caller counts."""
    if steps + new_steps > LIMITS.max_steps_per_run:
        return _error("max_steps_per_run", "STATION_MAX_STEPS_PER_RUN", LIMITS.max_steps_per_run, "steps")
    if events + new_events > LIMITS.max_events_per_run:
        return _error("max_events_per_run", "STATION_MAX_EVENTS_PER_RUN", LIMITS.max_events_per_run, "events")
    if state_bytes > LIMITS.max_context_bytes:
        return _error("max_context_bytes", "STATION_MAX_CONTEXT_BYTES", LIMITS.max_context_bytes, "bytes of context")
    return None


def _error(name: str, env: str, limit: int, what: str) -> dict[str, Any]:
    return {"type": "limit_exceeded", "limit": name, "setting": env, "max": limit,
            "message": f"the run would exceed {limit} {what} ({env})"}
