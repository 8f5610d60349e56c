"""Throughput: N runs kept in flight (a new run starts when one completes) for a fixed time.

Runs complete through the global SSE stream (no polling); the rates are computed afterwards from the
daemon's own SQLite event log, over the measured window only (after a warm-up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import time
from datetime import datetime

import httpx

from benchmarks.harness import BenchDaemon


def noop_workflow(steps: int, agent: bool) -> str:
    lines = ["id: bench", "start: s0", "states:"]
    for i in range(steps):
        nxt = f"next: s{i + 1}" if i + 1 < steps else "end: true"
        if agent and i % 2 == 1:
            lines.append(f"  - {{ name: s{i}, type: operation, action: agent.run, input: {{ agent: echo, task: t{i} }}, {nxt} }}")
        else:
            lines.append(f"  - {{ name: s{i}, type: inject, data: {{ v{i}: {i} }}, {nxt} }}")
    return "\n".join(lines) + "\n"


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def drive(base: str, concurrency: int, seconds: float, warmup: float) -> dict:
    limits = httpx.Limits(max_connections=200)
    completed = 0
    started = 0
    stop_at = time.monotonic() + warmup + seconds
    wall_start = time.time()
    sem = asyncio.Semaphore(64)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        async def start_one() -> None:
            nonlocal started
            async with sem:
                r = await client.post("/api/v1/workflow-runs", json={"workflowId": "bench", "input": {}})
                r.raise_for_status()
                started += 1

        async def listen(queue: asyncio.Queue) -> None:
            async with client.stream("GET", "/api/v1/workflow-runs/stream?workflowId=bench", timeout=None) as resp:
                event = ""
                async for line in resp.aiter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif not line and event:
                        if event in ("run.completed", "run.failed"):
                            queue.put_nowait(event)
                        event = ""

        queue: asyncio.Queue = asyncio.Queue()
        listener = asyncio.create_task(listen(queue))
        await asyncio.sleep(0.3)
        await asyncio.gather(*(start_one() for _ in range(concurrency)))
        pending: set[asyncio.Task] = set()
        while time.monotonic() < stop_at:
            try:
                await asyncio.wait_for(queue.get(), 1)
            except TimeoutError:
                continue
            completed += 1
            task = asyncio.create_task(start_one())
            pending.add(task)
            task.add_done_callback(pending.discard)
        listener.cancel()
        for task in list(pending):
            task.cancel()
    return {"wall_start": wall_start, "completed_seen": completed, "started": started}


def measure(db: str, window_start: float, window_end: float) -> dict:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = conn.execute("SELECT type, created_at FROM workflow_run_events WHERE type IN ('step.succeeded', 'run.completed')").fetchall()
    steps = sum(1 for kind, t in rows if kind == "step.succeeded" and window_start <= ts(t) < window_end)
    runs = sum(1 for kind, t in rows if kind == "run.completed" and window_start <= ts(t) < window_end)
    # Step-to-step overhead: previous step committed -> next step started.
    gaps = []
    for (_, events) in _by_run(conn):
        last_done = None
        for kind, t in events:
            if kind == "step.succeeded":
                last_done = ts(t)
            elif kind == "step.started" and last_done is not None:
                gaps.append(ts(t) - last_done)
                last_done = None
    conn.close()
    span = window_end - window_start
    gaps.sort()
    return {
        "steps_per_s": round(steps / span, 1),
        "runs_per_s": round(runs / span, 1),
        "step_gap_p50_ms": round(statistics.median(gaps) * 1000, 2) if gaps else None,
        "step_gap_p99_ms": round(gaps[int(len(gaps) * 0.99)] * 1000, 2) if gaps else None,
    }


def _by_run(conn: sqlite3.Connection):
    current, events = None, []
    for run_id, kind, t in conn.execute(
            "SELECT run_id, type, created_at FROM workflow_run_events WHERE type IN ('step.succeeded', 'step.started') ORDER BY run_id, seq"):
        if run_id != current:
            if current is not None:
                yield current, events
            current, events = run_id, []
        events.append((kind, t))
    if current is not None:
        yield current, events


def run_scenario(concurrency: int, seconds: float, steps: int, agent: bool, warmup: float = 3.0) -> dict:
    daemon = BenchDaemon()
    daemon.add_workflow("bench", noop_workflow(steps, agent))
    if agent:
        (daemon.root / "environments/default/agents/echo.prompt").write_text(
            f"---\nmetadata: {{name: echo}}\nendpoint: http://127.0.0.1:{daemon.agent_port}/agents/echo\n---\nEcho.\n")
    daemon.start()
    try:
        info = asyncio.run(drive(daemon.base, concurrency, seconds, warmup))
        window_start = info["wall_start"] + warmup + 0.3
        result = measure(str(daemon.root / "data" / "station-wf.db"), window_start, window_start + seconds)
    finally:
        daemon.stop()
    return {"scenario": f"throughput-{'agent' if agent else 'inject'}", "concurrency": concurrency, "steps_per_run": steps,
            "seconds": seconds, **result}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--agent", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run_scenario(args.concurrency, args.seconds, args.steps, args.agent), indent=2))


if __name__ == "__main__":
    main()
