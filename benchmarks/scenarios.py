"""The scenarios other than raw throughput: latency, parked runs, recovery after kill -9, run creation.

Each starts its own real daemon (embedded NATS, SQLite file) and drives it with the lean client in its
own process (`benchmarks.loadgen`); rates come from the daemon's SQLite rows, CPU from /proc. Nothing
here asserts a target: the summary puts each number beside its goal.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

from aiohttp import web

from benchmarks.drive import finish, last_run_id, loadgen, measure_load, run_rows, wait_runs
from benchmarks.procstat import CpuWindow, cpu_seconds, rss_mb
from benchmarks.throughput import bench_daemon, noop_workflow, percentile, step_gaps
from station_wf.bus.nats_server import free_port


# -- latency ----------------------------------------------------------------------------------------
def latency(seconds: float = 10) -> dict[str, Any]:
    """Step-to-step overhead at light load: one run at a time, 5 inject + 5 agent.run steps."""
    daemon = bench_daemon({"bench": noop_workflow(10, agent=True)})
    try:
        finish(loadgen(daemon, "bench", 10, mode="sequential"))
        after = last_run_id(daemon.db)
        window = CpuWindow(daemon.pids()).start()
        got = finish(loadgen(daemon, "bench", 1_000_000, mode="sequential", seconds=seconds))
        cpu = window.stop()
        gaps = step_gaps(daemon.db, after)
        steps = run_rows(daemon.db, after)["steps"] or 1
    finally:
        daemon.stop()
    p50, p99 = percentile(gaps, 0.5), percentile(gaps, 0.99)
    return {"scenario": "latency", "runs": got["created"], "gaps": len(gaps),
            "step_gap_p50_ms": round(p50 * 1000, 2) if p50 is not None else None,
            "step_gap_p99_ms": round(p99 * 1000, 2) if p99 is not None else None,
            "steps_per_s_one_run": round(steps / got["post_s"], 1),
            "daemon_cpu_ms_per_step": round(cpu.get("daemon", 0) * 1000 / steps, 3),
            "nats_cpu_ms_per_step": round(cpu.get("nats", 0) * 1000 / steps, 3),
            "client_cpu_ms_per_step": round(got["client_cpu_s"] * 1000 / steps, 3)}


# -- parked runs and run creation -------------------------------------------------------------------
PARKED = """
id: parked
start: gate
states:
  - { name: gate, type: operation, action: human.approval, input: { message: "parked" }, end: true }
"""
PARKED_STATUS = ("WAITING_APPROVAL",)


def _idle(pids: dict[str, int | None], seconds: float) -> dict[str, float]:
    """CPU % of each process over `seconds` of doing nothing."""
    window = CpuWindow(pids).start()
    t0 = time.monotonic()
    time.sleep(seconds)
    spent, span = window.stop(), time.monotonic() - t0
    return {name: round(cpu * 100 / span, 2) for name, cpu in spent.items()}


def parked(count: int, idle_seconds: float = 10) -> dict[str, Any]:
    """`count` runs parked on an approval (created via the batch endpoint when there is one)."""
    daemon = bench_daemon({"parked": PARKED})
    try:
        rss_empty = rss_mb(daemon.pid)
        created = measure_load(daemon, "parked", count, until=PARKED_STATUS, mode="batch",
                               timeout=max(600, count / 20))
        time.sleep(3)
        idle = _idle(daemon.pids(), idle_seconds)
        rss = rss_mb(daemon.pid)
        daemon.procs[-1].send_signal(signal.SIGTERM)
        daemon.procs[-1].wait(120)
        daemon.procs.pop()
        t0 = time.monotonic()
        daemon.start_daemon_only()
        ready_s = time.monotonic() - t0
        time.sleep(3)
        idle_after = _idle(daemon.pids(), min(idle_seconds, 5))
        rss_after = rss_mb(daemon.pid)
    finally:
        daemon.stop()
    return {"scenario": "parked", "runs": created["runs"], "all_parked": created["all_reached"],
            "created_via": created["client_mode"], "create_runs_per_s": created["runs_per_s"],
            "daemon_cpu_ms_per_run_created": created.get("daemon_cpu_ms_per_run"),
            "rss_empty_mb": round(rss_empty, 1), "rss_mb": round(rss, 1), "idle_cpu_pct": idle.get("daemon"),
            "nats_idle_cpu_pct": idle.get("nats"), "restart_to_ready_s": round(ready_s, 2),
            "rss_after_restart_mb": round(rss_after, 1), "idle_cpu_after_restart_pct": idle_after.get("daemon")}


def creation(count: int) -> dict[str, Any]:
    """Runs started per second: single POSTs (16 threads) and batches of 1,000 (or the fallback)."""
    daemon = bench_daemon({"parked": PARKED})
    try:
        measure_load(daemon, "parked", 100, until=PARKED_STATUS)
        single = measure_load(daemon, "parked", count, until=PARKED_STATUS)
        batch = measure_load(daemon, "parked", count, until=PARKED_STATUS, mode="batch")
    finally:
        daemon.stop()

    def pick(r: dict[str, Any]) -> dict[str, Any]:
        return {"runs_per_s": r["runs_per_s"], "daemon_cpu_ms_per_run": r.get("daemon_cpu_ms_per_run"),
                "client_cpu_ms_per_run": round(r["client_cpu_s"] * 1000 / max(1, r["runs"]), 3),
                "via": r["client_mode"], "all_parked": r["all_reached"]}

    return {"scenario": "creation", "runs": count, "single": pick(single), "batch": pick(batch)}


# -- recovery ---------------------------------------------------------------------------------------
RECOVERY = """
id: recovery
start: a
states:
  - { name: a, type: inject, data: { x: 1 }, next: b }
  - { name: b, type: operation, action: agent.run, input: { agent: gate, task: t }, next: c }
  - { name: c, type: inject, data: { y: 2 }, end: true }
"""


class GateAgent:
    """An HTTP agent that holds every call until released (so runs are in flight when we kill)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.release = threading.Event()
        self.calls = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self._thread.start()
        self._ready.wait(10)

    async def _serve(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            self.calls += 1
            for _ in range(20 * 600):
                if self.release.is_set() or self._stop.is_set():
                    break
                await asyncio.sleep(0.05)
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_post("/agents/gate", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port, backlog=4096).start()
        self._ready.set()
        while not self._stop.is_set():
            await asyncio.sleep(0.1)
        await runner.cleanup()

    def close(self) -> None:
        self._stop.set()


def recovery(count: int = 1000) -> dict[str, Any]:
    """kill -9 with `count` runs in flight (agent calls held open); restart; time to all completed."""
    gate = GateAgent()
    daemon = bench_daemon({"recovery": RECOVERY}, agents={"gate": gate.port})
    try:
        after = last_run_id(daemon.db)
        got = finish(loadgen(daemon, "recovery", count, mode="batch"))
        deadline = time.monotonic() + 300
        while gate.calls < min(count, 256) and time.monotonic() < deadline:  # the worker's concurrency bound
            time.sleep(0.1)
        in_flight = gate.calls
        daemon.procs[-1].send_signal(signal.SIGKILL)
        daemon.procs[-1].wait(30)
        daemon.procs.pop()
        gate.release.set()
        t0 = time.monotonic()
        daemon.start_daemon_only()
        ready_s = time.monotonic() - t0
        cpu0 = cpu_seconds(daemon.pid)
        done = wait_runs(daemon.db, after, ("COMPLETED",), got["created"], 600)
        total_s = time.monotonic() - t0
        cpu = cpu_seconds(daemon.pid) - cpu0
    finally:
        daemon.stop()
        gate.close()
    return {"scenario": "recovery", "runs": got["created"], "created_via": got["mode_used"], "all_completed": done,
            "agent_calls_in_flight_at_kill": in_flight, "restart_to_ready_s": round(ready_s, 2),
            "restart_to_all_completed_s": round(total_s, 2), "daemon_cpu_s_after_ready": round(cpu, 2)}
