"""SSE under load, measured with lean raw-socket clients (so the client costs little beside the daemon).

    python -m benchmarks.sse_load fanout 1000   # N subscribers on one run: commit-to-client p50/p99, daemon CPU
    python -m benchmarks.sse_load idle 10000    # N idle subscribers: daemon RSS before/after, CPU while idle
    python -m benchmarks.sse_load fanout 1000 /tmp/fan.txt   # also a raw py-spy profile of the fan-out

Clients speak HTTP/1.1 on plain asyncio sockets and parse only `data:` lines; each connection is its own
socket (mind `ulimit -n`: the daemon and this process each hold N descriptors). Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import BenchDaemon
from benchmarks.scenarios import GateAgent, cpu_seconds, post_runs, rss_mb, ts
from benchmarks.throughput import noop_workflow

CONNECT_BATCH = 200  # connections opened at once (the listen backlog is finite)


class SseClient(asyncio.Protocol):
    """One subscriber: hands (receive time, line) on for every `data:` line; chunk framing and pings are ignored."""

    def __init__(self, on_event: Any) -> None:
        self.buf = b""
        self.on_event = on_event
        self.opened = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.buf += data
        if not self.status and b"\r\n" in self.buf:
            self.status = int(self.buf.split(b" ", 2)[1])
            if not self.opened.done():
                self.opened.set_result(self.status)
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            if line.startswith(b"data: "):
                self.on_event(now, line)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_result(0)
        if not self.closed.done():
            self.closed.set_result(None)


async def open_clients(host: str, port: int, path: str, n: int, on_event: Any) -> list[SseClient]:
    loop = asyncio.get_running_loop()
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n".encode()
    clients: list[SseClient] = []
    for start in range(0, n, CONNECT_BATCH):
        batch = []
        for _ in range(min(CONNECT_BATCH, n - start)):
            _, proto = await loop.create_connection(lambda: SseClient(on_event), host, port)
            proto.transport.write(request)  # type: ignore[union-attr]
            batch.append(proto)
        statuses = await asyncio.wait_for(asyncio.gather(*(c.opened for c in batch)), 60)
        bad = [s for s in statuses if s != 200]
        if bad:
            raise RuntimeError(f"{len(bad)} streams refused (status {bad[0]}); raise STATION_MAX_SSE_CONNECTIONS")
        clients.extend(batch)
    return clients


def _gated_daemon(n: int) -> tuple[BenchDaemon, GateAgent]:
    gate = GateAgent()
    daemon = BenchDaemon({"STATION_MAX_SSE_CONNECTIONS": str(n + 100)})
    daemon.add_workflow("fan", noop_workflow(10, agent=False).replace("id: bench", "id: fan").replace(
        "  - { name: s0, type: inject, data: { v0: 0 }, next: s1 }",
        "  - { name: s0, type: operation, action: agent.run, input: { agent: gate, task: t }, next: s1 }"))
    (daemon.root / "environments/default/agents/gate.prompt").write_text(
        f"---\nmetadata: {{name: gate}}\nendpoint: http://127.0.0.1:{gate.port}/agents/gate\n---\nHold.\n")
    return daemon, gate


def fanout(n: int, profile: str | None = None) -> dict[str, Any]:
    """N subscribers on one run held at its first step; release it; every later event's latency to every client."""
    daemon, gate = _gated_daemon(n)
    daemon.start()
    try:
        run_id = asyncio.run(post_runs(daemon.base, "fan", 1))[0]
        pid = daemon.procs[-1].pid
        return asyncio.run(_fanout(daemon, pid, run_id, n, gate, profile))
    finally:
        daemon.stop()
        gate.close()


async def _fanout(daemon: BenchDaemon, pid: int, run_id: str, n: int, gate: GateAgent, profile: str | None) -> dict[str, Any]:
    lat: list[float] = []
    done = 0
    released = float("inf")

    stamps: dict[bytes, float] = {}

    def on_event(now: float, line: bytes) -> None:
        """Cheap on purpose (the client shares the machine): the time field by search, parsed once per value."""
        nonlocal done
        at = line.find(b'"time":"') + 8
        raw = line[at:line.index(b'"', at)]
        committed = stamps.get(raw)
        if committed is None:
            committed = stamps[raw] = ts(raw.decode())
        if committed >= released:  # live events only: a late connection's backfill is not fan-out latency
            lat.append(now - committed)
        if b'"type":"run.completed"' in line:
            done += 1

    clients = await open_clients("127.0.0.1", daemon.http_port, f"/api/v1/workflow-runs/{run_id}/stream", n, on_event)
    spy = None
    if profile:  # py-spy (pip install py-spy) samples the daemon from here to the end of the fan-out
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-o", profile,  # noqa: ASYNC220
                                "-f", "raw", "-r", "500"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await asyncio.sleep(1.0)
    rss_before, cpu0, t0, own0 = rss_mb(pid), cpu_seconds(pid), time.monotonic(), time.process_time()
    released = time.time()
    gate.release.set()
    await asyncio.wait_for(asyncio.gather(*(c.closed for c in clients)), 120)
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    cpu, wall, own = cpu_seconds(pid) - cpu0, time.monotonic() - t0, time.process_time() - own0
    lat.sort()
    return {"scenario": f"sse-fanout-{n}", "clients": n, "completed_streams": done, "deliveries": len(lat),
            "p50_ms": round(statistics.median(lat) * 1000, 1), "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 1),
            "max_ms": round(lat[-1] * 1000, 1), "daemon_cpu_s": round(cpu, 2), "client_cpu_s": round(own, 2), "wall_s": round(wall, 2),
            "daemon_cpu_us_per_delivery": round(cpu / max(1, len(lat)) * 1e6, 1), "rss_mb_connected": round(rss_before, 1)}


def idle(n: int, hold: float = 20.0) -> dict[str, Any]:
    """N subscribers on one waiting run, held idle: the daemon's RSS and CPU while they sit there."""
    daemon, gate = _gated_daemon(n)
    daemon.start()
    try:
        run_id = asyncio.run(post_runs(daemon.base, "fan", 1))[0]
        pid = daemon.procs[-1].pid
        return asyncio.run(_idle(daemon, pid, run_id, n, hold))
    finally:
        gate.release.set()
        daemon.stop()
        gate.close()


async def _idle(daemon: BenchDaemon, pid: int, run_id: str, n: int, hold: float) -> dict[str, Any]:
    await asyncio.sleep(1.0)
    rss0 = rss_mb(pid)
    t0 = time.monotonic()
    clients = await open_clients("127.0.0.1", daemon.http_port, f"/api/v1/workflow-runs/{run_id}/stream", n, lambda *_: None)
    connect_s = time.monotonic() - t0
    await asyncio.sleep(2.0)
    cpu0, t1 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(hold)
    idle_cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t1)
    rss1 = rss_mb(pid)
    alive = sum(1 for c in clients if not c.closed.done())
    for c in clients:
        c.transport.close()  # type: ignore[union-attr]
    return {"scenario": f"sse-idle-{n}", "clients": n, "alive_after_hold": alive, "connect_s": round(connect_s, 1),
            "rss_mb_before": round(rss0, 1), "rss_mb_with_clients": round(rss1, 1),
            "kb_per_client": round((rss1 - rss0) * 1024 / n, 1), "idle_cpu_pct": round(idle_cpu * 100, 2)}


if __name__ == "__main__":
    kind, count = sys.argv[1], int(sys.argv[2])
    print(json.dumps(fanout(count, *sys.argv[3:4]) if kind == "fanout" else idle(count)))
