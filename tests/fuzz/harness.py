"""What the fuzz tests check with: findings grouped by cause, a read-only fingerprint of the stored data,
a /healthz poller with an RSS sampler, and a hostile HTTP peer (agents with odd replies, a `$ref` target).

A finding is a fact about the daemon (route, input, what came back); a test collects them all and fails
once at the end with a summary grouped by cause, so one run of the suite lists everything that is wrong.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from station_wf.bus.nats_server import free_port


# -- findings --------------------------------------------------------------------------------------
@dataclass
class Finding:
    cause: str     # e.g. "5xx", "error shape", "stored data changed by a rejected request"
    route: str     # "POST /api/v1/workflow-runs"
    case: str      # which input
    observed: str  # status and a short body


@dataclass
class Findings:
    path: Path | None = None  # where check() writes every finding (one JSON object a line)
    items: list[Finding] = field(default_factory=list)

    def add(self, cause: str, route: str, case: str, observed: str) -> None:
        self.items.append(Finding(cause, route, case, observed[:300]))

    def summary(self, examples: int = 6) -> str:
        groups: dict[tuple[str, str], list[Finding]] = defaultdict(list)
        for f in self.items:
            groups[(f.cause, f.route)].append(f)
        lines = [f"{len(self.items)} finding(s) in {len(groups)} group(s):"]
        for (cause, route), fs in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            lines.append(f"- {cause} | {route} | {len(fs)}x")
            lines.extend(f"    {f.case}: {f.observed}" for f in fs[:examples])
        return "\n".join(lines)

    def check(self) -> None:
        if self.items and self.path is not None:
            self.path.write_text("".join(json.dumps(f.__dict__) + "\n" for f in self.items))
        where = f"\n(all of them in {self.path})" if self.path else ""
        assert not self.items, self.summary() + where


# -- the stored data -------------------------------------------------------------------------------
# The tables a request can change; outbox, relay cursors and idempotency replays are bookkeeping, and
# timers are left out because they fire on their own.
FINGERPRINT_TABLES = {
    "workflow_definitions": "workflow_id, version",
    "workflow_runs": "run_id",
    "workflow_run_steps": "run_id, step_id, attempt",
    "workflow_run_events": "run_id, seq",
    "workflow_approvals": "approval_id",
    "workflow_signals": "id",
    "workflow_schedules": "schedule_id",
}
# A schedule's tick bookkeeping moves with the clock, not with requests.
IGNORED_COLUMNS = {"workflow_schedules": {"last_fire_at", "updated_at", "last_run_id", "last_error"}}


class Fingerprint:
    """A hash of the stored rows, read with sqlite3 read-only from the daemon's WAL database.

    Rows of runs in `excluded_runs` (runs that accepted requests started: they progress on their own)
    are left out, so a rejected request that stores a run anyway still shows up as drift.
    """

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.excluded_runs: set[str] = set()
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10, check_same_thread=False)
            self._conn.text_factory = bytes  # lone surrogates or odd bytes must not stop the read
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def take(self) -> str:
        conn = self._connect()
        excluded = json.dumps(sorted(self.excluded_runs))
        digest = hashlib.sha256()
        for table, order in FINGERPRINT_TABLES.items():
            cols = [r[1].decode() if isinstance(r[1], bytes) else r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            keep = [c for c in cols if c not in IGNORED_COLUMNS.get(table, set())]
            where = " WHERE run_id NOT IN (SELECT value FROM json_each(?))" if "run_id" in cols and table != "workflow_schedules" else ""
            sql = f"SELECT {', '.join(keep)} FROM {table}{where} ORDER BY {order}"
            rows = conn.execute(sql, (excluded,) if where else ()).fetchall()
            digest.update(f"{table}:{len(rows)}\n".encode())
            for row in rows:
                digest.update(repr(row).encode())
        return digest.hexdigest()

    def counts(self) -> dict[str, int]:
        conn = self._connect()
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in FINGERPRINT_TABLES}

    def settle(self, timeout: float = 8.0) -> str:
        """The fingerprint once it stopped moving (two equal reads 0.1 s apart), bounded in time."""
        deadline = time.monotonic() + timeout
        last = self.take()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.take()
            if now == last:
                return now
            last = now
        return last


# -- /healthz and RSS while something runs ---------------------------------------------------------
def rss_mb(pid: int) -> float:
    """VmRSS of a process in MiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return 0.0
    return 0.0


class HealthProbe:
    """Polls GET /healthz every 100 ms from a thread (timeout 5 s) and samples the daemon's RSS every 50 ms."""

    def __init__(self, target: Callable[[], tuple[str, int]], interval: float = 0.1) -> None:
        """`target()` gives the daemon's (base URL, pid) now: the env may have replaced a dead daemon."""
        self.target, self.interval = target, interval
        self.samples: list[tuple[float, float, int]] = []  # (start, latency s, status; 0 = no answer)
        self.peak_rss = rss_mb(target()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._rss_thread = threading.Thread(target=self._sample_rss, daemon=True)

    def _loop(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                base, pid = self.target()
                t0 = time.monotonic()
                try:
                    status = client.get(base + "/healthz").status_code
                except httpx.HTTPError:
                    status = 0
                self.samples.append((t0, time.monotonic() - t0, status))
                self._stop.wait(self.interval)

    def _sample_rss(self) -> None:
        """On its own thread: a /healthz poll can wait 5 s, and a memory peak can be shorter than that."""
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, rss_mb(self.target()[1]))
            self._stop.wait(0.05)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        self._rss_thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._rss_thread.join(10)

    def worst(self) -> float:
        """The slowest answer in seconds (inf when a poll got none)."""
        return max((lat if status == 200 else float("inf") for _, lat, status in self.samples), default=0.0)

    def blame(self, spans: list[tuple[str, float, float]], bound: float) -> dict[str, float]:
        """Each poll slower than `bound` charged to the span (label, t0, t1) it overlapped most: {label: worst}."""
        out: dict[str, float] = {}
        for start, lat, status in self.samples:
            if status == 200 and lat <= bound:
                continue
            end = start + lat
            best = max(spans, key=lambda sp: min(end, sp[2]) - max(start, sp[1]), default=None)
            if best is not None and min(end, best[2]) > max(start, best[1]):
                out[best[0]] = max(out.get(best[0], 0.0), lat if status == 200 else float("inf"))
        return out


# -- the hostile peer ------------------------------------------------------------------------------
def _deep_json(depth: int) -> bytes:
    return b'{"v":' * depth + b"1" + b"}" * depth


AGENT_REPLIES: dict[str, tuple[int, str, bytes]] = {
    # name: (status, content type, body)
    "echo": (200, "application/json", b'{"ok": true}'),
    "deep": (200, "application/json", _deep_json(900)),
    "deeper": (200, "application/json", b"[" * 100_000 + b"]" * 100_000),
    "big": (200, "application/json", b'{"blob": "' + b"x" * (5 << 20) + b'"}'),
    "text": (200, "text/plain", b"this is <not> JSON {"),
    "nan": (200, "application/json", b'{"v": NaN, "w": Infinity, "x": -Infinity}'),
    "huge-number": (200, "application/json", b'{"v": 1e999, "n": ' + b"9" * 5000 + b"}"),
    "surrogate": (200, "application/json", b'{"v": "\\ud800"}'),
    "bad-utf8": (200, "application/json", b'{"v": "\xff\xfe"}'),
    "empty": (200, "application/json", b""),
}


class HostilePeer:
    """One ThreadingHTTPServer on 127.0.0.1: POST /agents/<name> answers AGENT_REPLIES[name]; anything
    else (a `$ref` fetch) is recorded as a hit and answered with a harmless schema."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hits: list[str] = []
        self.agent_calls: list[str] = []
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(min(length, 8 << 20))
                name = self.path.rsplit("/", 1)[-1]
                if self.path.startswith("/agents/") and name in AGENT_REPLIES:
                    peer.agent_calls.append(name)
                    self._answer(*AGENT_REPLIES[name])
                else:
                    peer.hits.append(f"POST {self.path}")
                    self._answer(200, "application/json", b'{"type": "object"}')

            def do_GET(self) -> None:  # noqa: N802
                peer.hits.append(f"GET {self.path}")
                self._answer(200, "application/schema+json", b'{"type": "object"}')

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
