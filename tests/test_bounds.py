"""Bounds a run cannot pass (issue 11 item 4): durable step timeouts with a default and a maximum,
steps/events/context caps per run, retries counted per visit of a state, capped back-off, and a
paused run that nothing advances."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from typing import Any

import httpx

from station_wf.core import history, model
from station_wf.core import interpreter as ip
from tests.conftest import Daemon, wait_until

HANGING = """
id: hang
start: call
states:
  - { name: call, type: operation, action: agent.run, input: { agent: hang, task: "t" }, {timeout} end: true }
"""


def hanging(timeout: float | None) -> str:
    return HANGING.replace("{timeout}", f"timeoutSeconds: {timeout}," if timeout else "")


def _hang(daemon: Daemon) -> threading.Event:
    daemon.add_agent("hang")
    hold = threading.Event()  # never set: the agent answers only when the test ends
    daemon.agent_server.behave("hang", hold=hold)
    return hold


def _timed_out(daemon: Daemon, run_id: str, timeout: float = 30) -> dict[str, Any]:
    done = daemon.wait_status(run_id, "FAILED", timeout=timeout)
    step = done["steps"][0]
    assert step["status"] == "TIMED_OUT" and step["error"]["type"] == "timeout", step
    return step


def _timeout_timers(daemon: Daemon, run_id: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(daemon.data_dir / "station-wf.db")
    conn.row_factory = sqlite3.Row
    with conn:
        return conn.execute("SELECT * FROM timers WHERE run_id = ? AND kind = 'step_timeout'", (run_id,)).fetchall()


def test_step_timeout_is_durable_across_a_restart(daemon: Daemon) -> None:
    """The deadline is a timer row written when the step starts: after a kill -9 the redelivered step
    waits only for what is left of it, it does not start the wait again."""
    _hang(daemon)
    daemon.add_workflow("hang", hanging(6))
    daemon.start()
    run = daemon.start_run("hang")
    wait_until(lambda: daemon.agent_server.calls_for("hang"), what="the agent call")
    began = time.monotonic()
    time.sleep(1.5)
    daemon.kill()
    daemon.start()
    step = _timed_out(daemon, run["id"])
    took = time.monotonic() - began
    # From zero again it would end >= 1.5 s + the restart + 6 s after the first call.
    assert took < 6 + 2.5, f"the timeout took {took:.1f}s from the first call"
    assert "6s" in step["error"]["message"]
    assert len(daemon.agent_server.calls_for("hang")) <= 2
    timers = _timeout_timers(daemon, run["id"])
    assert len(timers) == 1 and timers[0]["fired_at"] is not None  # one deadline, kept across the restart


def test_a_timeout_that_passed_while_the_daemon_was_down_fails_the_step_without_a_new_call(daemon: Daemon) -> None:
    _hang(daemon)
    daemon.add_workflow("hang", hanging(2))
    daemon.start()
    run = daemon.start_run("hang")
    wait_until(lambda: daemon.agent_server.calls_for("hang"), what="the agent call")
    daemon.kill()
    time.sleep(2.5)
    daemon.start()
    _timed_out(daemon, run["id"])
    assert len(daemon.agent_server.calls_for("hang")) == 1


def test_default_and_maximum_step_timeouts(daemon: Daemon) -> None:
    _hang(daemon)
    daemon.add_workflow("hang", hanging(None))
    daemon.add_workflow("long", hanging(3600).replace("id: hang", "id: long"))
    daemon.start(extra_env={"STATION_STEP_TIMEOUT_DEFAULT_SECONDS": "1.5", "STATION_STEP_TIMEOUT_MAX_SECONDS": "2.5"})
    plain, long = daemon.start_run("hang"), daemon.start_run("long")
    assert "1.5s" in _timed_out(daemon, plain["id"], timeout=15)["error"]["message"]
    assert "2.5s" in _timed_out(daemon, long["id"], timeout=15)["error"]["message"]  # clamped to the maximum


LOOP = """
id: loop
start: a
states:
  - { name: a, type: inject, data: { n: 1 }, next: check }
  - name: check
    type: switch
    conditions: [ { if: "n > 5", next: done } ]
    defaultNext: a
  - { name: done, type: inject, data: { end: true }, end: true }
"""

BIG = """
id: big
start: a
states:
  - { name: a, type: inject, data: { blob: "{blob}" }, end: true }
""".replace("{blob}", "x" * 5000)


def test_an_inline_loop_ends_at_the_step_cap_and_a_big_context_at_the_size_cap(daemon: Daemon) -> None:
    daemon.add_workflow("loop", LOOP)
    daemon.add_workflow("big", BIG)
    daemon.start(extra_env={"STATION_MAX_STEPS_PER_RUN": "300", "STATION_MAX_CONTEXT_BYTES": "4096"})
    loop, big = daemon.start_run("loop"), daemon.start_run("big")
    done = daemon.wait_status(loop["id"], "FAILED", timeout=30)
    assert done["error"]["type"] == "limit_exceeded" and done["error"]["limit"] == "max_steps_per_run", done["error"]
    assert "STATION_MAX_STEPS_PER_RUN" in done["error"]["message"]
    assert 250 <= len(done["steps"]) <= 300
    failed = daemon.wait_status(big["id"], "FAILED")
    assert failed["error"]["limit"] == "max_context_bytes", failed["error"]
    assert [s["status"] for s in failed["steps"]] == ["FAILED"]
    assert "blob" not in json.dumps(failed["context"])  # the oversized write was not stored
    time.sleep(1.0)  # nothing keeps burning the writer after the cap
    assert daemon.run(loop["id"])["lastEventSeq"] == done["lastEventSeq"]


SIGNAL = """
id: wait
start: w
states:
  - { name: w, type: operation, action: signal.wait, input: { signal: go }, resultPath: got, end: true }
"""


def test_the_event_cap_fails_a_looping_run_and_refuses_signals(daemon: Daemon) -> None:
    daemon.add_workflow("loop", LOOP)
    daemon.add_workflow("wait", SIGNAL)
    daemon.start(extra_env={"STATION_MAX_EVENTS_PER_RUN": "40"})
    loop = daemon.start_run("loop")
    done = daemon.wait_status(loop["id"], "FAILED", timeout=30)
    assert done["error"]["limit"] == "max_events_per_run", done["error"]
    assert done["lastEventSeq"] <= 45
    waiting = daemon.start_run("wait")
    daemon.wait_status(waiting["id"], "WAITING_SIGNAL")
    answers = [daemon.request("POST", f"/api/v1/workflow-runs/{waiting['id']}/signals", json={"name": "other"}).status_code
               for _ in range(45)]
    assert answers.count(409) >= 5 and set(answers) <= {200, 201, 202, 409}, answers
    assert daemon.run(waiting["id"])["status"] == "WAITING_SIGNAL"  # refused, the run itself untouched


POLL = """
id: poll
start: init
states:
  - { name: init, type: inject, data: { n: 0 }, next: call }
  - name: call
    type: operation
    action: agent.run
    input: { agent: flaky, task: t }
    retry: { maxAttempts: 2, backoffSeconds: 0.1 }
    next: count
  - { name: count, type: transform, expression: "n + 1", resultPath: n, next: check }
  - name: check
    type: switch
    conditions: [ { if: "n >= 3", next: done } ]
    defaultNext: call
  - { name: done, type: inject, data: { finished: true }, end: true }
"""


def test_retries_count_per_visit_of_a_state(daemon: Daemon) -> None:
    """Every visit of `call` fails once, then succeeds on its retry: each visit keeps its own budget."""
    daemon.add_agent("flaky")
    daemon.add_workflow("poll", POLL)

    def reply(body: dict[str, Any]) -> Any:
        if len(daemon.agent_server.calls_for("flaky")) % 2 == 1:
            raise RuntimeError("odd call fails")  # aiohttp answers 500
        return {"ok": True}

    daemon.agent_server.behave("flaky", reply_fn=reply)
    daemon.start()
    done = daemon.wait_status(daemon.start_run("poll")["id"], ("COMPLETED", "FAILED"), timeout=40)
    assert done["status"] == "COMPLETED", done.get("error")
    assert len(daemon.agent_server.calls_for("flaky")) == 6
    attempts = sorted(s["attempt"] for s in done["steps"] if s["stateName"] == "call")
    assert attempts == [1, 2, 3, 4, 5, 6]  # attempt numbers (and idempotency keys) stay unique across visits


def test_backoff_is_capped_without_max_backoff_seconds() -> None:
    policy = {"maxAttempts": 10_000, "backoffSeconds": 1, "backoffRate": 2}
    assert ip.retry_delay(policy, model.StepView("s", "call", 40)) == 3600.0
    assert ip.retry_delay(policy, model.StepView("s", "call", 5000)) == 3600.0  # 2**4999 overflows a float
    assert ip.retry_delay({**policy, "maxBackoffSeconds": 5}, model.StepView("s", "call", 40)) == 5.0
    # Per visit: the 7th attempt overall, first of its visit, waits like a first retry.
    assert ip.retry_delay(policy, model.StepView("s", "call", 7, try_number=1)) == 1.0


TOKENS = {"alice-token-0123456789": {"principal": "alice", "groups": []}}
ALICE = {"Authorization": "Bearer alice-token-0123456789"}
GATE = """
id: gate
start: ask
states:
  - { name: ask, type: operation, action: human.approval, input: { message: "ok?", approvers: ["user:alice"] }, resultPath: d, next: w }
  - { name: w, type: operation, action: signal.wait, input: { signal: go }, resultPath: got, end: true }
"""


def test_a_paused_run_is_not_advanced_by_approvals_or_signals(daemon: Daemon, tmp_path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps(TOKENS))
    daemon.env["STATION_API_TOKENS_FILE"] = str(tokens)
    daemon.add_workflow("gate", GATE)
    daemon.start()

    def call(method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, daemon.base + path, headers=ALICE, timeout=15, **kw)

    run = call("POST", "/api/v1/workflow-runs", json={"workflowId": "gate", "input": {}}).json()["run"]
    base = f"/api/v1/workflow-runs/{run['id']}"
    approval = wait_until(lambda: next(iter(call("GET", base + "/approvals").json()["approvals"]), None), what="the approval")
    assert call("POST", base + "/pause").status_code == 200
    refused = call("POST", f"{base}/approvals/{approval['id']}/approve", json={})
    assert refused.status_code == 409 and "PAUSED" in refused.json()["error"]["message"]
    assert call("POST", base + "/resume").status_code == 200
    assert call("POST", f"{base}/approvals/{approval['id']}/approve", json={}).status_code == 200
    wait_until(lambda: call("GET", base).json()["status"] == "WAITING_SIGNAL", what="the signal wait")
    assert call("POST", base + "/pause").status_code == 200
    sent = call("POST", base + "/signals", json={"name": "go", "payload": 7})
    assert sent.status_code in (200, 201, 202) and sent.json()["signal"]["consumed"] is False, sent.text
    time.sleep(0.5)
    assert call("GET", base).json()["status"] == "PAUSED"
    assert call("POST", base + "/resume").status_code == 200
    done = wait_until(lambda: (r := call("GET", base).json())["status"] == "COMPLETED" and r, what="the run to complete")
    assert done["context"]["got"] == 7  # the signal kept while paused was consumed on resume


def test_a_step_timeout_timer_is_a_compare_and_set() -> None:
    """Pure: the timer fails a RUNNING executor attempt; a recorded result or a closed attempt wins."""
    defn = {"id": "hang", "start": "call", "states": {"call": {"name": "call", "type": "operation", "action": "agent.run",
                                                            "input": {}, "timeoutSeconds": 5, "end": True}}}
    state = model.RunState("r1", {"steps": {}}, history.empty_engine())
    running = model.StepView("s1", "call", 1, status=model.RUNNING, state_type="operation")
    t = ip.timer_fired(defn, state, "step_timeout", running)
    assert t is not None and t.step_updates[0].status == model.TIMED_OUT and t.run_status == model.FAILED
    assert t.step_updates[0].error["message"] == "state 'call': step timed out after 5s"
    assert ip.timer_fired(defn, state, "step_timeout", model.StepView("s1", "call", 1, status=model.RUNNING, has_result=True)) is None
    assert ip.timer_fired(defn, state, "step_timeout", model.StepView("s1", "call", 1, status=model.SUCCEEDED)) is None
