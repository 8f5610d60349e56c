"""A run's life after it ends, and runs that start runs, through the real daemon: redrive in place
(agents counted: only the failed steps are called again), re-run, redrive across a kill -9, child
workflows waited for or not, a child's failure, a parent's cancel reaching its child's agent call,
recursion refused at load and bounded at run time, continue-as-new."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from tests.conftest import Daemon, wait_until

LINEAR = """
id: linear
start: a
states:
  - { name: a, type: operation, action: agent.run, input: { agent: worker, task: a }, next: b }
  - { name: b, type: operation, action: agent.run, input: { agent: flaky, task: b }, next: c }
  - { name: c, type: operation, action: agent.run, input: { agent: worker, task: c }, end: true }
"""

FAN = """
id: fan
start: par
states:
  - name: par
    type: parallel
    branches:
      - name: ok
        states: [ { name: p_ok, type: operation, action: agent.run, input: { agent: worker, task: p_ok }, end: true } ]
      - name: shaky
        states: [ { name: p_shaky, type: operation, action: agent.run, input: { agent: flaky, task: p_shaky }, end: true } ]
    next: each
  - name: each
    type: foreach
    itemsPath: xs
    iterator:
      states:
        - name: route
          type: switch
          conditions: [ { if: "item == 'bad'", next: shaky } ]
          defaultNext: fine
        - { name: fine, type: operation, action: agent.run, input: { agent: worker, task: "{{ item }}" }, end: true }
        - { name: shaky, type: operation, action: agent.run, input: { agent: flaky2, task: "{{ item }}" }, end: true }
    end: true
"""


LIMITED = """
id: limited
concurrency: { limit: 1 }
start: a
states:
  - { name: a, type: operation, action: agent.run, input: { agent: lim, task: a }, end: true }
"""


def _tasks(daemon: Daemon, agent: str) -> Counter[str]:
    return Counter(c.body.get("task") for c in daemon.agent_server.calls_for(agent))


def _redrive(daemon: Daemon, run_id: str, expect: int = 200) -> dict[str, Any]:
    resp = daemon.request("POST", f"/api/v1/workflow-runs/{run_id}/redrive", json={})
    assert resp.status_code == expect, resp.text
    return resp.json()


def _gap_free(daemon: Daemon, run_id: str) -> list[dict[str, Any]]:
    events = daemon.events(run_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    return events


def test_redrive_runs_only_the_failed_steps_at_every_level_and_rerun_starts_afresh(daemon: Daemon) -> None:
    for agent in ("flaky", "flaky2"):
        daemon.add_agent(agent)
    daemon.agent_server.behave("flaky", fail_first=1)
    daemon.agent_server.behave("flaky2", fail_first=1)
    daemon.add_workflow("linear", LINEAR)
    daemon.add_workflow("fan", FAN)
    daemon.add_agent("lim")
    daemon.add_workflow("limited", LIMITED)
    daemon.start()

    # a linear run: b fails; a redrive calls b again, then c; a never again
    run = daemon.start_run("linear")
    failed = daemon.wait_status(run["id"], "FAILED")
    assert _tasks(daemon, "worker") == {"a": 1} and _tasks(daemon, "flaky") == {"b": 1}
    body = _redrive(daemon, run["id"])
    assert body["run"]["redriveCount"] == 1 and body["run"]["error"] is None
    done = daemon.wait_status(run["id"], "COMPLETED")
    assert _tasks(daemon, "worker") == {"a": 1, "c": 1} and _tasks(daemon, "flaky") == {"b": 2}
    assert done["context"]["steps"]["a"] == failed["context"]["steps"]["a"]  # the kept result
    b_attempts = [(s["attempt"], s["status"]) for s in done["steps"] if s["stateName"] == "b"]
    assert b_attempts == [(1, "FAILED"), (2, "SUCCEEDED")]
    events = _gap_free(daemon, run["id"])
    redriven = [e for e in events if e["type"] == "run.redriven"]
    assert len(redriven) == 1 and redriven[0]["actor"] and redriven[0]["payload"]["steps"][0]["stateName"] == "b"
    again = daemon.request("POST", f"/api/v1/workflow-runs/{run['id']}/redrive", json={})
    assert again.status_code == 409 and "COMPLETED" in again.json()["error"]["message"]

    # re-run: a new run of the same input and version, recording where it came from
    resp = daemon.request("POST", f"/api/v1/workflow-runs/{run['id']}/rerun", json={})
    assert resp.status_code == 201, resp.text
    rerun = resp.json()["run"]
    assert rerun["id"] != run["id"] and rerun["rerunOf"] == run["id"] and rerun["workflowVersion"] == run["workflowVersion"]
    daemon.wait_status(rerun["id"], "COMPLETED")
    assert _tasks(daemon, "worker") == {"a": 2, "c": 2}
    edited = daemon.request("POST", f"/api/v1/workflow-runs/{run['id']}/rerun", json={"input": {"x": 1}, "version": "latest"})
    assert edited.status_code == 201 and edited.json()["run"]["input"] == {"x": 1}
    assert daemon.request("POST", f"/api/v1/workflow-runs/{run['id']}/rerun", json={"bogus": 1}).status_code == 400
    assert daemon.request("POST", "/api/v1/workflow-runs/nope/redrive", json={}).status_code == 404

    # a parallel branch, then a foreach iteration: each redrive re-executes only what failed
    daemon.agent_server.behave("flaky", fail_first=1)
    run = daemon.start_run("fan", {"xs": ["x", "bad", "y"]})
    failed = daemon.wait_status(run["id"], "FAILED")
    assert failed["error"]["type"] == "branch_failed" and _tasks(daemon, "flaky")["p_shaky"] == 1
    assert _tasks(daemon, "flaky2") == {}
    _redrive(daemon, run["id"])
    failed = daemon.wait_status(run["id"], "FAILED")
    assert failed["error"]["type"] == "iteration_failed"
    assert _tasks(daemon, "flaky")["p_shaky"] == 2 and _tasks(daemon, "flaky2") == {"bad": 1}
    _redrive(daemon, run["id"])
    done = daemon.wait_status(run["id"], "COMPLETED")
    assert done["redriveCount"] == 2
    worker = _tasks(daemon, "worker")
    assert (worker["p_ok"], worker["x"], worker["y"]) == (1, 1, 1)  # none of them again
    assert _tasks(daemon, "flaky2") == {"bad": 2}
    assert len(done["context"]["steps"]["each"]) == 3
    _gap_free(daemon, run["id"])

    # a redriven run takes a concurrency slot again, or is refused while none is free (never over the limit)
    daemon.agent_server.behave("lim", status=500)
    first = daemon.start_run("limited")
    daemon.wait_status(first["id"], "FAILED")
    hold = threading.Event()
    daemon.agent_server.behave("lim", hold=hold)
    second = daemon.start_run("limited")
    wait_until(lambda: len(daemon.agent_server.calls_for("lim")) >= 2, what="the second run's call")
    refused = daemon.request("POST", f"/api/v1/workflow-runs/{first['id']}/redrive", json={})
    assert refused.status_code == 409 and "concurrency limit" in refused.json()["error"]["message"]
    hold.set()
    daemon.wait_status(second["id"], "COMPLETED")
    _redrive(daemon, first["id"])
    daemon.wait_status(first["id"], "COMPLETED")


def test_redrive_survives_a_kill_9_during_the_redriven_step(daemon: Daemon) -> None:
    daemon.add_agent("flaky")
    daemon.agent_server.behave("flaky", fail_first=1)
    daemon.add_workflow("linear", LINEAR)
    daemon.start()
    run = daemon.start_run("linear")
    daemon.wait_status(run["id"], "FAILED")
    hold = threading.Event()
    daemon.agent_server.behave("flaky", hold=hold)
    _redrive(daemon, run["id"])
    wait_until(lambda: len(daemon.agent_server.calls_for("flaky")) >= 2, what="the redriven call")
    daemon.kill()
    daemon.start()
    hold.set()
    done = daemon.wait_status(run["id"], "COMPLETED", timeout=45)
    assert _tasks(daemon, "worker") == {"a": 1, "c": 1}
    keys = [c.idempotency_key for c in daemon.agent_server.calls_for("flaky")]
    assert keys[0].endswith(":1") and set(keys[1:]) == {keys[1]} and keys[1].endswith(":2")  # one attempt, redelivered
    assert done["redriveCount"] == 1
    _gap_free(daemon, run["id"])


CHILD = """
id: child
inputSchema: { type: object, properties: { n: { type: integer } }, required: [n] }
start: work
states:
  - { name: work, type: operation, action: agent.run, input: { agent: "{{ agent }}", task: "n={{ n }}" }, end: true }
"""


def _parent(name: str, child_input: str, wait: bool = True) -> str:
    return f"""
id: {name}
start: call
states:
  - {{ name: call, type: operation, action: workflow.run, input: {{ workflow: child, input: {child_input}, wait: {str(wait).lower()} }}, next: after }}
  - {{ name: after, type: inject, data: {{ after: true }}, end: true }}
"""


def test_child_workflows_wait_detach_fail_and_are_cancelled_with_their_parent(daemon: Daemon) -> None:
    for agent in ("bad", "held"):
        daemon.add_agent(agent)
    daemon.agent_server.behave("bad", status=500)
    hold = threading.Event()
    daemon.agent_server.behave("held", hold=hold)
    daemon.add_workflow("child", CHILD.replace('"{{ agent }}"', "\"{{ ctx.get('agent', 'worker') }}\""))
    daemon.add_workflow("waits", _parent("waits", "{ n: 1 }"))
    daemon.add_workflow("fails", _parent("fails", "{ n: 2, agent: bad }"))
    daemon.add_workflow("detached", _parent("detached", "{ n: 3, agent: held }", wait=False))
    daemon.add_workflow("holds", _parent("holds", "{ n: 4, agent: held }"))
    daemon.add_workflow("mistyped", _parent("mistyped", "{ n: not-a-number }"))
    daemon.add_workflow("racer", RACER)
    daemon.add_agent("flaky")
    daemon.agent_server.behave("flaky", fail_first=1)
    daemon.add_workflow("two_step", TWO_STEP)
    daemon.add_workflow("calls_two", _parent("calls_two", "{ n: 6 }").replace("workflow: child", "workflow: two_step"))
    daemon.start()

    # wait: true -> the child's result is the step's result; each links to the other
    run = daemon.start_run("waits")
    done = daemon.wait_status(run["id"], "COMPLETED")
    call = done["context"]["steps"]["call"]
    assert call["status"] == "COMPLETED" and call["output"]["steps"]["work"]["task"] == "n=1"
    child = daemon.run(call["runId"])
    assert child["parent"]["runId"] == run["id"] and child["depth"] == 1 and child["workflowId"] == "child"
    kids = daemon.request("GET", f"/api/v1/workflow-runs/{run['id']}/children").json()["runs"]
    assert [k["id"] for k in kids] == [call["runId"]]
    listed = daemon.request("GET", "/api/v1/workflow-runs", params={"parentRunId": run["id"]}).json()["runs"]
    assert [r["id"] for r in listed] == [call["runId"]]
    assert len(daemon.agent_server.calls_for("worker")) == 1  # one child, whatever the redeliveries

    # the child fails -> the parent step fails with the child's error
    run = daemon.start_run("fails")
    failed = daemon.wait_status(run["id"], "FAILED")
    assert failed["error"]["type"] == "child_failed" and failed["error"]["status"] == "FAILED"

    # an input the child's schema refuses fails the step without starting a child
    run = daemon.start_run("mistyped")
    failed = daemon.wait_status(run["id"], "FAILED")
    assert failed["error"]["type"] == "child_workflow" and "inputSchema" in failed["error"]["message"]
    assert daemon.request("GET", f"/api/v1/workflow-runs/{run['id']}/children").json()["runs"] == []

    # redriving the parent continues its failed child in place: the child's succeeded step is not run again
    run = daemon.start_run("calls_two")
    daemon.wait_status(run["id"], "FAILED")
    kid_id = daemon.request("GET", f"/api/v1/workflow-runs/{run['id']}/children").json()["runs"][0]["id"]
    refused = daemon.request("POST", f"/api/v1/workflow-runs/{kid_id}/redrive", json={})
    assert refused.status_code == 409 and run["id"] in refused.json()["error"]["message"]
    _redrive(daemon, run["id"])
    done = daemon.wait_status(run["id"], "COMPLETED")
    assert done["context"]["steps"]["call"]["runId"] == kid_id and daemon.run(kid_id)["redriveCount"] == 1
    assert _tasks(daemon, "worker")["first"] == 1 and _tasks(daemon, "flaky") == {"second": 2}

    # wait: false -> the parent goes on at once; the child outlives it
    detached = daemon.start_run("detached")
    done = daemon.wait_status(detached["id"], "COMPLETED")
    loose = done["context"]["steps"]["call"]["runId"]

    # a parent cancelled while its child's agent call is in flight: the child is cancelled, the call cut
    run = daemon.start_run("holds")
    wait_until(lambda: len(daemon.agent_server.calls_for("held")) >= 2, what="both held agent calls")
    waited = daemon.request("GET", f"/api/v1/workflow-runs/{run['id']}/children").json()["runs"][0]["id"]
    assert daemon.request("POST", f"/api/v1/workflow-runs/{run['id']}/pause").status_code == 200
    assert daemon.run(waited)["status"] == "PAUSED"  # pause reaches the child, and so does resume
    assert daemon.request("POST", f"/api/v1/workflow-runs/{run['id']}/resume").status_code == 200
    assert daemon.run(waited)["status"] == "RUNNING"
    resp = daemon.request("POST", f"/api/v1/workflow-runs/{run['id']}/cancel", json={"reason": "enough"})
    assert resp.status_code == 200, resp.text
    child = daemon.wait_status(waited, "CANCELLED")
    assert "parent" in child["error"]["message"]
    wait_until(lambda: daemon.agent_server.behaviours["held"].disconnects >= 1, what="the child's agent call cut off")
    assert daemon.run(loose)["status"] == "RUNNING"  # the detached one is not the cancelled parent's

    # a parent step that stops waiting (a parallel's join satisfied by the other branch) cancels its child
    run = daemon.start_run("racer")
    daemon.wait_status(run["id"], "COMPLETED")
    raced = daemon.request("GET", f"/api/v1/workflow-runs/{run['id']}/children").json()["runs"][0]["id"]
    assert daemon.wait_status(raced, "CANCELLED")["error"]["message"].startswith("its parent step ended")
    hold.set()
    daemon.wait_status(loose, "COMPLETED")


TWO_STEP = """
id: two_step
start: one
states:
  - { name: one, type: operation, action: agent.run, input: { agent: worker, task: first }, next: two }
  - { name: two, type: operation, action: agent.run, input: { agent: flaky, task: second }, end: true }
"""

RACER = """
id: racer
start: race
states:
  - name: race
    type: parallel
    join: { mode: any }
    branches:
      - name: slow
        states: [ { name: call, type: operation, action: workflow.run, input: { workflow: child, input: { n: 5, agent: held } }, end: true } ]
      - name: fast
        states: [ { name: quick, type: sleep, duration: 1s, end: true } ]
    end: true
"""

RECURSIVE = """
id: {name}
start: call
states:
  - {{ name: call, type: operation, action: workflow.run, input: {{ workflow: {target}{extra} }}, end: true }}
"""

COUNTER = """
id: counter
start: check
states:
  - name: check
    type: switch
    conditions: [ { if: "n < 3", next: again } ]
    defaultNext: done
  - { name: again, type: operation, action: workflow.continueAsNew, input: { input: { n: "{{ n + 1 }}" } }, end: true }
  - { name: done, type: inject, data: { finished: true }, end: true }
"""


def test_recursion_is_refused_at_load_bounded_at_run_time_and_continue_as_new_chains(daemon: Daemon) -> None:
    daemon.add_workflow("loop_a", RECURSIVE.format(name="loop_a", target="loop_b", extra=""))
    daemon.add_workflow("loop_b", RECURSIVE.format(name="loop_b", target="loop_a", extra=""))
    daemon.add_workflow("rec", RECURSIVE.format(name="rec", target="rec", extra=", allowRecursion: true"))
    daemon.add_workflow("counter", COUNTER)
    daemon.start({"STATION_MAX_CHILD_DEPTH": "3"})
    known = {w["id"] for w in daemon.request("GET", "/api/v1/workflows").json()["workflows"]}
    assert {"rec", "counter"} <= known and len({"loop_a", "loop_b"} & known) == 1  # the file closing the cycle is refused
    assert "would start itself" in daemon.log()
    body = {"id": "selfish", "start": "s", "states": [
        {"name": "s", "type": "operation", "action": "workflow.run", "input": {"workflow": "selfish"}, "end": True}]}
    resp = daemon.request("POST", "/api/v1/workflows", json=body)
    assert resp.status_code == 422 and "would start itself" in resp.text
    # a disabled workflow is out of the graph, so enabling it again is checked too
    def starter(name: str, target: str) -> dict[str, Any]:
        return {"id": name, "start": "s", "states": [
            {"name": "s", "type": "operation", "action": "workflow.run", "input": {"workflow": target}, "end": True}]}
    assert daemon.request("POST", "/api/v1/workflows", json=starter("ping", "pong")).status_code == 201
    assert daemon.request("DELETE", "/api/v1/workflows/ping").status_code == 200
    assert daemon.request("POST", "/api/v1/workflows", json=starter("pong", "ping")).status_code == 201
    enabled = daemon.request("POST", "/api/v1/workflows/ping/enable")
    assert enabled.status_code == 422 and "would start itself" in enabled.text

    # allowed recursion still stops at STATION_MAX_CHILD_DEPTH
    run = daemon.start_run("rec")
    failed = daemon.wait_status(run["id"], "FAILED", timeout=30)
    assert failed["error"]["type"] == "child_failed"
    assert "STATION_MAX_CHILD_DEPTH=3" in str(failed["error"])

    # continue-as-new: each run ends COMPLETED and names its successor; the last one finishes
    first = daemon.start_run("counter", {"n": 0})
    chain = [daemon.wait_status(first["id"], "COMPLETED")]
    for _ in range(5):
        nxt = chain[-1]["continuedAs"]
        if nxt is None:
            break
        chain.append(daemon.wait_status(nxt, "COMPLETED"))
    assert [r["input"]["n"] for r in chain] == [0, 1, 2, 3]
    assert chain[-1]["context"]["finished"] is True and chain[1]["continuedFrom"] == chain[0]["id"]
    events = daemon.events(chain[0]["id"])
    assert any(e["type"] == "run.continued_as_new" and e["payload"]["runId"] == chain[1]["id"] for e in events)

