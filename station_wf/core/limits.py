"""Bounds a run cannot exceed, set once from the daemon's settings.

A leaf of the core room (data only, no I/O) so that the store, which enforces the per-run caps while
it applies a transition, can read them without importing the engine shell.

They live in one small module (not threaded through every constructor) because every transaction
that commits a transition checks them: the worker, the timer loop and the control API alike. The
part the pure interpreter obeys is `LIMITS.rules` (a `core.model.Rules` value), which the shell hands
to the interpreter inside each `RunState`; the core itself reads no global.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from station_wf.core.model import Rules

MIB = 1 << 20


@dataclass
class Limits:
    max_deliveries: int = 5
    max_steps_per_run: int = 10_000
    max_events_per_run: int = 100_000
    max_context_bytes: int = 16 * MIB
    rules: Rules = field(default_factory=Rules)  # step timeouts, retry cap, expression timeout
    run_cache_bytes: int = 64 * MIB  # the writer's decoded-run-state cache (store/run_cache.py)
    max_child_depth: int = 8  # runs started by runs (`workflow.run`), counted from the top-level run


LIMITS = Limits()


def configure(settings: Any) -> None:
    """Copy the daemon's settings into LIMITS (fields of the same names on `Settings`)."""
    LIMITS.max_deliveries = int(settings.max_deliveries)
    LIMITS.max_steps_per_run = int(settings.max_steps_per_run)
    LIMITS.max_events_per_run = int(settings.max_events_per_run)
    LIMITS.max_context_bytes = int(settings.max_context_bytes)
    LIMITS.run_cache_bytes = max(0, int(getattr(settings, "run_cache_mb", 64))) * MIB
    LIMITS.max_child_depth = int(getattr(settings, "max_child_depth", 8))
    LIMITS.rules = Rules(
        expression_timeout_s=float(settings.expression_timeout_ms) / 1000,
        retry_max_backoff_s=float(settings.retry_max_backoff_seconds),
        step_timeout_default_s=float(settings.step_timeout_default_seconds),
        step_timeout_max_s=float(settings.step_timeout_max_seconds),
        run_timeout_default_s=float(getattr(settings, "run_timeout_default_seconds", 0.0)),
        run_timeout_max_s=float(getattr(settings, "run_timeout_max_seconds", 0.0)),
    )


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
