"""Poison tasks end (issue 11): a task whose handling fails or kills the daemon every time is given a
delivery budget that survives restarts; past it the step (or the run) fails with `engine_error`, the
executor is not called again, and the reconciler does not bring it back."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

import httpx

from tests.conftest import Daemon, NatsServer, wait_until

ONE_AGENT = """
id: one
start: call
states:
  - { name: call, type: operation, action: agent.run, input: { agent: worker, task: "t" }, end: true }
"""

PLAIN = """
id: plain
start: a
states:
  - { name: a, type: inject, data: { ok: true }, end: true }
"""


def _nested(depth: int) -> Any:
    value: Any = {"leaf": 1}
    for _ in range(depth):
        value = {"x": value}
    return value


def _db(daemon: Daemon) -> sqlite3.Connection:
    conn = sqlite3.connect(daemon.data_dir / "station-wf.db")
    conn.row_factory = sqlite3.Row
    return conn


def _run_status(daemon: Daemon, run_id: str) -> str | None:
    try:
        return daemon.run(run_id)["status"]
    except (httpx.HTTPError, AssertionError):
        return None


def _start_until(daemon: Daemon, done: Any, env: dict[str, str], timeout: float = 40.0) -> bool:
    """Start the daemon; True when it died (a crash point fired), False when `done()` held while it was up."""
    daemon.start(extra_env=env, wait=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert daemon.proc is not None
        if daemon.proc.poll() is not None:
            assert daemon.proc.returncode == 137, daemon.log()
            return True
        if done():
            return False
        time.sleep(0.1)
    raise AssertionError(f"the daemon neither crashed nor finished within {timeout}s\n{daemon.log()}")


def _assert_stays_failed(daemon: Daemon, run_id: str, calls: int) -> None:
    """Several reconciler passes (0.5 s each in tests) later, nothing brought the step back."""
    time.sleep(2.0)
    run = daemon.run(run_id)
    assert run["status"] == "FAILED"
    assert [s["status"] for s in run["steps"]] == ["FAILED"]
    assert len(daemon.agent_server.calls_for("worker")) == calls


def test_a_decision_that_kills_the_daemon_ends_after_three_restarts(daemon: Daemon) -> None:
    """The crash point exits the process while it decides what follows the agent's result, in every
    process: the budget (2) is counted in SQLite before deciding, so the fourth process gives up."""
    daemon.add_workflow("one", ONE_AGENT)
    daemon.add_workflow("plain", PLAIN)
    env = {"STATION_FAULTS": "worker.decide:1", "STATION_MAX_DELIVERIES": "2"}
    daemon.start(extra_env=env)
    run = daemon.start_run("one")
    wait_until(lambda: daemon.proc.poll() is not None, what="the first crash")
    restarts = 0
    for _ in range(6):  # bounded: the budget must end it well before this
        restarts += 1
        if not _start_until(daemon, lambda: _run_status(daemon, run["id"]) == "FAILED", env):
            break
    # Crashes in the first process and the next two (counted 1 and 2); the third restart gives up.
    assert restarts == 3, f"expected the third restart to end it, took {restarts}"
    done = daemon.run(run["id"])
    step = done["steps"][0]
    assert step["status"] == "FAILED" and step["error"]["type"] == "engine_error", step
    assert "STATION_MAX_DELIVERIES=2" in step["error"]["message"]
    assert done["error"]["type"] == "engine_error"
    # The result is recorded apart from the decision: the agent ran at most twice (the first process's
    # record may share the group commit its crash lost), never once per restart.
    calls = len(daemon.agent_server.calls_for("worker"))
    assert 1 <= calls <= 2
    with _db(daemon) as conn:
        row = conn.execute("SELECT deliveries, result FROM workflow_run_steps WHERE run_id = ?", (run["id"],)).fetchone()
    assert row["deliveries"] == 3 and row["result"] is not None
    _assert_stays_failed(daemon, run["id"], calls)
    daemon.stop()
    daemon.start()  # healthy again: other runs are unaffected
    assert daemon.wait_status(daemon.start_run("plain")["id"])["status"] == "COMPLETED"
    _assert_stays_failed(daemon, run["id"], calls)


def test_a_run_start_that_kills_the_daemon_fails_the_run(daemon: Daemon) -> None:
    daemon.add_workflow("plain", PLAIN)
    # The API decides a start in the POST's own transaction; failing that decision (every time here)
    # leaves the run PENDING with its run task, as before, for the worker's start to kill the daemon.
    env = {"STATION_FAULTS": "worker.start_run:1", "STATION_MAX_DELIVERIES": "1", "STATION_FAULT_ERRORS": "api.start_run"}
    daemon.start(extra_env=env)
    run = daemon.start_run("plain")
    assert run["status"] == "PENDING"
    wait_until(lambda: daemon.proc.poll() is not None, what="the first crash")
    restarts = 0
    for _ in range(5):
        restarts += 1
        if not _start_until(daemon, lambda: _run_status(daemon, run["id"]) == "FAILED", env):
            break
    assert restarts == 2  # one crash counted (the budget), the next delivery gives up
    done = daemon.run(run["id"])
    assert done["status"] == "FAILED" and done["error"]["type"] == "engine_error", done
    assert "start task" in done["error"]["message"]
    assert done["steps"] == []


def test_an_agent_output_that_breaks_the_decision_fails_the_step_and_the_agent_is_called_once(daemon: Daemon) -> None:
    """A decision that fails every time (a test hook: an interpreter bug, say). The result is stored,
    every decision from it fails, and the step ends with engine_error and the cause; an agent output
    nested too deep, this test's first poison, is now refused by the agent layer itself."""
    daemon.add_workflow("one", ONE_AGENT)
    daemon.start(extra_env={"STATION_MAX_DELIVERIES": "3", "STATION_FAULT_ERRORS": "worker.decide:1"})
    run = daemon.start_run("one")
    done = daemon.wait_status(run["id"], "FAILED", timeout=40)
    step = done["steps"][0]
    assert step["error"]["type"] == "engine_error", step
    assert "fault injected at worker.decide" in step["error"]["cause"]
    assert len(daemon.agent_server.calls_for("worker")) == 1
    failed = [e for e in daemon.events(run["id"]) if e["type"] == "step.failed"]
    assert [e["payload"]["willRetry"] for e in failed] == [False]
    _assert_stays_failed(daemon, run["id"], 1)


def test_a_task_for_an_unknown_run_is_not_acked(daemon: Daemon, nats_server: NatsServer) -> None:
    """Another deployment's task (or a deleted run's) is given back, not silently dropped (review C2)."""
    daemon.env["STATION_NATS_EMBEDDED"] = "false"
    daemon.env["STATION_NATS_URL"] = nats_server.url
    daemon.start()

    async def publish(js: Any) -> None:
        body = json.dumps({"runId": "run-from-elsewhere", "stepId": "s1", "attempt": 1}).encode()
        await js.publish("wf.task.step.run-from-elsewhere.s1", body, headers={"Nats-Msg-Id": "foreign-1"})

    async def held(js: Any) -> int:
        info = await js.stream_info("WORKFLOW_TASKS")
        return info.state.messages

    nats_server.run(publish)
    wait_until(lambda: "does not know" in daemon.log(), what="the warning about the unknown run")
    time.sleep(1.0)
    assert nats_server.run(held) == 1  # still in the work queue: nak'd, not acked
