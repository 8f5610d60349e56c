"""Sequential steps/s of the hello workflow: one run at a time, each started when the last completed.

Prints the median server-side run duration (created -> completed, from the run's own timestamps) and
the steps/s it implies, plus the client-observed rate (which includes HTTP polling).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime

import httpx

from benchmarks.harness import BenchDaemon


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    daemon = BenchDaemon()
    daemon.start()
    try:
        client = httpx.Client(base_url=daemon.base, timeout=30)
        durations = []
        steps_per_run = None
        started = time.perf_counter()
        for _ in range(args.runs):
            run = client.post("/api/v1/workflow-runs", json={"workflowId": "hello", "input": {"name": "bench"}}).json()["run"]
            for _ in range(10_000):
                got = client.get(f"/api/v1/workflow-runs/{run['id']}").json()
                if got["status"] in ("COMPLETED", "FAILED"):
                    break
                time.sleep(0.0005)
            assert got["status"] == "COMPLETED", got
            steps_per_run = len(got["steps"])
            durations.append(_ts(got["completedAt"]) - _ts(got["createdAt"]))
        wall = time.perf_counter() - started
        med = statistics.median(durations)
        result = {
            "runs": args.runs,
            "steps_per_run": steps_per_run,
            "median_run_ms": round(med * 1000, 2),
            "p99_run_ms": round(sorted(durations)[int(len(durations) * 0.99) - 1] * 1000, 2),
            "sequential_steps_per_s_server": round(steps_per_run / med, 1),
            "sequential_steps_per_s_client": round(args.runs * steps_per_run / wall, 1),
        }
        print(json.dumps(result, indent=2))
    finally:
        daemon.stop()


if __name__ == "__main__":
    main()
