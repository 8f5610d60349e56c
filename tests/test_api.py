"""The REST API against a real daemon: happy path, events, pinning, paging, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx

from tests.conftest import Daemon, wait_until

PIPELINE = """
id: pipeline
version: "1.0"
name: Pipeline
inputSchema:
  type: object
  properties:
    who: { type: string, minLength: 2 }
    count: { type: integer, minimum: 1 }
  required: [who]
  additionalProperties: false
start: prep
states:
  - name: prep
    type: inject
    data: { region: eu }
    next: ask
  - name: ask
    type: operation
    action: agent.run
    input:
      agent: worker
      task: "greet {{ who }} in {{ region }}"
      variables: { who: "{{ who }}" }
    resultPath: steps.answer
    end: true
"""


def test_happy_path_context_and_events(daemon: Daemon) -> None:
    daemon.add_workflow("pipeline", PIPELINE)
    daemon.start()
    daemon.agent_server.behave("worker", reply={"greeting": "hi Ada", "score": 3})

    run = daemon.start_run("pipeline", {"who": "Ada"})
    assert run["status"] == "RUNNING" and run["workflowVersion"] == 1  # started in its POST, its agent step queued
    done = daemon.wait_status(run["id"])

    ctx = done["context"]
    assert ctx["who"] == "Ada" and ctx["region"] == "eu"
    assert ctx["steps"]["answer"] == {"greeting": "hi Ada", "score": 3}
    assert ctx["workflow"]["id"] == "pipeline" and ctx["workflow"]["runId"] == run["id"]
    assert [s["stateName"] for s in done["steps"]] == ["prep", "ask"]
    assert all(s["status"] == "SUCCEEDED" and s["attempt"] == 1 for s in done["steps"])
    assert done["currentSteps"] == [] and done["completedAt"]

    events = daemon.events(run["id"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["type"] for e in events] == [
        "run.created", "run.started",
        "step.scheduled", "step.started", "step.succeeded",
        "step.scheduled", "step.started", "step.succeeded",
        "run.completed",
    ]
    started = [e for e in events if e["type"] == "step.started"][1]
    assert started["payload"]["input"] == {"agent": "worker", "task": "greet Ada in eu", "variables": {"who": "Ada"}}

    (call,) = daemon.agent_server.calls_for("worker")
    ask = done["steps"][1]
    assert call.idempotency_key == f"{run['id']}:{ask['stepId']}:1" == ask["idempotencyKey"]
    assert call.body["runId"] == run["id"] and call.body["stepId"] == ask["stepId"] and call.body["attempt"] == 1
    assert call.body["task"] == "greet Ada in eu" and call.body["variables"] == {"who": "Ada"}

    # The event log alone rebuilds the context (audit guarantee).
    from station_wf.core.history import rebuild_context
    assert rebuild_context([(e["type"], e["payload"]) for e in events]) == ctx

    # Paging the events.
    page = daemon.request("GET", f"/api/v1/workflow-runs/{run['id']}/events", params={"afterSeq": 2, "limit": 3}).json()
    assert [e["seq"] for e in page["events"]] == [3, 4, 5] and page["nextAfterSeq"] == 5


def test_agent_error_fails_the_run_with_status_and_body(daemon: Daemon) -> None:
    daemon.add_workflow("pipeline", PIPELINE)
    daemon.start()
    daemon.agent_server.behave("worker", status=502, reply={"oops": "upstream"})
    run = daemon.start_run("pipeline", {"who": "Bob"})
    failed = daemon.wait_status(run["id"], "FAILED")
    assert failed["error"]["type"] == "agent_error" and failed["error"]["stateName"] == "ask"
    assert failed["error"]["details"]["status"] == 502 and "upstream" in failed["error"]["details"]["body"]
    assert failed["steps"][1]["status"] == "FAILED"
    assert daemon.events(run["id"])[-1]["type"] == "run.failed"


def test_workflow_crud_versions_and_pinning(daemon: Daemon) -> None:
    daemon.start()
    body = {
        "id": "api-made", "start": "one",
        "states": [
            {"name": "one", "type": "operation", "action": "agent.run",
             "input": {"agent": "worker", "task": "v1"}, "end": True},
        ],
    }
    created = daemon.request("POST", "/api/v1/workflows", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["version"] == 1 and created.json()["source"] == "api"
    assert daemon.request("POST", "/api/v1/workflows", json=body).status_code == 409

    hold = daemon.agent_server.behave("worker").hold = __import__("threading").Event()
    run = daemon.start_run("api-made")
    wait_until(lambda: daemon.agent_server.calls_for("worker"), what="first call")

    body["states"][0]["input"]["task"] = "v2"
    updated = daemon.request("PUT", "/api/v1/workflows/api-made", json=body)
    assert updated.status_code == 200 and updated.json()["version"] == 2
    versions = daemon.request("GET", "/api/v1/workflows/api-made/versions").json()["versions"]
    assert [v["version"] for v in versions] == [2, 1]
    assert daemon.request("GET", "/api/v1/workflows/api-made", params={"version": 1}).json()["definition"]["states"]["one"]["input"]["task"] == "v1"

    hold.set()
    done = daemon.wait_status(run["id"])
    assert done["workflowVersion"] == 1
    assert done["steps"][0]["input"]["task"] == "v1"  # pinned: the edit did not reach the running run

    second = daemon.wait_status(daemon.start_run("api-made")["id"])
    assert second["workflowVersion"] == 2 and second["steps"][0]["input"]["task"] == "v2"

    deleted = daemon.request("DELETE", "/api/v1/workflows/api-made")
    assert deleted.status_code == 200 and deleted.json()["status"] == "disabled"
    refused = daemon.request("POST", "/api/v1/workflow-runs", json={"workflowId": "api-made", "input": {}})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "workflow_disabled"
    # History stays readable.
    assert daemon.run(run["id"])["status"] == "COMPLETED"
    listing = daemon.request("GET", "/api/v1/workflows").json()["workflows"]
    assert [(w["id"], w["status"], w["version"]) for w in listing] == [("api-made", "disabled", 2)]


def test_list_runs_pagination_and_filters(daemon: Daemon) -> None:
    daemon.add_workflow("pipeline", PIPELINE)
    daemon.start()
    ids = [daemon.start_run("pipeline", {"who": f"user{i}"})["id"] for i in range(7)]
    for rid in ids:
        daemon.wait_status(rid)
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params = {"limit": 3, "workflowId": "pipeline"}
        if cursor:
            params["cursor"] = cursor
        page = daemon.request("GET", "/api/v1/workflow-runs", params=params).json()
        seen += [r["id"] for r in page["runs"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    assert daemon.request("GET", "/api/v1/workflow-runs", params={"status": "FAILED"}).json()["runs"] == []
    assert len(daemon.request("GET", "/api/v1/workflow-runs", params={"status": "COMPLETED"}).json()["runs"]) == 7
    assert daemon.request("GET", "/api/v1/workflow-runs", params={"limit": 1001}).status_code == 400
    assert daemon.request("GET", "/api/v1/workflow-runs", params={"cursor": "@@@"}).status_code == 400


def _error(resp: httpx.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code, err
    assert err["request_id"] and resp.headers["X-Request-Id"] == err["request_id"]
    assert err["message"]
    return err


def _snapshot(daemon: Daemon) -> tuple:
    workflows = daemon.request("GET", "/api/v1/workflows").json()
    runs = daemon.request("GET", "/api/v1/workflow-runs", params={"limit": 1000}).json()
    return json.dumps(workflows, sort_keys=True), json.dumps(runs, sort_keys=True)


def test_bad_input_is_a_clear_error_and_changes_nothing(daemon: Daemon) -> None:
    daemon.add_workflow("pipeline", PIPELINE)
    daemon.start()
    daemon.wait_status(daemon.start_run("pipeline", {"who": "Ada"})["id"])
    before = _snapshot(daemon)

    err = _error(daemon.request("POST", "/api/v1/workflow-runs", json={"workflowId": "pipeline", "input": {"who": "A", "count": 0, "x": 1}}),
                 400, "invalid_input")
    paths = sorted(p["path"] for p in err["details"])
    assert paths == ["$", "$.count", "$.who"], err["details"]  # every violation listed

    err = _error(daemon.request("POST", "/api/v1/workflow-runs", json={"workflowId": "pipeline", "input": {"who": "Ada", "steps": {}}}),
                 400, "invalid_input")
    assert any(p["path"] == "$.steps" and p["validator"] == "reserved" for p in err["details"])

    _error(daemon.request("POST", "/api/v1/workflow-runs", content=b'{"workflowId": "pipeline", "input": {',
                          headers={"Content-Type": "application/json"}), 400, "malformed_json")
    _error(daemon.request("POST", "/api/v1/workflow-runs", json={"workflowId": "nope", "input": {}}), 404, "not_found")
    _error(daemon.request("POST", "/api/v1/workflow-runs", json={"workflowId": "pipeline", "input": {}, "extra": 1}), 400, "invalid_request")
    _error(daemon.request("GET", "/api/v1/workflow-runs/00000000-0000-0000-0000-000000000000"), 404, "not_found")
    _error(daemon.request("GET", "/api/v1/workflow-runs/nope/events"), 404, "not_found")
    _error(daemon.request("GET", "/api/v1/workflows/nope"), 404, "not_found")
    _error(daemon.request("GET", "/api/v1/nothing-here"), 404, "not_found")

    big = {"workflowId": "pipeline", "input": {"who": "x" * (1 << 20)}}
    _error(daemon.request("POST", "/api/v1/workflow-runs", json=big), 413, "payload_too_large")

    def chunks():
        for _ in range(20):
            yield b" " * 65536
    _error(daemon.request("POST", "/api/v1/workflow-runs", content=chunks(),
                           headers={"Content-Type": "application/json"}), 413, "payload_too_large")

    bad_defn = {"id": "broken", "start": "a", "states": [{"name": "a", "type": "inject", "data": {}, "next": "missing"}]}
    err = _error(daemon.request("POST", "/api/v1/workflows", json=bad_defn), 422, "invalid_definition")
    assert any("missing" in p for p in err["details"]), err
    err = _error(daemon.request("PUT", "/api/v1/workflows/pipeline", json={**bad_defn, "id": "pipeline"}), 422, "invalid_definition")

    assert _snapshot(daemon) == before


def test_cli_run_wait_and_runs(daemon: Daemon) -> None:
    daemon.add_workflow("pipeline", PIPELINE)
    daemon.start()
    cli = [sys.executable, "-m", "station_wf.cli"]
    out = subprocess.run([*cli, "run", "pipeline", "--input", '{"who": "Cli"}', "--wait", "--url", daemon.base],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout)
    assert run["status"] == "COMPLETED" and run["context"]["who"] == "Cli"

    bad = subprocess.run([*cli, "run", "pipeline", "--input", '{"who": 1}', "--url", daemon.base],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stderr.startswith("station-wf: 400 invalid_input:") and "\n" == bad.stderr[-1] and bad.stderr.count("\n") == 1

    listed = subprocess.run([*cli, "runs", "list", "--workflow", "pipeline", "--url", daemon.base], capture_output=True, text=True, timeout=60)
    assert json.loads(listed.stdout)["runs"][0]["id"] == run["id"]


def test_health_and_readiness(daemon: Daemon) -> None:
    daemon.start()
    health = daemon.request("GET", "/healthz").json()
    assert health["status"] == "ok" and health["writer"]["ok"] is True and health["writer"]["failuresInRow"] == 0
    ready = daemon.request("GET", "/readyz").json()
    assert ready == {"status": "ready", "checks": {"sqlite": True, "nats": True, "consumer": True}}


def test_validate_endpoint_and_schema(daemon: Daemon) -> None:
    daemon.start()
    bad = "id: v\nstart: a\nstates:\n  - name: a\n    type: inject\n    data: {}\n    next: nowhere\n"
    r = daemon.request("POST", "/api/v1/workflows/validate", content=bad.encode(), headers={"Content-Type": "application/yaml"})
    assert r.status_code == 200 and r.json()["valid"] is False
    (err,) = r.json()["errors"]
    assert err["line"] == 7 and err["path"] == "states[0].next" and "nowhere" in err["message"]
    good = daemon.request("POST", "/api/v1/workflows/validate", content=PIPELINE.encode())
    body = good.json()
    assert {k: body[k] for k in ("valid", "errors", "workflowId")} == {"valid": True, "errors": [], "workflowId": "pipeline"}
    assert body["dialect"] == "prd" and body["warnings"] == []  # docs/dialects.md
    schema = daemon.request("GET", "/api/v1/workflows/schema").json()
    assert schema["$schema"].startswith("https://json-schema.org/draft/2020-12")
    assert daemon.request("GET", "/api/v1/workflows").json()["workflows"] == []  # validate stored nothing
