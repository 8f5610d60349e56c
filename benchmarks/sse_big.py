"""A 1,000,000-event run served by the SSE backfill and by `GET /workflow-runs/{id}/events`.

    python -m benchmarks.sse_big [EVENTS] [PAYLOAD_BYTES]     # defaults: 1000000 200

The event rows are seeded straight into the SQLite file of a stopped daemon (one run waiting for a
signal), then the daemon is started and the whole history is read once through the run's SSE stream
and once through the events API (keyset pages of 1,000), while the daemon's RSS is sampled every
50 ms. Prints one JSON line: rates, daemon CPU per event and the RSS growth over the idle daemon.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import sqlite3
import sys
import threading
import time
from typing import Any

import httpx

from benchmarks.harness import BenchDaemon
from benchmarks.scenarios import cpu_seconds, rss_mb

WAITS = """id: waits
start: first
states:
  - { name: first, type: operation, action: signal.wait, input: { signal: go }, end: true }
"""
_ID = re.compile(rb"\nid: (\d+)\r\n")


def _seed(db: str, run_id: str, n: int, pad: int) -> int:
    payload = json.dumps({"pad": "p" * pad})
    conn = sqlite3.connect(db)
    try:
        seq = conn.execute("SELECT event_seq FROM workflow_runs WHERE run_id = ?", (run_id,)).fetchone()[0]
        for start in range(0, n, 100_000):
            conn.executemany("INSERT INTO workflow_run_events (run_id, seq, type, payload, created_at) VALUES (?, ?, 'note', ?, ?)",
                             [(run_id, seq + i + 1, payload, "2026-01-01T00:00:00Z") for i in range(start, min(n, start + 100_000))])
        conn.execute("UPDATE workflow_runs SET event_seq = ? WHERE run_id = ?", (seq + n, run_id))
        conn.commit()
    finally:
        conn.close()
    return seq + n


def _read_sse(port: int, run_id: str, total: int, timeout: float) -> tuple[int, int]:
    """(events seen, last id) reading the stream raw until the last id arrives; counts `id:` lines only."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"GET /api/v1/workflow-runs/{run_id}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    seen, last, tail = 0, 0, b""
    deadline = time.monotonic() + timeout
    try:
        while last < total and time.monotonic() < deadline:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data = tail + chunk
            end = data.rfind(b"\r\n\r\n")  # whole frames only; the tail keeps its CRLF for the next `\nid:`
            if end < 0:
                tail = data
                continue
            ids = _ID.findall(data, 0, end + 4)
            tail = data[end + 2:]
            if ids:
                seen += len(ids)
                last = int(ids[-1])
    finally:
        s.close()
    return seen, last


def main(n: int = 1_000_000, pad: int = 200) -> dict[str, Any]:
    daemon = BenchDaemon()
    daemon.add_workflow("waits", WAITS)
    daemon.start()
    try:
        run_id = httpx.post(daemon.base + "/api/v1/workflow-runs", json={"workflowId": "waits", "input": {}}, timeout=30).json()["run"]["id"]
        time.sleep(1.0)
        proc = daemon.procs.pop()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        t = time.monotonic()
        total = _seed(str(daemon.root / "data/station-wf.db"), run_id, n, pad)
        seed_s = time.monotonic() - t
        daemon.start_daemon_only()
        pid = daemon.procs[-1].pid
        time.sleep(1.0)
        base = rss_mb(pid)
        peak = [base]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.05):
                peak[0] = max(peak[0], rss_mb(pid))

        threading.Thread(target=sample, daemon=True).start()
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        seen, last = _read_sse(daemon.http_port, run_id, total, 900)
        sse_s, sse_cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
        sse_peak = peak[0]
        cpu0, t0, listed, after = cpu_seconds(pid), time.monotonic(), 0, 0
        with httpx.Client(base_url=daemon.base, timeout=60) as client:
            for _ in range(n // 1000 + 10):
                page = client.get(f"/api/v1/workflow-runs/{run_id}/events", params={"afterSeq": after, "limit": 1000}).json()
                listed += len(page["events"])
                if page["nextAfterSeq"] is None:
                    break
                after = page["nextAfterSeq"]
        api_s, api_cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
        stop.set()
        return {"scenario": "sse-big", "events": total, "payload_bytes": pad, "seed_s": round(seed_s, 1),
                "sse_seen": seen, "sse_last_id": last, "sse_s": round(sse_s, 1), "sse_events_per_s": round(seen / sse_s),
                "sse_daemon_cpu_us_per_event": round(sse_cpu / max(1, seen) * 1e6, 1),
                "api_listed": listed, "api_s": round(api_s, 1), "api_events_per_s": round(listed / api_s),
                "api_daemon_cpu_us_per_event": round(api_cpu / max(1, listed) * 1e6, 1),
                "rss_mb_idle": round(base, 1), "rss_mb_peak_sse": round(sse_peak, 1), "rss_mb_peak": round(peak[0], 1),
                "rss_growth_mb": round(peak[0] - base, 1)}
    finally:
        daemon.stop()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    print(json.dumps(main(*args)))
