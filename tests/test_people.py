"""People in the loop over real HTTP: approvals, signals, pause/resume/cancel, idempotency, auth, SSE."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx
import pytest

from tests.conftest import Daemon, wait_until

TOKENS = {
    "alice-token-0123456789": {"principal": "alice", "groups": ["platform"]},
    "bob-token-0123456789ab": {"principal": "bob", "groups": ["ops"]},
    "carol-token-0123456789": {"principal": "carol", "groups": ["sales"]},
}
ALICE, BOB, CAROL = ({"Authorization": f"Bearer {t}"} for t in TOKENS)

GATED = """
id: gated
start: plan
states:
  - { name: plan, type: inject, data: { plan: { action: restart, pods: 3 } }, next: ask }
  - name: ask
    type: operation
    action: human.approval
    input:
      message: "Restart {{ plan.pods }} pods?"
      summaryPath: plan
      approvers: ["user:alice", "team:ops"]
      onReject: {on_reject}
      timeoutSeconds: {timeout}
    resultPath: decision
    next: act
  - { name: act, type: operation, action: agent.run, input: { agent: worker, task: "go" }, end: true }
"""


def gated(on_reject: str = "fail", timeout: int = 3600) -> str:
    return GATED.replace("{on_reject}", on_reject).replace("{timeout}", str(timeout))


@pytest.fixture
def authed(daemon: Daemon, tmp_path) -> Daemon:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps(TOKENS))
    daemon.env["STATION_API_TOKENS_FILE"] = str(tokens)
    return daemon


def api(d: Daemon, method: str, path: str, headers: dict | None = None, **kw: Any) -> httpx.Response:
    return httpx.request(method, d.base + path, headers=headers or ALICE, timeout=15, **kw)


def start(d: Daemon, wf: str, run_input: dict | None = None, headers: dict | None = None) -> dict:
    r = api(d, "POST", "/api/v1/workflow-runs", headers, json={"workflowId": wf, "input": run_input or {}})
    assert r.status_code == 201, r.text
    return r.json()["run"]


def get_run(d: Daemon, run_id: str) -> dict:
    return api(d, "GET", f"/api/v1/workflow-runs/{run_id}").json()


def wait_run(d: Daemon, run_id: str, statuses: tuple[str, ...] | str, timeout: float = 20) -> dict:
    wanted = (statuses,) if isinstance(statuses, str) else statuses
    return wait_until(lambda: (r := get_run(d, run_id))["status"] in wanted and r, timeout, what=f"{run_id} -> {wanted}")


def pending_approval(d: Daemon, run_id: str) -> dict:
    return wait_until(lambda: next(iter(api(d, "GET", f"/api/v1/workflow-runs/{run_id}/approvals").json()["approvals"]), None),
                      what="the approval")


def test_approve_with_principals_and_a_second_decision_conflicts(authed: Daemon) -> None:
    authed.add_workflow("gated", gated())
    authed.start()
    assert httpx.get(authed.base + "/api/v1/workflows").status_code == 401
    assert httpx.get(authed.base + "/api/v1/workflows", headers={"Authorization": "Bearer nope"}).status_code == 401

    run = start(authed, "gated")
    waiting = wait_run(authed, run["id"], "WAITING_APPROVAL")
    assert [s["status"] for s in waiting["steps"]] == ["SUCCEEDED", "WAITING_APPROVAL"]
    inbox = api(authed, "GET", "/api/v1/workflow-approvals").json()["approvals"]
    assert len(inbox) == 1 and inbox[0]["message"] == "Restart 3 pods?" and inbox[0]["summary"] == {"action": "restart", "pods": 3}
    assert inbox[0]["approvers"] == ["user:alice", "team:ops"] and inbox[0]["status"] == "pending"
    aid = inbox[0]["id"]
    base = f"/api/v1/workflow-runs/{run['id']}/approvals/{aid}"

    denied = api(authed, "POST", base + "/approve", CAROL, json={"comment": "me?"})
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
    ok = api(authed, "POST", base + "/approve", BOB, json={"comment": "go ahead"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["approval"]["status"] == "approved" and ok.json()["approval"]["decidedBy"] == "bob"

    again = api(authed, "POST", base + "/reject", ALICE, json={"reason": "too late"})
    assert again.status_code == 409 and again.json()["error"]["details"]["status"] == "approved"

    done = wait_run(authed, run["id"], "COMPLETED")
    decision = done["context"]["decision"]
    assert decision["approved"] is True and decision["decision"] == "approved" and decision["decidedBy"] == "bob"
    assert decision["comment"] == "go ahead" and decision["decidedAt"]
    types = [e["type"] for e in api(authed, "GET", f"/api/v1/workflow-runs/{run['id']}/events").json()["events"]]
    assert "approval.requested" in types and "approval.decided" in types
    assert api(authed, "GET", "/api/v1/workflow-approvals").json()["approvals"] == []  # the inbox is pending by default


@pytest.mark.parametrize(("policy", "final", "step_status"), [("fail", "FAILED", "FAILED"), ("cancel", "CANCELLED", "CANCELLED"),
                                                              ("continue", "COMPLETED", "SUCCEEDED")])
def test_reject_policies(authed: Daemon, policy: str, final: str, step_status: str) -> None:
    authed.add_workflow("gated", gated(on_reject=policy))
    authed.start()
    run = start(authed, "gated")
    aid = pending_approval(authed, run["id"])["id"]
    r = api(authed, "POST", f"/api/v1/workflow-runs/{run['id']}/approvals/{aid}/reject", ALICE, json={"reason": "not now"})
    assert r.status_code == 200 and r.json()["approval"]["status"] == "rejected"
    done = wait_run(authed, run["id"], final)
    ask = next(s for s in done["steps"] if s["stateName"] == "ask")
    assert ask["status"] == step_status
    if policy == "continue":
        assert done["context"]["decision"]["approved"] is False and done["context"]["decision"]["comment"] == "not now"
    assert len(authed.agent_server.calls_for("worker")) == (1 if policy == "continue" else 0)


def test_approval_timeout_fires_after_restart_and_late_decision_conflicts(authed: Daemon) -> None:
    authed.add_workflow("gated", gated(timeout=1))
    authed.start()
    run = start(authed, "gated")
    aid = pending_approval(authed, run["id"])["id"]
    authed.kill()
    time.sleep(1.5)  # the timer comes due while the daemon is down
    authed.start()
    done = wait_run(authed, run["id"], "TIMED_OUT")
    assert next(s for s in done["steps"] if s["stateName"] == "ask")["status"] == "TIMED_OUT"
    approval = api(authed, "GET", f"/api/v1/workflow-runs/{run['id']}/approvals").json()["approvals"][0]
    assert approval["status"] == "timed_out"
    late = api(authed, "POST", f"/api/v1/workflow-runs/{run['id']}/approvals/{aid}/approve", ALICE, json={})
    assert late.status_code == 409


def test_approve_and_reject_race_exactly_one_wins(authed: Daemon) -> None:
    authed.add_workflow("gated", gated())
    authed.start()
    for _ in range(3):
        run = start(authed, "gated")
        aid = pending_approval(authed, run["id"])["id"]
        base = f"/api/v1/workflow-runs/{run['id']}/approvals/{aid}"
        results: list[int] = []
        barrier = threading.Barrier(2)

        def decide(path: str, headers: dict, barrier: threading.Barrier, results: list[int], base: str) -> None:
            barrier.wait()
            results.append(api(authed, "POST", base + path, headers, json={}).status_code)

        threads = [threading.Thread(target=decide, args=("/approve", ALICE, barrier, results, base)),
                   threading.Thread(target=decide, args=("/reject", BOB, barrier, results, base))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(results) == [200, 409]
        wait_run(authed, run["id"], ("COMPLETED", "FAILED"))


SIGNALS = """
id: signals
start: first
states:
  - { name: first, type: operation, action: signal.wait, input: { signal: go }, resultPath: got.first, next: second }
  - { name: second, type: operation, action: await.signal, input: { signal: go, timeoutSeconds: 30 }, resultPath: got.second, end: true }
"""


def test_signals_buffered_in_order_and_deduplicated(daemon: Daemon) -> None:
    daemon.add_workflow("signals", SIGNALS)
    daemon.start()
    run = daemon.start_run("signals")
    daemon.wait_status(run["id"], "WAITING_SIGNAL")
    url = f"/api/v1/workflow-runs/{run['id']}/signals"
    first = daemon.request("POST", url, json={"name": "go", "payload": {"n": 1}}, headers={"Idempotency-Key": "sig-1"})
    assert first.status_code == 202 and first.json()["signal"]["consumed"] is True
    replay = daemon.request("POST", url, json={"name": "go", "payload": {"n": 1}}, headers={"Idempotency-Key": "sig-1"})
    assert replay.status_code == 202 and replay.json() == first.json() and replay.headers["Idempotent-Replayed"] == "true"
    reused = daemon.request("POST", url, json={"name": "go", "payload": {"n": 99}}, headers={"Idempotency-Key": "sig-1"})
    assert reused.status_code == 422 and reused.json()["error"]["code"] == "idempotency_key_reused"
    done = daemon.wait_status(run["id"], "WAITING_SIGNAL")
    assert done["context"]["got"] == {"first": {"n": 1}}  # the replay did not deliver a second signal
    assert daemon.request("POST", url, json={"name": "bad name!"}).status_code == 400
    daemon.request("POST", url, json={"name": "go", "payload": {"n": 2}})
    assert daemon.wait_status(run["id"])["context"]["got"] == {"first": {"n": 1}, "second": {"n": 2}}

    # Signals sent before their wait are buffered and consumed once each, in order.
    early = daemon.start_run("signals")
    for n in (10, 11):
        r = daemon.request("POST", f"/api/v1/workflow-runs/{early['id']}/signals", json={"name": "go", "payload": n})
        assert r.status_code == 202
    done = daemon.wait_status(early["id"])
    assert done["context"]["got"] == {"first": 10, "second": 11}
    consumed = [e for e in daemon.events(early["id"]) if e["type"] == "signal.consumed"]
    assert [e["payload"]["payload"] for e in consumed] == [10, 11]
    late = daemon.request("POST", f"/api/v1/workflow-runs/{early['id']}/signals", json={"name": "go", "payload": 12})
    assert late.status_code == 409 and late.json()["error"]["details"] == {"status": "COMPLETED"}


def test_idempotent_run_start(daemon: Daemon) -> None:
    daemon.add_workflow("signals", SIGNALS)
    daemon.start()
    body = {"workflowId": "signals", "input": {}}
    a = daemon.request("POST", "/api/v1/workflow-runs", json=body, headers={"Idempotency-Key": "start-1"})
    b = daemon.request("POST", "/api/v1/workflow-runs", json=body, headers={"Idempotency-Key": "start-1"})
    assert a.status_code == b.status_code == 201 and a.json()["run"]["id"] == b.json()["run"]["id"]
    assert len(daemon.request("GET", "/api/v1/workflow-runs").json()["runs"]) == 1
    c = daemon.request("POST", "/api/v1/workflow-runs", json={**body, "version": 1}, headers={"Idempotency-Key": "start-1"})
    assert c.status_code == 422


FOREACH = """
id: loop
start: each
states:
  - name: each
    type: foreach
    itemsPath: items
    iterator:
      states: [ { name: work, type: operation, action: agent.run, input: { agent: worker, task: "{{ item }}" }, end: true } ]
    end: true
"""


def test_pause_during_foreach_then_resume(daemon: Daemon) -> None:
    daemon.add_workflow("loop", FOREACH)
    daemon.agent_server.behave("worker", delay=0.4)
    daemon.start()
    run = daemon.start_run("loop", {"items": list(range(6))})
    wait_until(lambda: len(daemon.agent_server.calls_for("worker")) == 2, what="two items")
    paused = daemon.request("POST", f"/api/v1/workflow-runs/{run['id']}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "PAUSED"
    assert daemon.request("POST", f"/api/v1/workflow-runs/{run['id']}/pause").status_code == 200  # idempotent
    time.sleep(1.5)
    calls = len(daemon.agent_server.calls_for("worker"))
    assert calls <= 3  # at most the one in flight when we paused finished
    time.sleep(1.0)
    assert len(daemon.agent_server.calls_for("worker")) == calls  # nothing new was dispatched
    status = daemon.run(run["id"])
    assert status["status"] == "PAUSED"
    assert all(s["status"] != "RUNNING" or s["stateType"] == "foreach" for s in status["steps"])  # in-flight recorded
    resumed = daemon.request("POST", f"/api/v1/workflow-runs/{run['id']}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "RUNNING"
    done = daemon.wait_status(run["id"])
    assert sorted(c.body["task"] for c in daemon.agent_server.calls_for("worker")) == list(range(6))
    assert daemon.request("POST", f"/api/v1/workflow-runs/{run['id']}/pause").status_code == 409
    assert [e["type"] for e in daemon.events(done["id"])].count("run.paused") == 1


def test_cancel_during_a_long_agent_call_closes_the_connection(daemon: Daemon) -> None:
    daemon.add_workflow("loop", FOREACH)
    hold = threading.Event()
    daemon.agent_server.behave("worker", hold=hold)
    daemon.start()
    run = daemon.start_run("loop", {"items": [1, 2]})
    wait_until(lambda: daemon.agent_server.calls_for("worker"), what="the agent call")
    r = daemon.request("POST", f"/api/v1/workflow-runs/{run['id']}/cancel", json={"reason": "wrong target"})
    assert r.status_code == 200 and r.json()["status"] == "CANCELLED"
    assert r.json()["error"]["message"] == "wrong target"
    wait_until(lambda: daemon.agent_server.behaviours["worker"].disconnects == 1, what="the agent connection to close")
    again = daemon.request("POST", f"/api/v1/workflow-runs/{run['id']}/cancel", json={})
    assert again.status_code == 200  # idempotent
    assert daemon.request("POST", f"/api/v1/workflow-runs/{run['id']}/resume").status_code == 409
    time.sleep(0.5)
    final = daemon.run(run["id"])
    assert final["status"] == "CANCELLED" and all(s["status"] == "CANCELLED" for s in final["steps"])
    assert len(daemon.agent_server.calls_for("worker")) == 1
    assert daemon.events(run["id"])[-1]["type"] in ("run.cancelled", "step.cancelled")


# -- SSE -------------------------------------------------------------------------------------------
def read_sse(url: str, headers: dict | None = None, limit: int | None = None, timeout: float = 20) -> list[dict]:
    """Read a stream until it ends (or `limit` events), parsing `id`, `event` and `data` lines."""
    events: list[dict] = []
    current: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if time.monotonic() > deadline:
                raise AssertionError("SSE stream did not end in time")
            if line.startswith(":"):
                continue
            if not line:
                if "event" in current:
                    current["data"] = json.loads(current["data"])
                    events.append(current)
                    if limit and len(events) >= limit:
                        return events
                current = {}
                continue
            field, _, value = line.partition(":")
            current[field] = value[1:] if value.startswith(" ") else value
    return events


def test_sse_reconnect_with_last_event_id_has_no_gap_and_no_duplicate(daemon: Daemon) -> None:
    daemon.add_workflow("loop", FOREACH)
    hold = threading.Event()
    daemon.agent_server.behave("worker", hold=hold)
    daemon.start()
    run = daemon.start_run("loop", {"items": [1, 2, 3]})
    url = f"{daemon.base}/api/v1/workflow-runs/{run['id']}/stream"
    first = read_sse(url, limit=4)
    assert [int(e["id"]) for e in first] == [1, 2, 3, 4] and first[0]["event"] == "run.created"
    hold.set()
    rest = read_sse(url, headers={"Last-Event-ID": first[-1]["id"]})
    seqs = [int(e["id"]) for e in first + rest]
    logged = daemon.events(run["id"])
    assert seqs == [e["seq"] for e in logged]  # every event, once, in order
    assert [e["event"] for e in first + rest] == [e["type"] for e in logged]
    assert rest[-1]["event"] == "run.completed"  # and the stream ended after the terminal event
    assert read_sse(url, headers={"Last-Event-ID": rest[-1]["id"]}) == []
    assert daemon.request("GET", "/api/v1/workflow-runs/nope/stream").status_code == 404


def test_many_sse_clients_see_the_same_ordered_events(daemon: Daemon) -> None:
    daemon.add_workflow("loop", FOREACH)
    hold = threading.Event()
    daemon.agent_server.behave("worker", hold=hold)
    daemon.start()
    run = daemon.start_run("loop", {"items": list(range(5))})
    url = f"{daemon.base}/api/v1/workflow-runs/{run['id']}/stream"
    clients = 200
    connected = 0
    latencies: list[float] = []

    async def one(client: httpx.AsyncClient) -> list[tuple[str, str]]:
        nonlocal connected
        seen: list[tuple[str, str]] = []
        async with client.stream("GET", url) as resp:
            connected += 1
            event: dict[str, str] = {}
            async for line in resp.aiter_lines():
                if not line:
                    if "event" in event:
                        seen.append((event["id"], event["event"]))
                        if event["event"] == "step.succeeded":
                            sent = json.loads(event["data"])["time"]
                            latencies.append(time.time() - _ts(sent))
                        if event["event"] == "run.completed":
                            return seen
                    event = {}
                elif not line.startswith(":"):
                    k, _, v = line.partition(":")
                    event[k] = v.strip()
        return seen

    async def main() -> list[list[tuple[str, str]]]:
        limits = httpx.Limits(max_connections=clients + 10)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            tasks = [asyncio.create_task(one(client)) for _ in range(clients)]
            for _ in range(400):
                if connected == clients:
                    break
                await asyncio.sleep(0.05)
            hold.set()
            return await asyncio.wait_for(asyncio.gather(*tasks), 60)

    results = asyncio.run(main())
    logged = [(str(e["seq"]), e["type"]) for e in daemon.events(run["id"])]
    assert all(r == logged for r in results)
    assert len(latencies) >= clients
    latencies.sort()
    print(f"SSE commit-to-client: p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms over {len(latencies)} deliveries")


def _ts(text: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_global_stream_carries_approval_events(authed: Daemon) -> None:
    authed.add_workflow("gated", gated())
    authed.start()
    got: list[dict] = []

    def listen() -> None:
        got.extend(read_sse(f"{authed.base}/api/v1/workflow-runs/stream?workflowId=gated", headers=ALICE, limit=8))

    thread = threading.Thread(target=listen)
    thread.start()
    time.sleep(0.5)
    run = start(authed, "gated")
    thread.join(20)
    types = [e["event"] for e in got]
    assert "approval.requested" in types and all(e["data"]["runId"] == run["id"] for e in got)
    ids = [int(e["id"]) for e in got]
    assert ids == sorted(ids)
    resumed = read_sse(f"{authed.base}/api/v1/workflow-runs/stream", headers={**ALICE, "Last-Event-ID": str(ids[2])}, limit=3)
    assert [int(e["id"]) for e in resumed] == ids[3:6]
    assert types[-1] == "approval.requested"


def test_cli_approvals_and_run_control(authed: Daemon) -> None:
    import subprocess
    import sys

    authed.add_workflow("gated", gated())
    authed.add_workflow("signals", SIGNALS)
    authed.start()
    cli = [sys.executable, "-m", "station_wf.cli"]
    env = {"PATH": "/usr/bin:/bin", "STATION_API_TOKEN": "bob-token-0123456789ab"}

    def run_cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, *args, "--url", authed.base], capture_output=True, text=True, timeout=60, env=env)

    run = start(authed, "gated")
    aid = pending_approval(authed, run["id"])["id"]
    listed = run_cli("approvals", "list")
    assert listed.returncode == 0 and json.loads(listed.stdout)["approvals"][0]["id"] == aid
    ok = run_cli("approvals", "approve", aid, "--comment", "fine")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["approval"]["decidedBy"] == "bob"
    again = run_cli("approvals", "reject", aid)
    assert again.returncode == 1 and again.stderr.startswith("station-wf: 409 conflict: approval is already approved")

    sig_run = start(authed, "signals")
    wait_run(authed, sig_run["id"], "WAITING_SIGNAL")
    assert run_cli("runs", "pause", sig_run["id"]).returncode == 0
    assert get_run(authed, sig_run["id"])["status"] == "PAUSED"
    assert run_cli("runs", "resume", sig_run["id"]).returncode == 0
    sent = run_cli("runs", "signal", sig_run["id"], "--name", "go", "--payload", '{"x": 1}')
    assert sent.returncode == 0 and json.loads(sent.stdout)["signal"]["consumed"] is True
    cancelled = run_cli("runs", "cancel", sig_run["id"], "--reason", "enough")
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["status"] == "CANCELLED"
    shown = run_cli("runs", "show", sig_run["id"])
    assert json.loads(shown.stdout)["context"]["got"] == {"first": {"x": 1}}
