"""SSE fan-out through the real daemon (uvicorn on 127.0.0.1): many subscribers on one run, a slow
subscriber cut off and resumed, the global stream's filters, and long histories served a page at a
time in bounded memory (event rows seeded in the SQLite file of a stopped daemon)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sqlite3
import threading
import time
from array import array
from typing import Any

import httpx

from tests.conftest import PLAIN, WAITS, Daemon, wait_until

GATED = """
id: gated
start: a
states:
  - { name: a, type: operation, action: agent.run, input: { agent: worker, task: t }, next: b }
  - { name: b, type: inject, data: { b: 1 }, next: c }
  - { name: c, type: inject, data: { c: 1 }, next: d }
  - { name: d, type: inject, data: { d: 1 }, end: true }
"""


_ID = re.compile(rb"^id: (\d+)\r?$", re.M)


def _db(d: Daemon) -> sqlite3.Connection:
    return sqlite3.connect(d.data_dir / "station-wf.db")


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _subscribers(url: str, n: int, connected: asyncio.Event, timeout: float = 60) -> list[list[dict[str, Any]]]:
    """N streams on `url`, each read to its end; `connected` is set once every one has its first event."""
    got: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    first = 0

    async def one(i: int, client: httpx.AsyncClient) -> None:
        nonlocal first
        async with client.stream("GET", url) as resp:
            assert resp.status_code == 200
            ident = None
            async for line in resp.aiter_lines():
                if line.startswith("id:"):
                    ident = int(line[3:].strip())
                elif line.startswith("data:"):
                    got[i].append({"id": ident, **json.loads(line[5:])})
                    if len(got[i]) == 1:
                        first += 1
                        if first == n:
                            connected.set()

    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=n + 5)) as client:
        await asyncio.wait_for(asyncio.gather(*(one(i, client) for i in range(n))), timeout)
    return got


def test_many_subscribers_on_one_run_get_every_event_in_order_exactly_once(daemon: Daemon) -> None:
    daemon.add_agent("worker")
    hold = threading.Event()
    assert daemon.agent_server is not None
    daemon.agent_server.behave("worker", hold=hold)
    daemon.add_workflow("gated", GATED)
    daemon.start({"STATION_MAX_SSE_CONNECTIONS": "400"})
    rid = daemon.start_run("gated")["id"]
    n = 200

    async def scenario() -> list[list[dict[str, Any]]]:
        connected = asyncio.Event()
        task = asyncio.create_task(_subscribers(f"{daemon.base}/api/v1/workflow-runs/{rid}/stream", n, connected))
        await asyncio.wait_for(connected.wait(), 60)
        hold.set()  # the rest of the run happens while all of them listen
        return await task

    streams = asyncio.run(scenario())
    events = daemon.events(rid)
    expected = [(e["seq"], e["type"]) for e in events]
    assert expected[-1][1] == "run.completed" and len(expected) > 8
    for got in streams:
        assert [(e["seq"], e["type"]) for e in got] == expected  # each stream ended at run.completed
        assert [e["id"] for e in got] == [e["seq"] for e in got]  # a run stream's id is the seq
    assert streams[0] == streams[-1]


def test_a_slow_subscriber_is_cut_off_and_resumes_without_a_gap(daemon: Daemon) -> None:
    daemon.add_workflow("waits", WAITS)
    daemon.start()
    rid = daemon.start_run("waits")["id"]
    wait_until(lambda: daemon.run(rid)["status"] == "WAITING_SIGNAL", 20, what="the run to wait")
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", daemon.http_port))
    slow.settimeout(30)
    slow.sendall(f"GET /api/v1/workflow-runs/{rid}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    time.sleep(0.5)  # subscribed; from here it reads nothing while ~20 MB of events commit
    big = "x" * 700_000
    for i in range(30):
        resp = daemon.request("POST", f"/api/v1/workflow-runs/{rid}/signals", json={"name": "noise", "payload": {"i": i, "pad": big}})
        assert resp.status_code == 202, resp.text
    assert daemon.request("POST", f"/api/v1/workflow-runs/{rid}/signals", json={"name": "go", "payload": {}}).status_code == 202
    daemon.wait_status(rid)
    total = daemon.run(rid)["lastEventSeq"]
    raw = b""
    for _ in range(100_000):  # now read: what was sent before the cut, then the end of the response
        chunk = slow.recv(1 << 20)
        raw += chunk
        if not chunk or raw.endswith(b"\r\n0\r\n\r\n"):  # the last chunk of a chunked body
            break
    slow.close()
    assert raw.endswith(b"\r\n0\r\n\r\n"), raw[-200:]  # the daemon ended the stream...
    seen = [int(x) for x in _ID.findall(raw)]
    assert seen and seen == list(range(1, len(seen) + 1))
    assert seen[-1] < total, "the reader was never cut off"  # ...before the run's end: it fell behind
    with httpx.stream("GET", f"{daemon.base}/api/v1/workflow-runs/{rid}/stream",
                      headers={"Last-Event-ID": str(seen[-1])}, timeout=30) as resp:
        rest = [int(x) for x in _ID.findall(resp.read())]
    assert rest == list(range(seen[-1] + 1, total + 1))  # no gap, no duplicate, to run.completed
    assert daemon.request("GET", "/readyz").status_code == 200


def test_global_stream_filters_by_workflow_live_and_on_resume(daemon: Daemon) -> None:
    daemon.add_workflow("waits", WAITS)
    daemon.add_workflow("plain", PLAIN)
    daemon.start()
    holder: dict[str, Any] = {}
    url = f"{daemon.base}/api/v1/workflow-runs/stream"

    def listen() -> None:
        got: list[dict[str, Any]] = []
        with httpx.stream("GET", url, params={"workflowId": "plain"}, timeout=30) as resp:
            ident = None
            for line in resp.iter_lines():
                if line.startswith("id:"):
                    ident = int(line[3:].strip())
                elif line.startswith("data:"):
                    got.append({"id": ident, **json.loads(line[5:])})
                    if sum(e["type"] == "run.completed" for e in got) == 3:
                        break
        holder["live"] = got

    t = threading.Thread(target=listen)
    t.start()
    time.sleep(1.0)
    waiting = daemon.start_run("waits")["id"]
    plain = [daemon.start_run("plain")["id"] for _ in range(3)]
    t.join(40)
    live = holder["live"]
    assert {e["runId"] for e in live} == set(plain) and waiting not in {e["runId"] for e in live}
    assert [e["id"] for e in live] == sorted(e["id"] for e in live)
    for rid in plain:
        assert [e["seq"] for e in live if e["runId"] == rid] == [e["seq"] for e in daemon.events(rid)]
    # Resume the filtered stream from its second event: the rest, and only the plain runs' events.
    resumed: list[int] = []
    with httpx.stream("GET", url, params={"workflowId": "plain"}, headers={"Last-Event-ID": str(live[1]["id"])},
                      timeout=httpx.Timeout(5, read=2)) as resp:
        try:
            for line in resp.iter_lines():
                if line.startswith("id:"):
                    resumed.append(int(line[3:].strip()))
                    if len(resumed) == len(live) - 2:
                        break
        except httpx.ReadTimeout:
            pass
    assert resumed == [e["id"] for e in live[2:]]


def _seed(d: Daemon, run_id: str, n: int, pad: int) -> int:
    """Append `n` events (each ~`pad` bytes of payload) to a run in the stopped daemon's SQLite file."""
    payload = json.dumps({"pad": "p" * pad})
    with _db(d) as conn:
        seq = conn.execute("SELECT event_seq FROM workflow_runs WHERE run_id = ?", (run_id,)).fetchone()[0]
        for start in range(0, n, 50_000):
            conn.executemany("INSERT INTO workflow_run_events (run_id, seq, type, payload, created_at) VALUES (?, ?, 'note', ?, ?)",
                             [(run_id, seq + i + 1, payload, "2026-01-01T00:00:00Z") for i in range(start, min(n, start + 50_000))])
        conn.execute("UPDATE workflow_runs SET event_seq = ? WHERE run_id = ?", (seq + n, run_id))
    return seq + n


def test_ten_thousand_event_backfill_is_complete_through_sse_and_the_api(daemon: Daemon) -> None:
    daemon.add_workflow("waits", WAITS)
    daemon.start()
    rid = daemon.start_run("waits")["id"]
    wait_until(lambda: daemon.run(rid)["status"] == "WAITING_SIGNAL", 20, what="the run to wait")
    assert daemon.stop() == 0
    total = _seed(daemon, rid, 10_000, 20)
    daemon.start()
    with httpx.stream("GET", f"{daemon.base}/api/v1/workflow-runs/{rid}/stream", timeout=30) as resp:
        raw = b""
        for chunk in resp.iter_bytes():
            raw += chunk
            if b"\r\nid: %d\r\n" % total in raw or raw.startswith(b"id: %d\r\n" % total):
                break
    ids = [int(x) for x in _ID.findall(raw)]
    assert ids == list(range(1, total + 1))
    listed = daemon.events(rid, max_pages=10_000)
    assert [e["seq"] for e in listed] == list(range(1, total + 1)) and listed[-1]["type"] == "note"


def test_a_200k_event_run_is_served_in_bounded_memory(daemon: Daemon) -> None:
    """200,000 events of ~500 bytes (~100 MB of payload): read whole through SSE, and through the events
    API, while the daemon's RSS stays within a bound far below what holding the history would take."""
    daemon.add_workflow("waits", WAITS)
    daemon.start()
    rid = daemon.start_run("waits")["id"]
    wait_until(lambda: daemon.run(rid)["status"] == "WAITING_SIGNAL", 20, what="the run to wait")
    assert daemon.stop() == 0
    total = _seed(daemon, rid, 200_000, 500)
    daemon.start()
    assert daemon.proc is not None
    pid = daemon.proc.pid
    base_rss = _rss_mb(pid)
    peak = [base_rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], _rss_mb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        ids = array("q")
        tail = b""
        deadline = time.monotonic() + 150
        with httpx.stream("GET", f"{daemon.base}/api/v1/workflow-runs/{rid}/stream", timeout=60) as resp:
            for chunk in resp.iter_bytes():
                data = tail + chunk
                end = data.rfind(b"\r\n\r\n")
                cut = end + 4 if end >= 0 else 0  # parse whole frames only
                ids.extend(int(x) for x in _ID.findall(data[:cut]))
                tail = data[cut:]
                if (ids and ids[-1] == total) or time.monotonic() > deadline:
                    break
        assert len(ids) == total and ids[0] == 1 and ids[-1] == total
        assert all(ids[i] == i + 1 for i in range(0, total, 997))
        listed = 0
        after = 0
        for _ in range(1000):
            page = daemon.request("GET", f"/api/v1/workflow-runs/{rid}/events", params={"afterSeq": after, "limit": 1000}).json()
            assert page["events"][0]["seq"] == after + 1
            listed += len(page["events"])
            if page["nextAfterSeq"] is None:
                break
            after = page["nextAfterSeq"]
        assert listed == total
    finally:
        stop.set()
        sampler.join(5)
    grew = peak[0] - base_rss
    assert grew < 120, f"daemon RSS grew by {grew:.0f} MB serving the history (from {base_rss:.0f} MB)"
