"""The lean load client, run in its OWN process so its CPU is its own and reported beside the daemon's.

    python -m benchmarks.loadgen --base http://127.0.0.1:PORT --workflow bench --runs 2000 [--mode M]

Modes: `single` (`--threads` threads of `http.client`, one keep-alive connection each, posting
`POST /api/v1/workflow-runs`), `batch` (`POST /api/v1/workflow-runs:batch` with `--batch-size` starts per
request, two in flight; when the daemon answers 404/405 it falls back to `single` and says so in
`mode_used`), and
`sequential` (one run at a time: post, then poll the SQLite file read-only until the run is terminal;
for step-to-step latency). An httpx client with an SSE listener took most of the second core and
halved the measured rate; this one costs ~0.1 ms of CPU per request.

Prints one JSON line: posted/failed counts, status codes, `post_s` (wall time of the posting) and
`client_cpu_s` (this process's utime + stime, all threads).
"""

from __future__ import annotations

import argparse
import http.client
import json
import resource
import sqlite3
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

BATCH_PATH = "/api/v1/workflow-runs:batch"
BATCH_CONCURRENCY = 2  # batch requests in flight: one being decoded while the other commits
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")


class Client:
    """One keep-alive connection; reconnects once per failed request (a daemon restart, a reset)."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=300)

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        for attempt in (1, 2):
            try:
                self.conn.request("POST", path, body, {"Content-Type": "application/json"})
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.codes: Counter[str] = Counter()
        self.created = 0
        self.first_error: str | None = None

    def add(self, status: int, created: int, error: str | None = None) -> None:
        with self.lock:
            self.codes[str(status)] += 1
            self.created += created
            if error and self.first_error is None:
                self.first_error = error[:300]


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def post_single(base: str, body: bytes, runs: int, threads: int, tally: Tally) -> None:
    def worker(count: int) -> None:
        client = Client(base)
        for _ in range(count):
            try:
                status, data = client.post("/api/v1/workflow-runs", body)
            except (OSError, http.client.HTTPException) as exc:
                tally.add(0, 0, repr(exc))
                continue
            ok = status in (200, 201, 202)
            tally.add(status, int(ok), None if ok else data.decode(errors="replace"))

    pool = [threading.Thread(target=worker, args=(n,)) for n in _split(runs, max(1, min(threads, runs)))]
    [t.start() for t in pool]
    [t.join() for t in pool]


def post_batches(base: str, item: dict[str, Any], runs: int, size: int, threads: int, tally: Tally) -> bool:
    """Batches of `size` starts; False (nothing created) when the daemon has no batch endpoint."""
    probe = Client(base)
    first = min(size, runs)
    status, data = probe.post(BATCH_PATH, json.dumps({"runs": [item] * first}).encode())
    if status in (404, 405):
        return False
    _count_batch(status, data, tally)
    chunks = _split_sizes(runs - first, size)
    lock = threading.Lock()

    def worker() -> None:
        client = Client(base)
        while True:
            with lock:
                if not chunks:
                    return
                n = chunks.pop()
            try:
                status, data = client.post(BATCH_PATH, json.dumps({"runs": [item] * n}).encode())
            except (OSError, http.client.HTTPException) as exc:
                tally.add(0, 0, repr(exc))
                continue
            _count_batch(status, data, tally)

    pool = [threading.Thread(target=worker) for _ in range(max(1, threads))]
    [t.start() for t in pool]
    [t.join() for t in pool]
    return True


def _split_sizes(total: int, size: int) -> list[int]:
    return [min(size, total - i) for i in range(0, total, size)]


def _count_batch(status: int, data: bytes, tally: Tally) -> None:
    if status not in (200, 207):
        tally.add(status, 0, data.decode(errors="replace"))
        return
    results = json.loads(data).get("results", [])
    created = sum(1 for r in results if r.get("status") in (200, 201))
    errors = [r for r in results if r.get("status") not in (200, 201)]
    tally.add(status, created, json.dumps(errors[0]) if errors else None)


def sequential(base: str, body: bytes, runs: int, seconds: float, db: str, tally: Tally) -> None:
    """One run at a time until `runs` ran or `seconds` passed; completion read from the SQLite file."""
    client = Client(base)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    deadline = time.monotonic() + seconds
    done = 0
    while done < runs and time.monotonic() < deadline:
        status, data = client.post("/api/v1/workflow-runs", body)
        if status not in (200, 201, 202):
            tally.add(status, 0, data.decode(errors="replace"))
            return
        run_id = json.loads(data)["run"]["id"]
        tally.add(status, 1)
        wait_until = time.monotonic() + 60
        while time.monotonic() < wait_until:
            row = conn.execute("SELECT status FROM workflow_runs WHERE run_id = ?", (run_id,)).fetchone()
            if row and row[0] in TERMINAL:
                break
            time.sleep(0.002)
        done += 1
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen")
    parser.add_argument("--base", required=True)
    parser.add_argument("--workflow", required=True)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--mode", choices=["single", "batch", "sequential"], default="single")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--input-file", help="a JSON file holding the runs' input (default {})")
    parser.add_argument("--seconds", type=float, default=3600, help="sequential: stop after this long")
    parser.add_argument("--db", help="sequential: the daemon's SQLite file")
    args = parser.parse_args()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)  # the interpreter's start-up is not the load's
    run_input = json.loads(open(args.input_file).read()) if args.input_file else {}  # noqa: SIM115
    item = {"workflowId": args.workflow, "input": run_input}
    body = json.dumps(item).encode()
    tally = Tally()
    mode_used = args.mode
    started = time.monotonic()
    if args.mode == "batch":
        if not post_batches(args.base, item, args.runs, args.batch_size, BATCH_CONCURRENCY, tally):
            mode_used = "single (batch endpoint answered 404/405)"
            post_single(args.base, body, args.runs, args.threads, tally)
    elif args.mode == "sequential":
        sequential(args.base, body, args.runs, args.seconds, args.db or "", tally)
    else:
        post_single(args.base, body, args.runs, args.threads, tally)
    post_s = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"mode_used": mode_used, "created": tally.created, "codes": dict(tally.codes),
                      "first_error": tally.first_error, "post_s": round(post_s, 3),
                      "client_cpu_s": round(usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime, 3)}),
          flush=True)


if __name__ == "__main__":
    main()
