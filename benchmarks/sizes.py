"""Cost that should not grow with the run: context size and foreach size.

- `context_size`: a step's daemon CPU with a 1 KB and with a 1 MB context (structured JSON: records of
  ~100 bytes, as real contexts are, not one long string that decodes for free). Each size runs a
  1-step and a 21-step inject workflow on the same input; the difference per extra step is the step's
  own cost, free of the POST's and the run's fixed costs. Goal: 1 MB within 1.5x of 1 KB.
- `foreach_size`: one run of a foreach over N items (one inject step per item): time and daemon CPU
  per item for each N. Goal: linear (the per-item cost at the largest N within 2x of the smallest).
  A size that does not finish within the timeout is reported as such and the larger ones are skipped.
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks.drive import measure_load, ro
from benchmarks.throughput import bench_daemon, noop_workflow

EXTRA_STEPS = 20


def blob(target_bytes: int) -> list[dict[str, Any]]:
    """Records of ~100 bytes until the JSON is about `target_bytes` long."""
    records: list[dict[str, Any]] = []
    size = 2
    while size < target_bytes - 110:
        i = len(records)
        records.append({"id": i, "name": f"item-{i:06d}", "tags": ["alpha", "beta"], "score": i / 2, "ok": True,
                        "note": "x" * 20})
        size += len(json.dumps(records[-1])) + 2
    return records or [{"id": 0}]


def context_size(runs_small: int = 100, runs_big: int = 10) -> dict[str, Any]:
    daemon = bench_daemon({"ctx1": noop_workflow(1, False, "ctx1"), "ctx21": noop_workflow(1 + EXTRA_STEPS, False, "ctx21")})
    out: dict[str, Any] = {"scenario": "context-size", "extra_steps": EXTRA_STEPS}
    try:
        measure_load(daemon, "ctx21", 20, run_input={"records": blob(1000)})
        for label, target, runs in (("1kb", 1000, runs_small), ("1mb", 1_000_000, runs_big)):
            run_input = {"records": blob(target)}
            short = measure_load(daemon, "ctx1", runs, run_input=run_input, threads=4)
            long = measure_load(daemon, "ctx21", runs, run_input=run_input, threads=4)
            per_run = [r["daemon_cpu_s"] / max(1, r["runs"]) for r in (short, long)]
            out[f"{label}_context_bytes"] = len(json.dumps(run_input))
            out[f"{label}_daemon_cpu_ms_per_step"] = round((per_run[1] - per_run[0]) * 1000 / EXTRA_STEPS, 3)
            out[f"{label}_daemon_cpu_ms_per_run_1_step"] = round(per_run[0] * 1000, 2)
            out[f"{label}_all_completed"] = short["all_reached"] and long["all_reached"]
    finally:
        daemon.stop()
    small, big = out["1kb_daemon_cpu_ms_per_step"], out["1mb_daemon_cpu_ms_per_step"]
    out["ratio_1mb_to_1kb"] = round(big / small, 2) if small > 0 else None
    return out


FOREACH = """
id: fe
start: each
states:
  - name: each
    type: foreach
    itemsPath: items
    maxConcurrency: 10
    iterator:
      states:
        - { name: work, type: inject, data: { done: true }, end: true }
    end: true
"""


def foreach_size(sizes: tuple[int, ...] = (100, 1_000, 10_000), timeout: float = 300) -> dict[str, Any]:
    env = {"STATION_MAX_STEPS_PER_RUN": str(4 * max(sizes) + 100),
           "STATION_MAX_EVENTS_PER_RUN": str(20 * max(sizes) + 1000)}
    daemon = bench_daemon({"fe": FOREACH}, env)
    out: dict[str, Any] = {"scenario": "foreach-size", "sizes": list(sizes)}
    try:
        measure_load(daemon, "fe", 1, run_input={"items": list(range(10))})
        for n in sizes:
            r = measure_load(daemon, "fe", 1, run_input={"items": list(range(n))}, timeout=timeout)
            if not r["all_reached"]:
                out[f"n{n}"] = f"not finished within {timeout:.0f} s ({_steps_done(daemon.db)} steps done)"
                break
            out[f"n{n}_status"] = next(iter(r["statuses"]))
            out[f"n{n}_wall_s"] = r["wall_s"]
            out[f"n{n}_ms_per_item"] = round(r["wall_s"] * 1000 / n, 3)
            out[f"n{n}_daemon_cpu_ms_per_item"] = round(r["daemon_cpu_s"] * 1000 / n, 3)
    finally:
        daemon.stop()
    done = [n for n in sizes if f"n{n}_daemon_cpu_ms_per_item" in out]
    if len(done) >= 2:
        first, last = out[f"n{done[0]}_daemon_cpu_ms_per_item"], out[f"n{done[-1]}_daemon_cpu_ms_per_item"]
        out["growth_per_item"] = round(last / first, 2) if first > 0 else None
        out["growth_over"] = f"{done[0]} -> {done[-1]} items"
    out["largest_finished"] = done[-1] if done else None
    return out


def _steps_done(db: str) -> int:
    conn = ro(db)
    try:
        return conn.execute("SELECT COUNT(*) FROM workflow_run_steps WHERE status = 'SUCCEEDED'").fetchone()[0]
    finally:
        conn.close()
