"""Traces, metrics and logs (PRD 5): OpenTelemetry spans, a Prometheus text registry, JSON logs."""

from station_wf.telemetry.logs import classify_error, configure_logging, step_log
from station_wf.telemetry.metrics import (
    render_prometheus,
    runs_finished_total,
    runs_started_total,
    step_duration_seconds,
)
from station_wf.telemetry.tracing import (
    agent_span,
    inject_traceparent,
    new_run_traceparent,
    setup_tracing,
    shutdown_tracing,
    step_spans,
    token_attributes,
)

__all__ = [
    "agent_span",
    "classify_error",
    "configure_logging",
    "inject_traceparent",
    "new_run_traceparent",
    "render_prometheus",
    "runs_finished_total",
    "runs_started_total",
    "setup_tracing",
    "shutdown_tracing",
    "step_duration_seconds",
    "step_log",
    "step_spans",
    "token_attributes",
]
