"""The benchmark scenarios other than raw throughput: latency, parked runs, recovery, SSE fan-out.

Each starts its own real daemon (embedded NATS, SQLite file) through `BenchDaemon` and returns a dict
of numbers. Nothing here asserts a target: the numbers are printed and compared by people.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import statistics
import threading
import time
from datetime import datetime
from typing import Any

import httpx
from aiohttp import web

from benchmarks.harness import BenchDaemon
from benchmarks.throughput import measure, noop_workflow, run_scenario
from station_wf.bus.nats_server import free_port


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def post_runs(base: str, workflow: str, count: int, parallel: int = 50, run_input: dict | None = None) -> list[str]:
    ids: list[str] = []
    sem = asyncio.Semaphore(parallel)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=httpx.Limits(max_connections=parallel + 5)) as client:
        async def one() -> None:
            async with sem:
                r = await client.post("/api/v1/workflow-runs", json={"workflowId": workflow, "input": run_input or {}})
                r.raise_for_status()
                ids.append(r.json()["run"]["id"])
        await asyncio.gather(*(one() for _ in range(count)))
    return ids


def count_status(db: str, statuses: tuple[str, ...]) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        marks = ",".join("?" * len(statuses))
        return conn.execute(f"SELECT COUNT(*) FROM workflow_runs WHERE status IN ({marks})", statuses).fetchone()[0]
    finally:
        conn.close()


def wait_count(db: str, statuses: tuple[str, ...], target: int, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if count_status(db, statuses) >= target:
            return time.monotonic() - start
        time.sleep(0.1)
    raise TimeoutError(f"{target} runs did not reach {statuses} within {timeout}s")


# -- latency ----------------------------------------------------------------------------------------
def latency(seconds: float = 10) -> dict[str, Any]:
    """Step-to-step overhead at light load: one run at a time, agent steps (a task each) between injects."""
    result = run_scenario(concurrency=1, seconds=seconds, steps=10, agent=True, warmup=1.0)
    return {"scenario": "latency", "step_gap_p50_ms": result["step_gap_p50_ms"], "step_gap_p99_ms": result["step_gap_p99_ms"],
            "steps_per_s_one_run": result["steps_per_s"]}


# -- parked runs ------------------------------------------------------------------------------------
PARKED = """
id: parked
start: gate
states:
  - { name: gate, type: operation, action: human.approval, input: { message: "parked" }, end: true }
"""


def parked(count: int) -> dict[str, Any]:
    daemon = BenchDaemon()
    daemon.add_workflow("parked", PARKED)
    daemon.start()
    db = str(daemon.root / "data" / "station-wf.db")
    try:
        t0 = time.monotonic()
        asyncio.run(post_runs(daemon.base, "parked", count, parallel=64))
        wait_count(db, ("WAITING_APPROVAL",), count, 600)
        created_s = time.monotonic() - t0
        pid = daemon.procs[-1].pid
        time.sleep(3)
        cpu0, t1 = cpu_seconds(pid), time.monotonic()
        time.sleep(10)
        idle_cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t1) * 100
        rss = rss_mb(pid)
        daemon.procs[-1].send_signal(signal.SIGTERM)
        daemon.procs[-1].wait(60)
        t2 = time.monotonic()
        daemon.procs.pop()
        daemon.start_daemon_only()
        ready_s = time.monotonic() - t2
        rss_after = rss_mb(daemon.procs[-1].pid)
    finally:
        daemon.stop()
    return {"scenario": f"parked-{count}", "runs": count, "create_s": round(created_s, 1), "rss_mb": round(rss, 1),
            "idle_cpu_pct": round(idle_cpu, 2), "restart_to_ready_s": round(ready_s, 2), "rss_after_restart_mb": round(rss_after, 1)}


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
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self._ready = threading.Event()
        self._thread.start()
        self._ready.wait(10)

    async def _serve(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            self.calls += 1
            while not self.release.is_set() and not self._stop.is_set():
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
    gate = GateAgent()
    daemon = BenchDaemon()
    daemon.add_workflow("recovery", RECOVERY)
    (daemon.root / "environments/default/agents/gate.prompt").write_text(
        f"---\nmetadata: {{name: gate}}\nendpoint: http://127.0.0.1:{gate.port}/agents/gate\n---\nHold.\n")
    daemon.start()
    db = str(daemon.root / "data" / "station-wf.db")
    try:
        asyncio.run(post_runs(daemon.base, "recovery", count, parallel=64))
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
        wait_count(db, ("COMPLETED",), count, 600)
        total_s = time.monotonic() - t0
    finally:
        daemon.stop()
        gate.close()
    return {"scenario": "recovery", "runs": count, "agent_calls_in_flight_at_kill": in_flight,
            "restart_to_ready_s": round(ready_s, 2), "restart_to_all_completed_s": round(total_s, 2)}


# -- SSE fan-out ------------------------------------------------------------------------------------
def sse_fanout(clients: int = 1000, steps: int = 10) -> dict[str, Any]:
    """N subscribers on one run; the latency of each event from its commit time to each client."""
    gate = GateAgent()
    daemon = BenchDaemon()
    daemon.add_workflow("fan", noop_workflow(steps, agent=False).replace("id: bench", "id: fan").replace(
        "  - { name: s0, type: inject, data: { v0: 0 }, next: s1 }",
        "  - { name: s0, type: operation, action: agent.run, input: { agent: gate, task: t }, next: s1 }"))
    (daemon.root / "environments/default/agents/gate.prompt").write_text(
        f"---\nmetadata: {{name: gate}}\nendpoint: http://127.0.0.1:{gate.port}/agents/gate\n---\nHold.\n")
    daemon.start()
    try:
        run_id = asyncio.run(post_runs(daemon.base, "fan", 1))[0]
        lat = asyncio.run(_sse_clients(f"{daemon.base}/api/v1/workflow-runs/{run_id}/stream", clients, gate))
    finally:
        daemon.stop()
        gate.close()
    lat.sort()
    return {"scenario": f"sse-{clients}", "deliveries": len(lat), "p50_ms": round(statistics.median(lat) * 1000, 1),
            "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 1)}


async def _sse_clients(url: str, clients: int, gate: GateAgent) -> list[float]:
    latencies: list[float] = []
    connected = 0

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal connected
        async with client.stream("GET", url) as resp:
            connected += 1
            data = None
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    data = line[5:]
                elif not line and data:
                    received = time.time()
                    event = json.loads(data)
                    if gate.release.is_set():
                        latencies.append(received - ts(event["time"]))
                    if event["type"] == "run.completed":
                        return
                    data = None

    limits = httpx.Limits(max_connections=clients + 10)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        tasks = [asyncio.create_task(one(client)) for _ in range(clients)]
        for _ in range(1200):
            if connected >= clients:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        gate.release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
    return latencies


__all__ = ["latency", "measure", "parked", "recovery", "sse_fanout"]
