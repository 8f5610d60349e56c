"""Starting runs: `POST /api/v1/workflow-runs:batch` (one transaction, per-item answers, per-item keys),
and the lean single start (the run started in the transaction that creates it, cached definitions that
a definition write cannot make stale). All through the real daemon."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from typing import Any

import httpx
import pytest

from tests.conftest import Daemon, wait_until

CLI = [sys.executable, "-m", "station_wf.cli"]
BATCH = "/api/v1/workflow-runs:batch"


def _injects(wf: str, n: int, tag: str = "v1") -> str:
    lines = [f"id: {wf}", "start: s0", "states:"]
    for i in range(n):
        lines += [f"  - name: s{i}", "    type: inject", f"    data: {{ s{i}: {tag} }}",
                  "    end: true" if i == n - 1 else f"    next: s{i + 1}"]
    return "\n".join(lines) + "\n"


TYPED = """
id: typed
inputSchema:
  type: object
  required: [n]
  properties: { n: { type: integer } }
start: a
states:
  - name: a
    type: inject
    data: { ok: true }
    end: true
"""

AGENT = """
id: agent
start: a
states:
  - name: a
    type: operation
    action: agent.run
    input: { agent: worker, task: "t" }
    end: true
"""


def _db(daemon: Daemon) -> sqlite3.Connection:
    conn = sqlite3.connect(daemon.data_dir / "station-wf.db", timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def _count(daemon: Daemon, sql: str, params: tuple[Any, ...] = ()) -> int:
    with _db(daemon) as conn:
        return conn.execute(sql, params).fetchone()[0]


def _batch(daemon: Daemon, runs: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(daemon.base + BATCH, json={"runs": runs}, timeout=120, **kwargs)


def test_a_single_start_of_inject_steps_is_done_when_its_post_answers(daemon: Daemon) -> None:
    daemon.add_workflow("ten", _injects("ten", 10))
    daemon.add_workflow("agent", AGENT)
    daemon.start()
    run = daemon.start_run("ten")
    assert run["status"] == "COMPLETED", run
    assert [s["stateName"] for s in run["steps"]] == [f"s{i}" for i in range(10)]
    assert daemon.run(run["id"])["lastEventSeq"] == run["lastEventSeq"]
    events = daemon.events(run["id"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "run.created" and events[-1]["type"] == "run.completed"
    # A step that needs an executor: the run is RUNNING at once, its step's task queued, and it finishes.
    started = daemon.start_run("agent")
    assert started["status"] == "RUNNING" and started["currentSteps"][0]["status"] == "PENDING", started
    assert daemon.wait_status(started["id"])["steps"][0]["status"] == "SUCCEEDED"


def test_a_keyed_single_start_replays_its_answer(daemon: Daemon) -> None:
    daemon.add_workflow("ten", _injects("ten", 10))
    daemon.start()
    key = {"Idempotency-Key": "single-1"}
    first = daemon.request("POST", "/api/v1/workflow-runs", json={"workflowId": "ten"}, headers=key)
    assert first.status_code == 201 and first.json()["run"]["status"] == "COMPLETED", first.text
    again = daemon.request("POST", "/api/v1/workflow-runs", json={"workflowId": "ten"}, headers=key)
    assert again.status_code == 201 and again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["run"]["id"] == first.json()["run"]["id"]
    other = daemon.request("POST", "/api/v1/workflow-runs", json={"workflowId": "ten", "input": {"x": 1}}, headers=key)
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    missing = daemon.request("POST", "/api/v1/workflow-runs", json={"workflowId": "nope"}, headers={"Idempotency-Key": "k404"})
    assert missing.status_code == 404
    missing2 = daemon.request("POST", "/api/v1/workflow-runs", json={"workflowId": "nope"}, headers={"Idempotency-Key": "k404"})
    assert missing2.status_code == 404 and missing2.headers.get("Idempotent-Replayed") == "true"
    assert _count(daemon, "SELECT COUNT(*) FROM workflow_runs") == 1


def test_a_batch_of_1000_starts_creates_each_once(daemon: Daemon) -> None:
    daemon.add_workflow("ten", _injects("ten", 10))
    daemon.start()
    resp = _batch(daemon, [{"workflowId": "ten", "input": {"i": i}} for i in range(1000)])
    assert resp.status_code == 200, resp.text[:2000]
    results = resp.json()["results"]
    assert [r["index"] for r in results] == list(range(1000))
    assert {r["status"] for r in results} == {201}
    assert all(r["run"]["status"] == "COMPLETED" for r in results)
    assert [r["run"]["input"]["i"] for r in results] == list(range(1000))
    ids = [r["run"]["id"] for r in results]
    assert len(set(ids)) == 1000
    with _db(daemon) as conn:
        rows = conn.execute("SELECT run_id, status FROM workflow_runs").fetchall()
        assert sorted(r["run_id"] for r in rows) == sorted(ids)
        assert {r["status"] for r in rows} == {"COMPLETED"}
        assert conn.execute("SELECT COUNT(*) FROM workflow_run_steps").fetchone()[0] == 10_000


def test_a_batch_with_invalid_items_answers_each_and_creates_the_valid_ones(daemon: Daemon) -> None:
    daemon.add_workflow("ten", _injects("ten", 3))
    daemon.add_workflow("typed", TYPED)
    daemon.add_workflow("gone", _injects("gone", 1))
    daemon.start()
    assert daemon.request("DELETE", "/api/v1/workflows/gone").status_code in (200, 204)
    items: list[Any] = [
        {"workflowId": "ten"},                                  # 0 ok
        {"workflowId": "nope"},                                 # 1 404
        {"workflowId": "typed", "input": {"n": "x"}},           # 2 400 invalid_input
        "not an object",                                        # 3 400
        {"workflowId": "ten", "colour": "red"},                 # 4 400 unknown field
        {"workflowId": "typed", "input": {"n": 3}},             # 5 ok
        {"workflowId": "ten", "version": 0},                    # 6 400
        {"workflowId": "gone"},                                 # 7 409 disabled
        {"workflowId": "ten", "version": 9},                    # 8 404
        {"workflowId": "ten", "idempotencyKey": ""},            # 9 400
        {"workflowId": "ten", "input": [1]},                    # 10 400
    ]
    resp = _batch(daemon, items)
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert [r["status"] for r in results] == [201, 404, 400, 400, 400, 201, 400, 409, 404, 400, 400]
    assert results[2]["error"]["code"] == "invalid_input" and results[2]["error"]["details"][0]["path"] == "$.n"
    assert results[4]["error"]["details"] == {"fields": ["colour"]}
    assert results[7]["error"]["code"] == "workflow_disabled"
    assert all(set(r["error"]) == {"code", "message", "details"} for r in results if r["status"] >= 400)
    created = sorted(r["run"]["id"] for r in results if r["status"] == 201)
    with _db(daemon) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT run_id FROM workflow_runs")) == created


def test_a_replayed_batch_creates_nothing_new(daemon: Daemon) -> None:
    daemon.add_workflow("ten", _injects("ten", 3))
    daemon.start()
    items = [{"workflowId": "ten", "input": {"i": i}, "idempotencyKey": f"k{i}"} for i in range(50)]
    items.append({"workflowId": "nope", "idempotencyKey": "k-missing"})
    first = _batch(daemon, items).json()["results"]
    assert [r["status"] for r in first] == [201] * 50 + [404]
    again = _batch(daemon, items).json()["results"]
    assert [r["status"] for r in again] == [201] * 50 + [404]
    assert all(r.get("replayed") for r in again)
    assert [r["run"]["id"] for r in again[:50]] == [r["run"]["id"] for r in first[:50]]
    assert _count(daemon, "SELECT COUNT(*) FROM workflow_runs") == 50
    # A key reused with another body is that item's 422; a key given twice in one batch is one run.
    mixed = _batch(daemon, [{"workflowId": "ten", "input": {"i": 999}, "idempotencyKey": "k0"},
                            {"workflowId": "ten", "idempotencyKey": "dup"},
                            {"workflowId": "ten", "idempotencyKey": "dup"}]).json()["results"]
    assert mixed[0]["status"] == 422 and mixed[0]["error"]["code"] == "idempotency_key_reused"
    assert mixed[1]["status"] == mixed[2]["status"] == 201 and mixed[2].get("replayed")
    assert mixed[1]["run"]["id"] == mixed[2]["run"]["id"]
    assert _count(daemon, "SELECT COUNT(*) FROM workflow_runs") == 51


def test_a_malformed_batch_is_one_4xx_and_creates_nothing(daemon: Daemon) -> None:
    daemon.add_workflow("ten", _injects("ten", 1))
    daemon.start()
    for body in (b"{not json", b"[]", b'{"runs": []}', b'{"runs": {}}', b'{"runs": [{"workflowId": "ten"}], "x": 1}', b"",
                 b'{"runs": [{"workflowId": "ten", "input": NaN}]}'):
        resp = httpx.post(daemon.base + BATCH, content=body, headers={"Content-Type": "application/json"}, timeout=30)
        assert resp.status_code == 400, (body, resp.text)
        assert set(resp.json()["error"]) >= {"code", "message", "details", "request_id"}
    assert _count(daemon, "SELECT COUNT(*) FROM workflow_runs") == 0


def test_a_batch_over_the_limit_or_with_a_header_key_is_refused(daemon: Daemon) -> None:
    daemon.add_workflow("ten", _injects("ten", 1))
    daemon.start()
    big = _batch(daemon, [{"workflowId": "ten"}] * 1001)
    assert big.status_code == 413 and big.json()["error"]["details"] == {"limit": 1000, "count": 1001}
    keyed = _batch(daemon, [{"workflowId": "ten"}], headers={"Idempotency-Key": "x"})
    assert keyed.status_code == 400
    assert _count(daemon, "SELECT COUNT(*) FROM workflow_runs") == 0


def test_a_start_right_after_a_resync_uses_the_new_version(daemon: Daemon) -> None:
    path = daemon.add_workflow("ten", _injects("ten", 2, "v1"))
    daemon.start()
    assert daemon.start_run("ten")["workflowVersion"] == 1  # the head is cached now
    assert _batch(daemon, [{"workflowId": "ten"}]).json()["results"][0]["run"]["workflowVersion"] == 1
    # Another process writes the definitions (the daemon's cache cannot hear it): the start sees it anyway.
    path.write_text(_injects("ten", 2, "v2"))
    out = subprocess.run([*CLI, "sync"], env=daemon.process_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    run = daemon.start_run("ten")
    assert run["workflowVersion"] == 2 and run["steps"][0]["output"] == {"s0": "v2"}, run["steps"]
    assert _batch(daemon, [{"workflowId": "ten"}]).json()["results"][0]["run"]["workflowVersion"] == 2
    # Through the API (the daemon's own write), and a disable that must be seen at once.
    body = {"id": "ten", "start": "s0", "states": [{"name": "s0", "type": "inject", "data": {"s0": "v3"}, "end": True}]}
    assert daemon.request("PUT", "/api/v1/workflows/ten", json=body).status_code == 200
    third = daemon.start_run("ten")
    assert third["workflowVersion"] == 3 and third["steps"][0]["output"] == {"s0": "v3"}
    assert daemon.start_run("ten", version=1)["workflowVersion"] == 1
    assert daemon.request("DELETE", "/api/v1/workflows/ten").status_code in (200, 204)
    refused = daemon.request("POST", "/api/v1/workflow-runs", json={"workflowId": "ten"})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "workflow_disabled"


def test_a_start_whose_decision_fails_is_created_pending_and_started_by_its_run_task(daemon: Daemon) -> None:
    daemon.add_workflow("ten", _injects("ten", 3))
    daemon.start({"STATION_FAULT_ERRORS": "api.start_run:1:1"})
    run = daemon.start_run("ten")
    assert run["status"] == "PENDING" and run["steps"] == [], run
    done = daemon.wait_status(run["id"])
    assert len(done["steps"]) == 3
    assert "start decision failed" in daemon.log()
    assert daemon.start_run("ten")["status"] == "COMPLETED"  # the next start is decided in its POST again


@pytest.mark.parametrize("point,created", [("api.batch.before_commit", False), ("api.batch.after_commit", True)])
def test_kill_during_a_batch_leaves_all_or_nothing(daemon: Daemon, point: str, created: bool) -> None:
    daemon.add_workflow("ten", _injects("ten", 3))
    daemon.start({"STATION_FAULTS": f"{point}:1"})
    items = [{"workflowId": "ten", "input": {"i": i}, "idempotencyKey": f"b{i}"} for i in range(200)]
    with pytest.raises(httpx.HTTPError):
        _batch(daemon, items)
    assert daemon.proc is not None and daemon.proc.wait(30) == 137
    runs = _count(daemon, "SELECT COUNT(*) FROM workflow_runs")
    keys = _count(daemon, "SELECT COUNT(*) FROM idempotency_keys")
    assert (runs, keys) == ((200, 200) if created else (0, 0))
    daemon.start()
    again = _batch(daemon, items).json()["results"]
    assert {r["status"] for r in again} == {201}
    assert all(bool(r.get("replayed")) == created for r in again)
    assert _count(daemon, "SELECT COUNT(*) FROM workflow_runs") == 200
    wait_until(lambda: _count(daemon, "SELECT COUNT(*) FROM workflow_runs WHERE status = 'COMPLETED'") == 200, 30,
               what="every run of the batch to complete")


BRANCH = """
id: branch
start: check
states:
  - name: check
    type: switch
    conditions: [ { if: "size > 5", next: big } ]
    defaultNext: small
  - { name: big, type: inject, data: { kind: big }, resultPath: summary, end: true }
  - { name: small, type: inject, data: { kind: small }, resultPath: summary, end: true }
"""


def test_a_start_whose_chain_needs_the_sandbox_is_run_again_whole(daemon: Daemon) -> None:
    """A switch at the start is evaluated in a sandbox process: the insert transaction is deferred and
    run again (single and batch alike), and still creates each run once with the right branch."""
    daemon.add_workflow("branch", BRANCH)
    daemon.start()
    single = daemon.start_run("branch", {"size": 9})
    assert single["status"] == "COMPLETED" and [s["stateName"] for s in single["steps"]] == ["check", "big"], single["steps"]
    sizes = [i % 11 for i in range(300)]
    results = _batch(daemon, [{"workflowId": "branch", "input": {"size": n}, "idempotencyKey": f"s{i}"}
                              for i, n in enumerate(sizes)]).json()["results"]
    assert [r["status"] for r in results] == [201] * 300
    assert [r["run"]["steps"][-1]["stateName"] for r in results] == ["big" if n > 5 else "small" for n in sizes]
    assert all(r["run"]["status"] == "COMPLETED" for r in results)
    assert _count(daemon, "SELECT COUNT(*) FROM workflow_runs") == 301
    assert _count(daemon, "SELECT COUNT(*) FROM workflow_run_events WHERE type = 'run.created'") == 301


MIXED = """
id: mixed
start: a
states:
  - name: a
    type: inject
    data: { x: 1 }
    next: b
  - name: b
    type: operation
    action: agent.run
    input: { agent: worker, task: "t" }
    end: true
"""


def test_a_started_run_answers_with_the_context_its_inline_steps_wrote(daemon: Daemon) -> None:
    """The start's inline chain stores its context writes as patches: the POST's answer (single, keyed,
    batch) folds them in, as a later GET does."""
    daemon.add_workflow("mixed", MIXED)
    daemon.start()
    single = daemon.start_run("mixed")
    assert single["status"] == "RUNNING" and single["context"]["x"] == 1, single
    keyed = daemon.request("POST", "/api/v1/workflow-runs", json={"workflowId": "mixed"}, headers={"Idempotency-Key": "ctx-1"})
    assert keyed.status_code == 201 and keyed.json()["run"]["context"]["x"] == 1, keyed.text
    replay = daemon.request("POST", "/api/v1/workflow-runs", json={"workflowId": "mixed"}, headers={"Idempotency-Key": "ctx-1"})
    assert replay.headers.get("Idempotent-Replayed") == "true" and replay.json()["run"]["context"]["x"] == 1
    batch = _batch(daemon, [{"workflowId": "mixed"}]).json()["results"][0]
    assert batch["status"] == 201 and batch["run"]["context"]["x"] == 1, batch
    assert daemon.run(single["id"])["context"]["x"] == 1
