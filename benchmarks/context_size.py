"""A step's daemon CPU with a small and a large context (issue 14: within 1.5x from 1 KB to 1 MB).

    python -m benchmarks.context_size [runs] [agent]

For each context size, a fresh daemon runs `runs` runs of the 10-step workflow of
`benchmarks.throughput` (10 inject steps, or 5 inject + 5 agent.run with `agent`) posted by 4
http.client threads, each run's input padded to the size; prints daemon CPU (utime+stime from
/proc) per step and the ratio of the large to the small. `per_step` leaves out the run's creation
(the API decoding and inserting a 1 MB input): the CPU of as many 1-step runs is subtracted and the
rest divided by the 9 other steps.
"""

from __future__ import annotations

import http.client
import json
import os
import sqlite3
import sys
import threading
import time

from benchmarks.harness import BenchDaemon
from benchmarks.throughput import noop_workflow

THREADS = 4


def _cpu(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(context_bytes: int, runs: int, agent: bool, steps: int = 10) -> dict:
    d = BenchDaemon()
    d.add_workflow("bench", noop_workflow(steps, agent))
    if agent:
        (d.root / "environments/default/agents/echo.prompt").write_text(
            f"---\nmetadata: {{name: echo}}\nendpoint: http://127.0.0.1:{d.agent_port}/agents/echo\n---\nEcho.\n")
    d.start()
    pid = d.procs[-1].pid
    body = json.dumps({"workflowId": "bench", "input": {"pad": "x" * context_bytes}})

    def post(n: int) -> None:
        c = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=120)
        for _ in range(n):
            c.request("POST", "/api/v1/workflow-runs", body, {"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            assert r.status in (200, 201, 202), r.status

    try:
        c0, t0 = _cpu(pid), time.monotonic()
        threads = [threading.Thread(target=post, args=(runs // THREADS,)) for _ in range(THREADS)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        con = sqlite3.connect(str(d.root / "data/station-wf.db"))
        done = 0
        while time.monotonic() - t0 < 600:
            done = con.execute("SELECT count(*) FROM workflow_runs WHERE status = 'COMPLETED'").fetchone()[0]
            if done >= (runs // THREADS) * THREADS:
                break
            time.sleep(0.05)
        elapsed, cpu = time.monotonic() - t0, _cpu(pid) - c0
        con.close()
    finally:
        d.stop()
    return {"context_bytes": context_bytes, "runs": done, "elapsed_s": round(elapsed, 2),
            "daemon_cpu_ms_per_step": round(cpu * 1000 / max(done * steps, 1), 3), "cpu_ms_per_run": cpu * 1000 / max(done, 1)}


def per_step(context_bytes: int, runs: int, agent: bool) -> dict:
    """Daemon CPU per step past the first: (10-step run - 1-step run) / 9."""
    full, one = measure(context_bytes, runs, agent), measure(context_bytes, runs, agent, steps=1)
    return {**full, "one_step_cpu_ms_per_run": round(one["cpu_ms_per_run"], 3),
            "per_step_ms": round((full["cpu_ms_per_run"] - one["cpu_ms_per_run"]) / 9, 3)}


def main(runs: int, agent: bool) -> None:
    small = per_step(1_000, runs, agent)
    large = per_step(1_000_000, runs, agent)
    print(json.dumps({"agent": agent, "small": small, "large": large,
                      "ratio": round(large["daemon_cpu_ms_per_step"] / max(small["daemon_cpu_ms_per_step"], 1e-9), 2),
                      "per_step_ratio": round(large["per_step_ms"] / max(small["per_step_ms"], 1e-9), 2)}))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "agent"]
    main(int(args[0]) if args else 100, "agent" in sys.argv[1:])
