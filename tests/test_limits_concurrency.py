"""Limits through the daemon: per-key concurrency under 200 concurrent starts (never more than the
limit active, none lost, order kept), the overall maximum with queue positions, both holding across
a kill -9; agent maxConcurrency. (Rate limits and the default run duration: test_governance_tags.py,
whose daemon has them set.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import Daemon, wait_until

LIMIT = 20
OVERALL = 30
GATE = f"""
id: gate
concurrency: {{ limit: {LIMIT}, key: "{{{{ input.customer }}}}" }}
start: hold
states:
  - {{ name: hold, type: operation, action: signal.wait, input: {{ signal: go }}, end: true }}
"""
ACTIVE = ("RUNNING", "WAITING_SIGNAL")
PARENT = """
id: parent
start: call
states:
  - { name: call, type: operation, action: workflow.run, input: { workflow: leaf, input: {}, wait: true }, end: true }
"""
LEAF = """
id: leaf
start: hold
states:
  - { name: hold, type: operation, action: signal.wait, input: { signal: go }, end: true }
"""


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("limits")
    (root / "environments" / "default" / "agents").mkdir(parents=True)
    daemon = Daemon(root, None, {"STATION_MAX_CONCURRENT_RUNS": str(OVERALL)})
    daemon.add_workflow("gate", GATE)
    daemon.add_workflow("parent", PARENT)
    daemon.add_workflow("leaf", LEAF)
    daemon.start()
    yield daemon
    daemon.stop()


def _runs(d: Daemon, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    for _ in range(20):
        page = d.request("GET", "/api/v1/workflow-runs",
                         params={"workflowId": "gate", "limit": 1000, **params, **({"cursor": cursor} if cursor else {})}).json()
        out.extend(page["runs"])
        cursor = page["nextCursor"]
        if cursor is None:
            return out
    raise AssertionError("too many pages")


def _signal_all(d: Daemon, runs: list[dict[str, Any]]) -> None:
    def one(run: dict[str, Any]) -> None:
        resp = d.request("POST", f"/api/v1/workflow-runs/{run['id']}/signals", json={"name": "go", "payload": {}})
        assert resp.status_code in (200, 202), resp.text

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, runs))


def test_two_hundred_concurrent_starts_under_a_key_limit(d: Daemon) -> None:
    def start(i: int) -> dict[str, Any]:
        resp = httpx.post(d.base + "/api/v1/workflow-runs", timeout=30,
                          json={"workflowId": "gate", "input": {"customer": "acme", "i": i}, "tags": {"t": "many"}})
        assert resp.status_code == 201, resp.text
        return resp.json()["run"]

    with ThreadPoolExecutor(16) as pool:
        started = list(pool.map(start, range(200)))
    assert len({r["id"] for r in started}) == 200
    created = [r["id"] for r in sorted(_runs(d, tag="t:many"), key=lambda r: r["createdAt"])]  # queue order
    assert len(created) == 200
    queued = d.run(created[-1])
    assert queued["status"] == "PENDING" and queued["queue"] == {"key": "acme", "position": 200 - LIMIT, "limit": LIMIT}
    round_of: dict[str, int] = {}
    holder: dict[str, list[dict[str, Any]]] = {}

    def settled() -> bool:
        left = _runs(d, tag="t:many", status="PENDING,RUNNING,WAITING_SIGNAL")
        active = [r for r in left if r["status"] in ACTIVE]
        assert len(active) <= LIMIT, f"{len(active)} active runs under a limit of {LIMIT}"
        holder["wait"] = [r for r in active if r["status"] == "WAITING_SIGNAL"]
        return len(holder["wait"]) == min(LIMIT, len(left))

    for rnd in range(200 // LIMIT + 5):
        wait_until(settled, 30, interval=0.2, what=f"round {rnd}: {LIMIT} runs waiting for their signal")
        if not holder["wait"]:
            break
        for run in holder["wait"]:
            round_of[run["id"]] = rnd
        _signal_all(d, holder["wait"])
    assert len(round_of) == 200, "every run started once"
    assert all(r["status"] == "COMPLETED" for r in _runs(d, tag="t:many"))
    rounds = [round_of[run_id] for run_id in created]
    assert rounds == sorted(rounds), "a run started before one created ahead of it"
    assert rounds[0] == 0 and rounds[-1] == 200 // LIMIT - 1


def test_overall_maximum_and_queue_positions_hold_across_a_kill(d: Daemon) -> None:
    runs = [d.start_run("gate", {"customer": f"c{i % 2}"}, tags={"t": "overall"}) for i in range(OVERALL + 4)]  # 17 per key: under the key limit
    ids = [r["id"] for r in runs]

    def active_count() -> int:
        return sum(r["status"] in ACTIVE for r in _runs(d, tag="t:overall"))

    wait_until(lambda: active_count() == OVERALL, 20, what="the overall maximum running")
    waiting = [d.run(i) for i in ids[OVERALL:]]
    assert all(w["status"] == "PENDING" and w["queue"] is not None for w in waiting)
    assert [w["queue"]["position"] for w in waiting] == [1, 1, 2, 2]  # per key: c0, c1, c0, c1
    d.kill()
    d.start()
    time.sleep(1.0)  # a restarted daemon must not start the waiting runs (no wait_until: nothing should change)
    assert active_count() == OVERALL
    assert [d.run(i)["status"] for i in ids[OVERALL:]] == ["PENDING"] * 4
    _signal_all(d, [d.run(ids[0])])  # one ends: the oldest waiting run (of any key) starts
    wait_until(lambda: d.run(ids[OVERALL])["status"] in ACTIVE, 20, what="the oldest waiting run to start")
    assert active_count() == OVERALL and d.run(ids[OVERALL + 1])["status"] == "PENDING"
    cancelled = d.request("POST", f"/api/v1/workflow-runs/{ids[OVERALL + 2]}/cancel", json={"reason": "not needed"})
    assert cancelled.status_code == 200, cancelled.text
    for _ in range(5):
        _signal_all(d, [r for r in _runs(d, tag="t:overall") if r["status"] == "WAITING_SIGNAL"])
        if all(r["status"] in ("COMPLETED", "CANCELLED") for r in _runs(d, tag="t:overall")):
            break
        time.sleep(0.3)
    final = {r["id"]: r["status"] for r in _runs(d, tag="t:overall")}
    assert final[ids[OVERALL + 2]] == "CANCELLED"
    assert sum(s == "COMPLETED" for s in final.values()) == OVERALL + 3


def test_children_never_wait_for_the_overall_maximum_their_parents_hold(d: Daemon) -> None:
    """Parents filling the overall maximum (one batch: all admitted at once) wait for their children:
    the children must not wait for them, or nothing would ever end."""
    batch = d.request("POST", "/api/v1/workflow-runs:batch", json={"runs": [{"workflowId": "parent"}] * OVERALL})
    parents = [r["run"]["id"] for r in batch.json()["results"]]
    assert len(parents) == OVERALL

    def leaves() -> list[dict[str, Any]]:
        return _runs(d, workflowId="leaf", status="PENDING,RUNNING,WAITING_SIGNAL")

    wait_until(lambda: sum(r["status"] == "WAITING_SIGNAL" for r in leaves()) == OVERALL, 30,
               what="every child running past the overall maximum")
    _signal_all(d, leaves())
    for run_id in parents:
        d.wait_status(run_id, "COMPLETED", timeout=30)
    after = d.start_run("gate", {"customer": "after"})  # the slots all came back
    d.wait_status(after["id"], "WAITING_SIGNAL")
    _signal_all(d, [after])


AGENT = """---
metadata:
  name: capped
endpoint: {url}
maxConcurrency: 2
---
Do the task.
"""
FAN = """
id: fan
start: each
states:
  - name: each
    type: foreach
    itemsPath: xs
    maxConcurrency: 6
    iterator:
      states:
        - { name: call, type: operation, action: agent.run, input: { agent: capped, task: "go" }, end: true }
    end: true
"""


def test_agent_max_concurrency_caps_its_steps(daemon: Daemon) -> None:
    assert daemon.agent_server is not None
    behaviour = daemon.agent_server.behave("capped", delay=0.4)
    daemon.agents_dir.mkdir(parents=True, exist_ok=True)
    (daemon.agents_dir / "capped.prompt").write_text(AGENT.format(url=daemon.agent_server.url("capped")))
    daemon.add_workflow("fan", FAN)
    daemon.start()
    agent = daemon.request("GET", "/api/v1/agents/capped").json()["agent"]
    assert agent["maxConcurrency"] == 2
    run = daemon.start_run("fan", {"xs": list(range(6))})
    daemon.wait_status(run["id"], "COMPLETED", timeout=60)
    assert len(daemon.agent_server.calls_for("capped")) == 6
    assert behaviour.max_active == 2
