"""Crash safety with real processes: kill -9 the daemon, crash between commit and publish, restart or
tamper with nats-server. Every scenario ends with the run COMPLETED and no succeeded step re-executed."""

from __future__ import annotations

import json
import threading

from tests.conftest import Daemon, NatsServer, wait_until

THREE_STEPS = """
id: three
start: prep
states:
  - name: prep
    type: inject
    data: { n: 1 }
    next: first
  - name: first
    type: operation
    action: agent.run
    input: { agent: worker, task: "first" }
    next: second
  - name: second
    type: operation
    action: agent.run
    input: { agent: slow, task: "second" }
    end: true
"""


def _setup(daemon: Daemon) -> threading.Event:
    daemon.add_agent("slow")
    daemon.add_workflow("three", THREE_STEPS)
    hold = threading.Event()
    daemon.agent_server.behave("slow", hold=hold)
    return hold


def _start_on_external_nats(daemon: Daemon, nats_server: NatsServer) -> tuple[threading.Event, dict]:
    """The daemon on a nats-server the test controls; one run, held in its second (slow) step."""
    hold = _setup(daemon)
    daemon.env["STATION_NATS_EMBEDDED"] = "false"
    daemon.env["STATION_NATS_URL"] = nats_server.url
    daemon.start()
    run = daemon.start_run("three")
    wait_until(lambda: daemon.agent_server.calls_for("slow"), what="the slow agent to be called")
    return hold, run


def _assert_exactly_once_effects(daemon: Daemon, run: dict) -> None:
    """Each SUCCEEDED step attempt has exactly one step.succeeded event; seqs are gap-free."""
    events = daemon.events(run["id"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    succeeded = [(e["stepId"], e["payload"]["attempt"]) for e in events if e["type"] == "step.succeeded"]
    assert len(succeeded) == len(set(succeeded)) == 3
    assert [e["type"] for e in events].count("run.completed") == 1


def test_kill9_during_agent_call_then_restart(daemon: Daemon) -> None:
    hold = _setup(daemon)
    daemon.start()
    run = daemon.start_run("three")
    wait_until(lambda: daemon.agent_server.calls_for("slow"), what="the slow agent to be called")
    first_calls = len(daemon.agent_server.calls_for("worker"))
    assert first_calls == 1

    daemon.kill()
    hold.set()  # the agent answers, but nobody is listening any more
    daemon.start()
    done = daemon.wait_status(run["id"])

    assert len(daemon.agent_server.calls_for("worker")) == 1  # a SUCCEEDED step is never called again
    slow_calls = daemon.agent_server.calls_for("slow")
    assert len(slow_calls) == 2  # the in-flight step: called at most once more ...
    second = next(s for s in done["steps"] if s["stateName"] == "second")
    assert {c.idempotency_key for c in slow_calls} == {second["idempotencyKey"]}  # ... with the same key
    assert second["attempt"] == 1 and second["status"] == "SUCCEEDED"
    restarted = [e for e in daemon.events(run["id"]) if e["type"] == "step.started" and e["stepId"] == second["stepId"]]
    assert [e["payload"]["redelivered"] for e in restarted] == [False, True]
    _assert_exactly_once_effects(daemon, done)


def test_crash_between_commit_and_publish(daemon: Daemon) -> None:
    _setup(daemon)
    daemon.agent_server.behave("slow")  # no hold
    # Hit 1 publishes the run task; hit 2 would publish the first step's task: die just before it.
    daemon.start(extra_env={"STATION_FAULTS": "relay.before_publish:2"})
    run = daemon.start_run("three")
    assert daemon.proc is not None
    assert daemon.proc.wait(30) == 137, daemon.log()
    assert "fault injected at relay.before_publish" in daemon.log()

    daemon.start()
    done = daemon.wait_status(run["id"])
    assert len(daemon.agent_server.calls_for("worker")) == 1
    assert len(daemon.agent_server.calls_for("slow")) == 1
    _assert_exactly_once_effects(daemon, done)


def test_task_delivered_twice_executes_once(daemon: Daemon, nats_server: NatsServer) -> None:
    hold, run = _start_on_external_nats(daemon, nats_server)
    second = next(s for s in daemon.run(run["id"])["steps"] if s["stateName"] == "second")
    first = next(s for s in daemon.run(run["id"])["steps"] if s["stateName"] == "first")

    async def redeliver(js, step: dict, tag: str) -> None:
        body = json.dumps({"runId": run["id"], "stepId": step["stepId"], "attempt": step["attempt"]}).encode()
        ack = await js.publish(f"wf.task.step.{run['id']}.{step['stepId']}", body,
                               headers={"Nats-Msg-Id": f"test-duplicate-{tag}"})
        assert not ack.duplicate

    nats_server.run(lambda js: redeliver(js, second, "inflight"))  # while the step is executing
    nats_server.run(lambda js: redeliver(js, first, "done"))       # after the step succeeded
    # The copy of the finished step is acked; the copy of the in-flight one is given back (not acked, so
    # it would still be there if the original handler died): two tasks left, the original and that copy.
    wait_until(lambda: nats_server.run(lambda js: _queue_holds(js, 2)), what="the finished step's duplicate to be consumed")
    hold.set()
    done = daemon.wait_status(run["id"])
    nats_server.run(lambda js: redeliver(js, second, "after"))     # after the run completed
    wait_until(lambda: nats_server.run(lambda js: _queue_is(js, ack_pending=0)), what="duplicates to be consumed")

    assert len(daemon.agent_server.calls_for("slow")) == 1
    assert len(daemon.agent_server.calls_for("worker")) == 1
    assert daemon.run(run["id"])["lastEventSeq"] == done["lastEventSeq"]  # the late duplicate changed nothing
    _assert_exactly_once_effects(daemon, done)


async def _queue_holds(js, tasks: int) -> bool:
    info = await js.consumer_info("WORKFLOW_TASKS", "station-wf-worker")
    return (info.num_pending or 0) + (info.num_ack_pending or 0) == tasks


async def _queue_is(js, ack_pending: int) -> bool:
    info = await js.consumer_info("WORKFLOW_TASKS", "station-wf-worker")
    return info.num_pending == 0 and info.num_ack_pending == ack_pending


def test_nats_restart_mid_run(daemon: Daemon, nats_server: NatsServer) -> None:
    hold, run = _start_on_external_nats(daemon, nats_server)

    nats_server.stop()
    # While NATS is down: the in-flight step finishes and commits, and a new run is accepted.
    hold.set()
    daemon.wait_status(run["id"], ("COMPLETED", "RUNNING"))
    daemon.agent_server.behave("slow")
    late = daemon.start_run("three")
    nats_server.start()

    assert daemon.wait_status(run["id"])["status"] == "COMPLETED"
    done_late = daemon.wait_status(late["id"])
    _assert_exactly_once_effects(daemon, done_late)
    assert len(daemon.agent_server.calls_for("worker")) == 2


def test_stream_deleted_mid_run(daemon: Daemon, nats_server: NatsServer) -> None:
    hold, run = _start_on_external_nats(daemon, nats_server)

    async def delete(js) -> None:
        await js.delete_stream("WORKFLOW_TASKS")

    nats_server.run(delete)
    hold.set()
    done = daemon.wait_status(run["id"])
    _assert_exactly_once_effects(daemon, done)
    # The topology is back and new runs work.
    assert daemon.wait_status(daemon.start_run("three")["id"])["status"] == "COMPLETED"


def test_lost_queued_task_is_republished(daemon: Daemon, nats_server: NatsServer) -> None:
    """A task that JetStream forgets while queued (stream deleted while the daemon is down)."""
    hold, run = _start_on_external_nats(daemon, nats_server)
    daemon.kill()  # the second step's task stays in the stream, unacked ...

    async def delete(js) -> None:
        await js.delete_stream("WORKFLOW_TASKS")

    nats_server.run(delete)  # ... and is lost with it
    hold.set()
    daemon.start()
    done = daemon.wait_status(run["id"])
    assert len(daemon.agent_server.calls_for("worker")) == 1
    assert len(daemon.agent_server.calls_for("slow")) == 2
    _assert_exactly_once_effects(daemon, done)
    assert "re-published" in daemon.log()


def test_long_step_heartbeats_past_ack_wait(daemon: Daemon) -> None:
    """A step longer than ack_wait keeps its task with in_progress() and runs once."""
    daemon.add_workflow("three", THREE_STEPS)
    daemon.add_agent("slow")
    daemon.agent_server.behave("slow", delay=4.0)
    daemon.env["STATION_ACK_WAIT_SECONDS"] = "1.5"
    daemon.start()
    done = daemon.wait_status(daemon.start_run("three")["id"])
    assert len(daemon.agent_server.calls_for("slow")) == 1
    _assert_exactly_once_effects(daemon, done)
