"""Throughput: 2,000 runs of a 10-step workflow posted by the lean client (16 threads, its own process).

Rates come from the daemon's own SQLite rows (first run created -> last run completed, steps counted
from `step.succeeded` events), beside the CPU each process spent per step in that window: the daemon,
its nats-server, the load client and (agent scenario) the demo agent. Each repetition posts a fresh
batch of runs to the same daemon after a warm-up; medians over repetitions are reported.

    python -m benchmarks.throughput [--runs 2000] [--repeats 3] [--agent] [--profile PATH]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.drive import measure_load, medians, ro, ts
from benchmarks.harness import BenchDaemon

WARMUP_RUNS = 200


def noop_workflow(steps: int, agent: bool, name: str = "bench") -> str:
    """`steps` inject steps; with `agent`, every second one is an `agent.run` against the demo agent."""
    lines = [f"id: {name}", "start: s0", "states:"]
    for i in range(steps):
        nxt = f"next: s{i + 1}" if i + 1 < steps else "end: true"
        if agent and i % 2 == 1:
            lines.append(f"  - {{ name: s{i}, type: operation, action: agent.run, input: {{ agent: echo, task: t{i} }}, {nxt} }}")
        else:
            lines.append(f"  - {{ name: s{i}, type: inject, data: {{ v{i}: {i} }}, {nxt} }}")
    return "\n".join(lines) + "\n"


def bench_daemon(workflows: dict[str, str], extra_env: dict[str, str] | None = None,
                 agents: dict[str, int] | None = None) -> BenchDaemon:
    """A started daemon holding `workflows`, the `echo` agent (the demo agent) and `agents` (name: port)."""
    daemon = BenchDaemon(extra_env)
    for name, text in workflows.items():
        daemon.add_workflow(name, text)
    daemon.add_agent("echo", daemon.agent_port)
    for name, port in (agents or {}).items():
        daemon.add_agent(name, port)
    daemon.start()
    return daemon


def per_step(rep: dict[str, Any]) -> dict[str, Any]:
    """CPU ms per step of every process measured in one repetition."""
    steps = rep.get("steps") or 1
    for name in ("nats", "client", "agent"):
        if f"{name}_cpu_s" in rep:
            rep[f"{name}_cpu_ms_per_step"] = round(rep[f"{name}_cpu_s"] * 1000 / steps, 3)
    return rep


KEYS = ("steps_per_s", "runs_per_s", "daemon_cpu_ms_per_step", "nats_cpu_ms_per_step", "client_cpu_ms_per_step",
        "agent_cpu_ms_per_step", "post_s", "db_span_s")


def run_scenario(runs: int = 2000, repeats: int = 3, agent: bool = False, steps: int = 10,
                 profile: str | None = None) -> dict[str, Any]:
    """`profile`: a path for a py-spy raw profile of the daemon over the measured repetitions."""
    daemon = bench_daemon({"bench": noop_workflow(steps, agent)})
    spy = None
    try:
        measure_load(daemon, "bench", WARMUP_RUNS)
        if profile:
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(daemon.pid), "-o",
                                    profile, "-f", "raw", "-r", "200"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        reps = [per_step(measure_load(daemon, "bench", runs)) for _ in range(repeats)]
    finally:
        if spy:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        daemon.stop()
    incomplete = [r for r in reps if not r["all_reached"] or set(r["statuses"]) != {"COMPLETED"}]
    result = {"scenario": f"throughput-{'agent' if agent else 'inject'}", "runs": runs, "steps_per_run": steps,
              "repeats": repeats, "client": f"lean, 16 threads, {reps[0]['client_mode']}", **medians(reps, KEYS)}
    if incomplete:
        result["incomplete"] = [{"statuses": r["statuses"], "error": r.get("first_error")} for r in incomplete]
    return result


def step_gaps(db: str, after_id: int) -> list[float]:
    """Step-to-step overhead of runs created after `after_id`: a step committed -> the next step started."""
    conn = ro(db)
    gaps: list[float] = []
    try:
        current, last_done = None, None
        for run_id, kind, t in conn.execute(
                "SELECT e.run_id, e.type, e.created_at FROM workflow_run_events e JOIN workflow_runs r"
                " ON e.run_id = r.run_id WHERE r.id > ? AND e.type IN ('step.succeeded', 'step.started')"
                " ORDER BY e.run_id, e.seq", (after_id,)):
            if run_id != current:
                current, last_done = run_id, None
            if kind == "step.succeeded":
                last_done = ts(t)
            elif last_done is not None:
                gaps.append(ts(t) - last_done)
                last_done = None
    finally:
        conn.close()
    return sorted(gaps)


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile of sorted `values` (the median for 0.5), None when there are none."""
    if not values:
        return None
    if q == 0.5:
        return statistics.median(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput")
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--agent", action="store_true")
    parser.add_argument("--profile", help="write a py-spy raw profile of the daemon here (the bench extra)")
    args = parser.parse_args()
    print(json.dumps(run_scenario(args.runs, args.repeats, args.agent, args.steps, args.profile), indent=2))


if __name__ == "__main__":
    main()
