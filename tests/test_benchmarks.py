"""Smoke tests of the benchmark scripts: they run against a real daemon and print their fields.

Never a speed: the numbers are only checked to be present and plausible in kind (counts that match
what was posted, CPU figures that are numbers), so a slow machine cannot fail these.
"""

from __future__ import annotations

import subprocess
import sys

from benchmarks import fanout, scenarios, summary
from benchmarks.throughput import run_scenario


def test_throughput_reports_rates_and_cpu_of_every_process() -> None:
    r = run_scenario(runs=30, repeats=1, agent=True)
    assert r["scenario"] == "throughput-agent" and "incomplete" not in r
    for key in ("steps_per_s", "daemon_cpu_ms_per_step", "nats_cpu_ms_per_step", "client_cpu_ms_per_step",
                "agent_cpu_ms_per_step"):
        assert isinstance(r[key], float | int), key
    assert r["steps_per_s"] > 0 and r["daemon_cpu_ms_per_step"] > 0
    assert r["client"].startswith("lean, 16 threads")


def test_creation_says_which_path_created_the_runs() -> None:
    r = scenarios.creation(20)
    assert r["single"]["via"] == "single" and r["single"]["all_parked"]
    assert r["batch"]["all_parked"]
    assert r["batch"]["via"] == "batch" or r["batch"]["via"].startswith("single (batch endpoint answered")


def test_sse_fanout_times_deliveries_in_its_own_process() -> None:
    r = fanout.sse_fanout(clients=5, steps=4)
    assert r["connected"] == 5 and r["finished"] == 5
    assert r["deliveries"] >= 5 * 3  # at least the three later steps' events reach every subscriber
    assert r["p99_ms"] is not None and r["client_cpu_s"] is not None


def test_summary_puts_goals_beside_numbers_and_names_json_fields() -> None:
    results = {"dbos": {"sequential_steps_per_s": 100.0, "concurrent_steps_per_s": 200.0, "best_steps_per_s": 200.0,
                        "cpu_ms_per_step": 2.0},
               "throughput-inject": {"steps_per_s": 1200.0, "daemon_cpu_ms_per_step": 0.1, "nats_cpu_ms_per_step": 0.3,
                                     "client_cpu_ms_per_step": 0.1},
               "latency": {"error": "RuntimeError: boom"}}
    summary.ratios(results)
    assert results["throughput-inject"]["ratio_to_dbos"] == 6.0
    assert results["throughput-inject"]["cpu_ratio_to_dbos"] == 4.0  # 2.0 ms against 0.1 + 0.3 + 0.1
    text = summary.table(results)
    assert "| 10 inject steps: station-wf / DBOS | 6.0x | >= 5x | yes | `throughput-inject.ratio_to_dbos` |" in text
    assert "| 10 inject steps: daemon CPU per step | 0.1 ms | <= 0.2 ms | yes |" in text
    assert "error: RuntimeError: boom" in text


def test_only_rejects_an_unknown_scenario() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "nonesuch"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "unknown scenario" in proc.stderr
