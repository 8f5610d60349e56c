"""Issue 11 end to end, against the real daemon: templated approvers never mean "anyone" or a list of
characters, hostile definitions are refused at the door with a 4xx and nothing stored, and hostile agent
answers fail their step while the daemon keeps serving."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.conftest import Daemon

TEMPLATED = """
id: templated
start: ask
states:
  - name: ask
    type: operation
    action: human.approval
    input:
      message: "ok?"
      approvers: "{{ who }}"
    resultPath: decision
    end: true
"""

PLAIN = """
id: plain
start: hi
states:
  - { name: hi, type: operation, action: agent.run, input: { agent: echo, task: "hello" }, end: true }
"""


def as_principal(d: Daemon, name: str, path: str) -> httpx.Response:
    return httpx.post(d.base + path, headers={"X-Station-Principal": name}, json={}, timeout=15)


def test_templated_approvers_are_checked_after_rendering(daemon: Daemon) -> None:
    daemon.add_workflow("templated", TEMPLATED)
    daemon.start()
    for who in ("user:alice", "", [], [1], None, ["user:alice", "nobody here"]):
        run = daemon.start_run("templated", {"who": who})
        failed = daemon.wait_status(run["id"], "FAILED")
        assert failed["error"]["stateName"] == "ask" and failed["error"]["type"] == "validation", failed["error"]
        assert "approvers" in failed["error"]["message"]
        approvals = daemon.request("GET", f"/api/v1/workflow-runs/{run['id']}/approvals").json()["approvals"]
        assert approvals == []  # nobody could ever decide it
    run = daemon.start_run("templated", {"who": ["user:alice"]})
    daemon.wait_status(run["id"], "WAITING_APPROVAL")
    [approval] = daemon.request("GET", f"/api/v1/workflow-runs/{run['id']}/approvals").json()["approvals"]
    assert approval["approvers"] == ["user:alice"]
    base = f"/api/v1/workflow-runs/{run['id']}/approvals/{approval['id']}"
    assert as_principal(daemon, "e", base + "/approve").status_code == 403  # no list of characters
    assert as_principal(daemon, "carol", base + "/approve").status_code == 403  # not "anyone"
    assert as_principal(daemon, "alice", base + "/approve").status_code == 200
    done = daemon.wait_status(run["id"], "COMPLETED")
    assert done["context"]["decision"]["decidedBy"] == "alice"


def nested_parallel(levels: int) -> dict[str, Any]:
    state: dict[str, Any] = {"name": "leaf", "type": "inject", "data": {}, "end": True}
    for i in range(levels):
        state = {"name": f"p{i}", "type": "parallel", "end": True, "branches": [{"name": "b", "states": [state]}]}
    return {"id": "deep", "start": state["name"], "states": [state]}


def transform(wf_id: str, expression: str) -> dict[str, Any]:
    return {"id": wf_id, "start": "t", "states": [{"name": "t", "type": "transform", "expression": expression,
                                                    "end": True}]}


def merge_bomb(levels: int) -> str:
    lines = ["x0: &x0 {k0: 1}"]
    lines += [f"x{i}: &x{i} {{<<: [*x{i - 1}, *x{i - 1}], k{i}: {i}}}" for i in range(1, levels)]
    lines.append(f"id: mb\nstart: s\nstates:\n  - {{ name: s, type: inject, data: *x{levels - 1}, end: true }}")
    return "\n".join(lines)


def test_hostile_definitions_are_refused_at_the_door_and_nothing_is_stored(daemon: Daemon) -> None:
    daemon.add_agent("echo")
    daemon.add_workflow("plain", PLAIN)
    daemon.start()
    hostile: list[dict[str, Any]] = [
        transform("segv1", "[" * 3000 + "1" + "]" * 3000 + " != 0"),
        transform("segv2", "+".join(["1"] * 5000)),
        transform("comment", "#"),
        nested_parallel(200),
        {"id": "..", "start": "s", "states": [{"name": "s", "type": "inject", "data": {}, "end": True}]},
        {"id": "cron", "start": "s", "schedules": [{"cron": "99 * * * *"}],
         "states": [{"name": "s", "type": "inject", "data": {}, "end": True}]},
        {"id": "rp", "start": "s", "states": [{"name": "s", "type": "transform", "expression": "1",
                                               "resultPath": "workflow", "end": True}]},
        {"id": "sleepy", "start": "s", "states": [{"name": "s", "type": "sleep", "duration": "9" * 5000, "end": True}]},
    ]
    before = daemon.request("GET", "/api/v1/workflows").json()["workflows"]
    for body in hostile:
        checked = daemon.request("POST", "/api/v1/workflows/validate", content=json.dumps(body),
                                 headers={"content-type": "application/json"})
        if checked.status_code == 400:  # a JSON body nested past the door's limit never reaches the loader
            assert checked.json()["error"]["code"] == "malformed_json", checked.text
        else:
            assert checked.status_code == 200 and checked.json()["valid"] is False, checked.text
        created = daemon.request("POST", "/api/v1/workflows", json=body)
        assert 400 <= created.status_code < 500, (body.get("id"), created.status_code, created.text[:300])
        assert created.json()["error"]["code"]
    bomb = httpx.post(daemon.base + "/api/v1/workflows/validate", content=merge_bomb(40),
                      headers={"content-type": "application/yaml"}, timeout=5)
    assert bomb.status_code == 200 and "merge keys" in bomb.json()["errors"][0]["message"]
    assert daemon.request("GET", "/api/v1/workflows").json()["workflows"] == before
    assert daemon.request("GET", "/healthz").status_code == 200
    run = daemon.start_run("plain")
    assert daemon.wait_status(run["id"], "COMPLETED")["status"] == "COMPLETED"


def test_hostile_agent_answers_fail_the_step_and_the_daemon_keeps_serving(daemon_factory: Any) -> None:
    daemon = daemon_factory(env={"STATION_AGENT_MAX_RESPONSE_BYTES": "4096"})
    server = daemon.agent_server
    daemon.add_agent("deep")
    daemon.add_agent("big")
    daemon.add_agent("echo")
    deep: Any = 1
    for _ in range(500):
        deep = {"a": deep}
    server.behave("deep", reply=deep)
    server.behave("big", reply={"text": "x" * 10_000})
    for name in ("deep", "big", "echo"):
        daemon.add_workflow(name, PLAIN.replace("plain", name).replace("agent: echo", f"agent: {name}"))
    daemon.start()
    failed = daemon.wait_status(daemon.start_run("deep")["id"], "FAILED")
    assert failed["error"]["type"] == "validation" and "nested more than 64 levels" in failed["error"]["message"]
    failed = daemon.wait_status(daemon.start_run("big")["id"], "FAILED")
    assert failed["error"]["type"] == "response_too_large" and "4096 bytes" in failed["error"]["message"]
    assert daemon.wait_status(daemon.start_run("echo")["id"], "COMPLETED")["status"] == "COMPLETED"
    assert daemon.proc is not None and daemon.proc.poll() is None
