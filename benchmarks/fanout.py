"""SSE fan-out: many subscribers on one run, driven by `benchmarks.sseclient` in its own process.

- `sse_fanout(N)`: N subscribers on a run held at its first (agent) step; released, the run's next
  steps commit events whose commit-to-client latency each subscriber measures (p50/p99).
- `sse_idle(N)`: N subscribers on a parked run: the daemon's RSS and idle CPU while they are held.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from benchmarks.drive import finish, last_run_id, loadgen, ro, wait_runs
from benchmarks.procstat import CpuWindow, rss_mb
from benchmarks.scenarios import PARKED, PARKED_STATUS, GateAgent
from benchmarks.throughput import bench_daemon, noop_workflow


def _env(clients: int) -> dict[str, str]:
    return {"STATION_MAX_SSE_CONNECTIONS": str(clients + 100)}


def _one_run(daemon: Any, workflow: str, until: tuple[str, ...] | None = None) -> str:
    after = last_run_id(daemon.db)
    finish(loadgen(daemon, workflow, 1))
    if until:
        wait_runs(daemon.db, after, until, 1, 60)
    conn = ro(daemon.db)
    try:
        return conn.execute("SELECT run_id FROM workflow_runs WHERE id > ?", (after,)).fetchone()[0]
    finally:
        conn.close()


def _subscribers(url: str, clients: int) -> tuple[subprocess.Popen, dict[str, Any]]:
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.sseclient", "--url", url, "--clients", str(clients)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline() or "{}")
    return proc, ready


def _summary(proc: subprocess.Popen, command: str) -> dict[str, Any]:
    out, _ = proc.communicate(command + "\n", timeout=600)
    return json.loads(out.strip().splitlines()[-1])


def sse_fanout(clients: int = 1000, steps: int = 10) -> dict[str, Any]:
    gate = GateAgent()
    workflow = noop_workflow(steps, agent=False, name="fan").replace(
        "  - { name: s0, type: inject, data: { v0: 0 }, next: s1 }",
        "  - { name: s0, type: operation, action: agent.run, input: { agent: gate, task: t }, next: s1 }")
    daemon = bench_daemon({"fan": workflow}, _env(clients), agents={"gate": gate.port})
    try:
        run_id = _one_run(daemon, "fan")
        proc, ready = _subscribers(f"{daemon.base}/api/v1/workflow-runs/{run_id}/stream", clients)
        time.sleep(0.5)
        window = CpuWindow(daemon.pids()).start()
        go = time.time()
        proc.stdin.write(f"go {go}\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        gate.release.set()
        got = _summary(proc, "")
        cpu = window.stop()
    finally:
        daemon.stop()
        gate.close()
    deliveries = max(1, got.get("deliveries", 0))
    return {"scenario": "sse-fanout", "subscribers": clients, "connected": ready.get("ready"),
            "refused": ready.get("refused"), "finished": got.get("finished"), "deliveries": got.get("deliveries"),
            "p50_ms": got.get("p50_ms"), "p99_ms": got.get("p99_ms"), "max_ms": got.get("max_ms"),
            "delivery_s": got.get("wait_s"),
            "daemon_cpu_us_per_delivery": round(cpu.get("daemon", 0) * 1e6 / deliveries, 1),
            "client_cpu_s": got.get("client_cpu_s")}


def sse_idle(clients: int = 10_000, idle_seconds: float = 10) -> dict[str, Any]:
    daemon = bench_daemon({"parked": PARKED}, _env(clients))
    try:
        run_id = _one_run(daemon, "parked", PARKED_STATUS)
        time.sleep(1)
        rss_before = rss_mb(daemon.pid)
        t0 = time.monotonic()
        proc, ready = _subscribers(f"{daemon.base}/api/v1/workflow-runs/{run_id}/stream", clients)
        connect_s = time.monotonic() - t0
        time.sleep(2)
        window = CpuWindow(daemon.pids()).start()
        t1 = time.monotonic()
        time.sleep(idle_seconds)
        cpu, span = window.stop(), time.monotonic() - t1
        rss_held = rss_mb(daemon.pid)
        got = _summary(proc, "stop")
        time.sleep(2)
        rss_after = rss_mb(daemon.pid)
    finally:
        daemon.stop()
    return {"scenario": "sse-idle", "subscribers": clients, "connected": ready.get("ready"),
            "refused": ready.get("refused"), "connect_s": round(connect_s, 1), "rss_before_mb": round(rss_before, 1),
            "rss_held_mb": round(rss_held, 1),
            "kb_per_subscriber": round((rss_held - rss_before) * 1024 / max(1, ready.get("ready") or 0), 1),
            "rss_after_close_mb": round(rss_after, 1), "idle_cpu_pct": round(cpu.get("daemon", 0) * 100 / span, 2),
            "client_cpu_s": got.get("client_cpu_s")}
