"""`python -m benchmarks` (or `make bench`): every scenario against a real daemon; a table and a JSON file.

`--quick` runs smaller sizes (about ten minutes on 2 shared cores); `--only NAME[,NAME]` picks scenarios
(`throughput` picks both throughput scenarios). DBOS runs first, in its own process, so the ratios are
taken a minute apart on the same machine. These are measurements, never pass/fail: compare medians,
ratios and CPU per step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import fanout, replicas, scenarios, sizes, sse_big, summary
from benchmarks.throughput import run_scenario

RESULTS = Path(__file__).resolve().parent / "results"


def plan(quick: bool, profile_dir: str | None = None) -> dict[str, Callable[[], dict[str, Any]]]:
    """Scenario name -> its run; `profile_dir` gets a py-spy raw profile of each throughput daemon."""
    def prof(name: str) -> str | None:
        return str(Path(profile_dir) / f"{name}.txt") if profile_dir else None

    reps = 2 if quick else 3
    return {
        "dbos": lambda: dbos(quick),
        "throughput-inject": lambda: run_scenario(2000, reps, agent=False, profile=prof("throughput-inject")),
        "throughput-agent": lambda: run_scenario(2000, reps, agent=True, profile=prof("throughput-agent")),
        "replicas": lambda: replicas.run(1000 if quick else 2000, reps, profile_dir),
        "latency": lambda: scenarios.latency(10 if quick else 30),
        "sse-fanout": lambda: fanout.sse_fanout(1000),
        "sse-idle": lambda: fanout.sse_idle(10_000),
        "sse-big": lambda: sse_big.main(200_000 if quick else 1_000_000),
        "recovery": lambda: scenarios.recovery(1000),
        "parked": lambda: scenarios.parked(10_000 if quick else 100_000),
        "context-size": lambda: sizes.context_size(100, 5) if quick else sizes.context_size(200, 10),
        "foreach-size": lambda: sizes.foreach_size((100, 1_000, 10_000), 45 if quick else 600),
        "creation": lambda: scenarios.creation(2000 if quick else 5000),
    }


def dbos(quick: bool) -> dict[str, Any]:
    """DBOS Transact in its own process (`benchmarks.dbos_compare`, WAL, both styles, median of 3)."""
    cmd = [sys.executable, "-m", "benchmarks.dbos_compare", "--runs", "50" if quick else "200", "--concurrency", "50",
           "--seconds", "3" if quick else "10", "--repeats", "3", "--journal", "wal"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"DBOS comparison failed ({tail}); pip install -e '.[bench]'"}
    r = json.loads(proc.stdout)
    best = max(r["sequential"]["steps_per_s"], r["concurrent"]["steps_per_s"])
    return {"dbos_version": r["dbos_version"], "journal": r["journal_mode"], "synchronous": r["synchronous"],
            "sequential_steps_per_s": r["sequential"]["steps_per_s"], "sequential_style": r["sequential"]["style"],
            "concurrent_steps_per_s": r["concurrent"]["steps_per_s"], "concurrent_style": r["concurrent"]["style"],
            "best_steps_per_s": best, "cpu_ms_per_step": round(min(r["sequential"]["cpu_ms_per_run"],
                                                                    r["concurrent"]["cpu_ms_per_run"]) / 10, 3)}


def selected(name: str, only: list[str]) -> bool:
    return not only or any(name == o or name.startswith(o + "-") for o in only)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated: " + ", ".join(plan(True)))
    parser.add_argument("--out", default=str(RESULTS / "latest.json"))
    parser.add_argument("--profile-dir", help="py-spy raw profiles of the throughput daemons go here (bench extra)")
    args = parser.parse_args()
    if args.profile_dir:
        Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [o for o in only if not any(selected(n, [o]) for n in plan(True))]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; pick from {list(plan(True))}")
    results: dict[str, dict[str, Any]] = {}
    began = time.monotonic()
    for name, fn in plan(args.quick, args.profile_dir).items():
        if not selected(name, only):
            continue
        started = time.monotonic()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - report and go on with the other scenarios
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result.pop("scenario", None)
        result["elapsed_s"] = round(time.monotonic() - started, 1)
        results[name] = result
        print(json.dumps({"scenario": name, **result}), flush=True)
    summary.ratios(results)
    report = summary.table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(), "quick": args.quick,
                               "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                               "elapsed_s": round(time.monotonic() - began, 1), "results": results,
                               "summary": report}, indent=2))
    print()
    print(report)
    print(f"\nwritten to {out} (results.<scenario>.<field>; `_reps` lists every repetition)")


if __name__ == "__main__":
    main()
