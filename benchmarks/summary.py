"""The goals of issue 14 beside the measured numbers: one markdown table, each row naming its JSON field.

A goal is a number to compare, never a test: `met?` is printed, nothing fails on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Results = dict[str, dict[str, Any]]


def dbos_best(results: Results) -> float | None:
    """DBOS's best steps/s (the faster of sequential and concurrent, each the faster style)."""
    dbos = results.get("dbos") or {}
    rates = [dbos.get(k) for k in ("sequential_steps_per_s", "concurrent_steps_per_s")]
    rates = [r for r in rates if isinstance(r, int | float)]
    return max(rates) if rates else None


def ratios(results: Results) -> None:
    """Add `ratio_to_dbos` to the throughput scenarios when DBOS ran in the same invocation."""
    best = dbos_best(results)
    dbos_cpu = (results.get("dbos") or {}).get("cpu_ms_per_step")
    for name in ("throughput-inject", "throughput-agent"):
        r = results.get(name)
        if r and best and r.get("steps_per_s"):
            r["ratio_to_dbos"] = round(r["steps_per_s"] / best, 2)
            r["dbos_steps_per_s"] = best
        # CPU per step of every process on our side (daemon, nats-server, client, agent) against DBOS's
        # whole process: the comparison a busy machine disturbs least.
        ours = sum(r.get(f"{p}_cpu_ms_per_step") or 0 for p in ("daemon", "nats", "client", "agent")) if r else 0
        if r and dbos_cpu and ours:
            r["cpu_ratio_to_dbos"] = round(dbos_cpu / ours, 2)


def _get(results: Results, path: str) -> Any:
    name, _, key = path.partition(".")
    value: Any = results.get(name, {})
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


# (label, JSON path, unit, goal text, test on the value or None)
ROWS: list[tuple[str, str, str, str, Callable[[float], bool] | None]] = [
    ("10 inject steps: station-wf / DBOS", "throughput-inject.ratio_to_dbos", "x", ">= 5x", lambda v: v >= 5),
    ("10 inject steps: DBOS CPU per step / ours (all processes)", "throughput-inject.cpu_ratio_to_dbos", "x", "", None),
    ("10 inject steps: steps/s", "throughput-inject.steps_per_s", "", "", None),
    ("10 inject steps: daemon CPU per step", "throughput-inject.daemon_cpu_ms_per_step", " ms", "<= 0.2 ms", lambda v: v <= 0.2),
    ("5 inject + 5 agent.run: station-wf / DBOS", "throughput-agent.ratio_to_dbos", "x", ">= 2.5x", lambda v: v >= 2.5),
    ("5 inject + 5 agent.run: DBOS CPU per step / ours (all processes)", "throughput-agent.cpu_ratio_to_dbos", "x", "",
     None),
    ("5 inject + 5 agent.run: steps/s", "throughput-agent.steps_per_s", "", "", None),
    ("5 inject + 5 agent.run: daemon CPU per step", "throughput-agent.daemon_cpu_ms_per_step", " ms", "<= 0.4 ms", lambda v: v <= 0.4),
    ("5 inject + 5 agent.run: demo agent CPU per step", "throughput-agent.agent_cpu_ms_per_step", " ms", "", None),
    ("10 inject steps, 1 daemon on SQLite (replicas run): steps/s", "replicas.sqlite_1.steps_per_s", "", "", None),
    ("10 inject steps, 1 daemon on Postgres: steps/s", "replicas.postgres_1.steps_per_s", "", "", None),
    ("10 inject steps, 2 daemons on one Postgres: steps/s", "replicas.postgres_2.steps_per_s", "", "", None),
    ("2 daemons / 1 daemon on Postgres (steps/s; 2 shared cores)", "replicas.ratio_2_to_1_replicas", "x", "", None),
    ("1 daemon: Postgres / SQLite (steps/s)", "replicas.ratio_postgres_to_sqlite", "x", "", None),
    ("1 daemon on SQLite: daemon CPU per step", "replicas.sqlite_1.daemon_cpu_ms_per_step", " ms", "", None),
    ("1 daemon on Postgres: daemon CPU per step", "replicas.postgres_1.daemon_cpu_ms_per_step", " ms", "", None),
    ("1 daemon on Postgres: Postgres CPU per step", "replicas.postgres_1.postgres_cpu_ms_per_step", " ms", "", None),
    ("2 daemons on Postgres: both daemons' CPU per step", "replicas.postgres_2.daemon_cpu_ms_per_step", " ms", "", None),
    ("2 daemons on Postgres: Postgres CPU per step", "replicas.postgres_2.postgres_cpu_ms_per_step", " ms", "", None),
    ("DBOS 10-step no-op, best of sequential/concurrent", "dbos.best_steps_per_s", " steps/s", "", None),
    ("step-to-step, one run at a time: p50", "latency.step_gap_p50_ms", " ms", "<= 2 ms", lambda v: v <= 2),
    ("step-to-step, one run at a time: p99", "latency.step_gap_p99_ms", " ms", "<= 10 ms", lambda v: v <= 10),
    ("SSE, 1,000 subscribers on one run: p50", "sse-fanout.p50_ms", " ms", "", None),
    ("SSE, 1,000 subscribers on one run: p99", "sse-fanout.p99_ms", " ms", "<= 200 ms", lambda v: v <= 200),
    ("SSE, 10,000 idle subscribers: daemon RSS", "sse-idle.rss_held_mb", " MB", "bounded", None),
    ("SSE, 10,000 idle subscribers: idle CPU", "sse-idle.idle_cpu_pct", " %", "", None),
    ("a run's whole history (sse-big.events) through SSE: daemon RSS growth", "sse-big.rss_growth_mb", " MB",
     "bounded", None),
    ("the same history through GET /events: events/s", "sse-big.api_events_per_s", "", "", None),
    ("kill -9, 1,000 runs in flight: restart to all completed", "recovery.restart_to_all_completed_s", " s", "<= 3 s", lambda v: v <= 3),
    ("parked runs: daemon RSS", "parked.rss_mb", " MB", "<= 300 MB", lambda v: v <= 300),
    ("parked runs: idle CPU", "parked.idle_cpu_pct", " %", "<= 2 %", lambda v: v <= 2),
    ("parked runs: created per second", "parked.create_runs_per_s", " runs/s", "", None),
    ("a step with a 1 MB vs a 1 KB context (daemon CPU)", "context-size.ratio_1mb_to_1kb", "x", "<= 1.5x", lambda v: v <= 1.5),
    ("foreach: per-item CPU growth, smallest -> largest finished", "foreach-size.growth_per_item", "x", "linear (<= 2x)",
     lambda v: v <= 2),
    ("foreach: largest size finished in time", "foreach-size.largest_finished", " items", "10,000", lambda v: v >= 10_000),
    ("run creation, single POSTs (16 threads)", "creation.single.runs_per_s", " runs/s", "", None),
    ("run creation, batches of 1,000", "creation.batch.runs_per_s", " runs/s", "", None),
]


def table(results: Results) -> str:
    lines = ["| scenario | result | goal | met? | JSON field |", "|---|---|---|---|---|"]
    for label, path, unit, goal, test in ROWS:
        name = path.split(".")[0]
        if name not in results:
            continue
        value = _get(results, path)
        if "error" in results[name]:
            shown, met = f"error: {results[name]['error'][:80]}", ""
        elif isinstance(value, int | float):
            shown = f"{value:,}{unit}"
            met = ("yes" if test(value) else "**no**") if test else ""
        else:
            shown, met = (str(value) if value is not None else "n/a"), ("**no**" if test and value is not None else "")
        lines.append(f"| {label} | {shown} | {goal} | {met} | `{path}` |")
    lines.extend(_notes(results))
    return "\n".join(lines)


def _notes(results: Results) -> list[str]:
    notes = []
    for name, via in (("parked", "created_via"), ("creation", "batch.via")):
        value = _get(results, f"{name}.{via}")
        if value:
            notes.append(f"\n{name}: runs created via {value}")
    for key, value in (results.get("foreach-size") or {}).items():
        if isinstance(value, str) and value.startswith("not finished"):
            notes.append(f"\nforeach-size {key}: {value}")
    if "bound" in (results.get("replicas") or {}):
        notes.append(f"\nreplicas: {results['replicas']['bound']}")
    for name in ("throughput-inject", "throughput-agent"):
        if name in results and "ratio_to_dbos" not in results[name] and "error" not in results[name]:
            notes.append(f"\n{name}: no DBOS ratio (DBOS did not run in this invocation; add it to --only)")
    return notes
