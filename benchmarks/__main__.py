"""`python -m benchmarks` (or `make bench`): every scenario against a real daemon; a table and a JSON file.

`--quick` runs smaller sizes (minutes, not tens of minutes); `--only NAME[,NAME]` picks scenarios.
These are measurements, never pass/fail: the machines are shared, so compare medians and ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

from benchmarks import scenarios
from benchmarks.throughput import run_scenario

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="")
    parser.add_argument("--out", default=str(RESULTS / "latest.json"))
    args = parser.parse_args()
    quick = args.quick
    plan: dict[str, Any] = {
        "throughput": lambda: run_scenario(500, 10 if quick else 20, 10, agent=False),
        "throughput-agent": lambda: run_scenario(500, 10 if quick else 20, 10, agent=True),
        "latency": lambda: scenarios.latency(5 if quick else 10),
        "parked": lambda: scenarios.parked(2_000 if quick else 10_000),
        "recovery": lambda: scenarios.recovery(300 if quick else 1_000),
        "sse": lambda: scenarios.sse_fanout(200 if quick else 1_000),
        "dbos": lambda: _dbos(quick),
    }
    only = [n for n in args.only.split(",") if n]
    results = []
    for name, fn in plan.items():
        if only and name not in only:
            continue
        started = time.monotonic()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - report and go on with the other scenarios
            result = {"scenario": name, "error": f"{type(exc).__name__}: {exc}"}
        result["elapsed_s"] = round(time.monotonic() - started, 1)
        results.append(result)
        print(json.dumps(result), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "cpus": __import__("os").cpu_count(),
                               "quick": quick, "results": results}, indent=2))
    print()
    print(table(results))
    print(f"\nwritten to {out}")


def _dbos(quick: bool) -> dict[str, Any]:
    try:
        from benchmarks.dbos_compare import measure_dbos
    except ImportError as exc:
        return {"scenario": "dbos", "error": f"DBOS comparison unavailable ({exc}); pip install -e '.[bench]'"}
    result = measure_dbos(runs=200, concurrency=50, seconds=3 if quick else 10)
    return {"scenario": "dbos", "dbos_version": result["dbos_version"],
            "sequential_steps_per_s": result["sequential"]["steps_per_s"],
            "concurrent_steps_per_s": result["concurrent"]["steps_per_s"],
            "concurrent_style": result["concurrent"]["style"], "journal": result["journal_mode"],
            "synchronous": result["synchronous"]}


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| scenario | numbers |", "|---|---|"]
    for r in results:
        numbers = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("scenario",))
        lines.append(f"| {r['scenario']} | {numbers} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
