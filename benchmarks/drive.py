"""One measured load: the lean client in its own process, CPU windows over every process, rates from SQLite.

`measure_load` starts `benchmarks.loadgen` as a subprocess, waits (polling the daemon's SQLite file
read-only) until every run it created reached the wanted statuses, and reports the rate computed from
the daemon's own rows (first run created -> last run completed) with the CPU each process spent in
that window, per step.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from typing import Any

from benchmarks.harness import BenchDaemon
from benchmarks.procstat import CpuWindow

DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def ro(db: str) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)


def last_run_id(db: str) -> int:
    with ro(db) as conn:
        return conn.execute("SELECT COALESCE(MAX(id), 0) FROM workflow_runs").fetchone()[0]


def count_runs(db: str, after_id: int, statuses: tuple[str, ...]) -> int:
    conn = ro(db)
    try:
        marks = ",".join("?" * len(statuses))
        return conn.execute(f"SELECT COUNT(*) FROM workflow_runs WHERE id > ? AND status IN ({marks})",
                            (after_id, *statuses)).fetchone()[0]
    finally:
        conn.close()


def wait_runs(db: str, after_id: int, statuses: tuple[str, ...], target: int, timeout: float) -> bool:
    """True once `target` runs created after `after_id` are in `statuses`; False at the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count_runs(db, after_id, statuses) >= target:
            return True
        time.sleep(0.05)
    return False


def run_rows(db: str, after_id: int) -> dict[str, Any]:
    """The runs created after `after_id`: statuses, steps succeeded, first created, last completed."""
    conn = ro(db)
    try:
        statuses = dict(conn.execute("SELECT status, COUNT(*) FROM workflow_runs WHERE id > ? GROUP BY status",
                                     (after_id,)).fetchall())
        first, last = conn.execute("SELECT MIN(created_at), MAX(COALESCE(completed_at, updated_at)) FROM workflow_runs"
                                   " WHERE id > ?", (after_id,)).fetchone()
        steps = conn.execute("SELECT COUNT(*) FROM workflow_run_events e JOIN workflow_runs r ON e.run_id = r.run_id"
                             " WHERE r.id > ? AND e.type = 'step.succeeded'", (after_id,)).fetchone()[0]
    finally:
        conn.close()
    span = (ts(last) - ts(first)) if first and last else 0.0
    return {"statuses": statuses, "steps": steps, "span_s": span}


def loadgen(daemon: BenchDaemon, workflow: str, runs: int, *, mode: str = "single", threads: int = 16,
            run_input: Any = None, seconds: float | None = None, batch_size: int = 1000) -> subprocess.Popen:
    """Start the lean client (its own process); `finish(proc)` reads its JSON line."""
    cmd = [sys.executable, "-m", "benchmarks.loadgen", "--base", daemon.base, "--workflow", workflow,
           "--runs", str(runs), "--mode", mode, "--threads", str(threads), "--batch-size", str(batch_size),
           "--db", daemon.db]
    if seconds is not None:
        cmd += ["--seconds", str(seconds)]
    if run_input is not None:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, dir=daemon.root) as f:
            json.dump(run_input, f)
        cmd += ["--input-file", f.name]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 1800) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"load client exited {proc.returncode}: {out[-500:]}")
    return json.loads(lines[-1])


def measure_load(daemon: BenchDaemon, workflow: str, runs: int, *, until: tuple[str, ...] = DONE,
                 timeout: float = 600, **client: Any) -> dict[str, Any]:
    """Post `runs` runs with the lean client; wait until they are all in `until`; the window's numbers."""
    after = last_run_id(daemon.db)
    window = CpuWindow(daemon.pids()).start()
    started = time.monotonic()
    proc = loadgen(daemon, workflow, runs, **client)
    got = finish(proc, timeout)
    reached = wait_runs(daemon.db, after, until, got["created"], max(1.0, timeout - (time.monotonic() - started)))
    wall = time.monotonic() - started
    cpu = window.stop()
    rows = run_rows(daemon.db, after)
    steps = rows["steps"]
    result = {"runs": got["created"], "all_reached": reached, "statuses": rows["statuses"], "steps": steps,
              "wall_s": round(wall, 2), "post_s": got["post_s"], "db_span_s": round(rows["span_s"], 2),
              "steps_per_s": round(steps / rows["span_s"], 1) if rows["span_s"] and steps else None,
              "runs_per_s": round(got["created"] / rows["span_s"], 1) if rows["span_s"] else None,
              "client_mode": got["mode_used"], "client_cpu_s": got["client_cpu_s"],
              **{f"{name}_cpu_s": round(spent, 3) for name, spent in cpu.items()}}
    if got["first_error"]:
        result["first_error"] = got["first_error"]
    per = steps or got["created"] or 1
    result["daemon_cpu_ms_per_step" if steps else "daemon_cpu_ms_per_run"] = round(cpu.get("daemon", 0) * 1000 / per, 3)
    return result


def medians(reps: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """The median of each numeric key over repetitions, and every repetition's value beside it."""
    out: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in reps if isinstance(r.get(key), int | float)]
        if values:
            out[key] = round(statistics.median(values), 3)
            out[f"{key}_reps"] = values
    return out
