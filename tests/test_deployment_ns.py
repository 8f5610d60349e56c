"""Deployments on one NATS (issue 15): `STATION_DEPLOYMENT` namespaces the streams, subjects and the
consumer, so two daemons never see each other's tasks; and a replica on a shared store binds to the
consumer instead of deleting it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from station_wf.bus.jetstream import Bus
from station_wf.config import settings_from_env
from station_wf.protocol import Namespace, decode_control, encode_control, encode_task, run_task, step_task
from tests.conftest import Daemon, NatsServer, replicas, wait_until

ONE_AGENT = """
id: one
start: call
states:
  - { name: call, type: operation, action: agent.run, input: { agent: worker, task: "t" }, end: true }
"""

HELD = """
id: held
start: call
states:
  - { name: call, type: operation, action: agent.run, input: { agent: slow, task: "t" }, end: true }
"""


# -- the names (pure) -----------------------------------------------------------------------------
def test_the_default_deployment_keeps_the_old_names() -> None:
    ns = Namespace()
    assert (ns.tasks_stream, ns.events_stream, ns.consumer, ns.control_subject) == (
        "WORKFLOW_TASKS", "WORKFLOW_EVENTS", "station-wf-worker", "wf.control")
    subject = encode_task(run_task("r1")).subject
    assert ns.wire(subject) == subject == ns.local(subject) == "wf.task.run.r1"


def test_another_deployment_has_its_own_names_and_subjects() -> None:
    ns = Namespace("blue-2")
    assert (ns.tasks_stream, ns.events_stream, ns.consumer, ns.control_subject) == (
        "WORKFLOW_TASKS_blue-2", "WORKFLOW_EVENTS_blue-2", "station-wf-worker-blue-2", "wf.blue-2.control")
    subject = encode_task(step_task("r1", "s1", 1, "r1:s1:1")).subject
    assert ns.wire(subject) == "wf.blue-2.task.step.r1.s1"
    assert ns.local(ns.wire(subject)) == subject
    assert ns.wire("wf.event.run.r1") == "wf.blue-2.event.run.r1"
    assert not ns.wire("wf.task.>").startswith("wf.task.")  # never inside the default stream's subjects


@pytest.mark.parametrize("name", ["", "a.b", "a b", "x" * 33, "wf>", "task", "event", "é"])
def test_a_bad_deployment_name_is_refused_with_a_clear_message(name: str) -> None:
    settings = settings_from_env({"STATION_DEPLOYMENT": name})
    with pytest.raises(ValueError, match="STATION_DEPLOYMENT"):
        settings.validate()


def test_replicas_need_an_external_cluster() -> None:
    with pytest.raises(ValueError, match="STATION_NATS_REPLICAS"):
        settings_from_env({"STATION_NATS_REPLICAS": "3"}).validate()
    with pytest.raises(ValueError, match="STATION_NATS_REPLICAS"):
        settings_from_env({"STATION_NATS_REPLICAS": "0", "STATION_NATS_EMBEDDED": "false",
                           "STATION_NATS_URL": "nats://127.0.0.1:4222"}).validate()
    settings_from_env({"STATION_NATS_REPLICAS": "3", "STATION_NATS_EMBEDDED": "false",
                       "STATION_NATS_URL": "nats://a:4222,nats://b:4222,nats://c:4222"}).validate()


def test_control_messages_round_trip_and_anything_else_is_ignored() -> None:
    assert decode_control(encode_control("cancel", "run-1")) == ("cancel", "run-1")
    assert json.loads(encode_control("cancel", "run-1")) == {"op": "cancel", "runId": "run-1"}
    for junk in (b"", b"\xff", b"[1]", b'{"op": "delete", "runId": "r"}', b'{"op": "cancel"}',
                 b'{"op": "cancel", "runId": 7}', b"[" * 100_000):
        assert decode_control(junk) is None


# -- two daemons, two deployments, one nats-server ------------------------------------------------
def _stream_subjects(nats_server: NatsServer, stream: str) -> set[str]:
    async def go(js: Any) -> set[str]:
        info = await js.stream_info(stream, subjects_filter=">")
        return set(info.state.subjects or {})

    return nats_server.run(go)


def test_two_deployments_on_one_nats_never_see_each_others_tasks(
        nats_server: NatsServer, daemon_factory: Callable[..., Daemon]) -> None:
    external = {"STATION_NATS_EMBEDDED": "false", "STATION_NATS_URL": nats_server.url}
    a = daemon_factory("a", dict(external))  # the default deployment: the names of every earlier release
    # B terminates a task of a run it does not know on its second delivery: if it ever got A's, A's run would be lost.
    b = daemon_factory("b", {**external, "STATION_DEPLOYMENT": "blue", "STATION_MAX_DELIVERIES": "1"})
    for d in (a, b):
        d.add_agent("worker")
        d.add_agent("slow")
        d.add_workflow("one", ONE_AGENT)
        d.add_workflow("held", HELD)
        d.start()
    runs_a = [a.start_run("one")["id"] for _ in range(3)]
    runs_b = [b.start_run("one")["id"] for _ in range(3)]
    for run_id in runs_a:
        a.wait_status(run_id)
    for run_id in runs_b:
        b.wait_status(run_id)

    # A dies holding a step: its task stays unacked in A's stream past ack_wait while B keeps pulling.
    assert a.agent_server is not None
    hold = threading.Event()
    a.agent_server.behave("slow", hold=hold)
    held = a.start_run("held")["id"]
    wait_until(lambda: a.agent_server.calls_for("slow"), what="A's held call")
    a.kill()
    time.sleep(6 + 3)  # STATION_ACK_WAIT_SECONDS (6) and then some: the task is due for redelivery
    more_b = b.start_run("one")["id"]
    b.wait_status(more_b)
    assert held not in b.log()
    assert "does not know" not in b.log()
    assert any(s.startswith(f"wf.task.step.{held}.") for s in _stream_subjects(nats_server, "WORKFLOW_TASKS"))

    hold.set()
    a.start()  # its consumer is reset: the dead process's task comes back at once
    run = a.wait_status(held, "COMPLETED", timeout=40)
    assert run["status"] == "COMPLETED"

    events_a = _stream_subjects(nats_server, "WORKFLOW_EVENTS")
    events_b = _stream_subjects(nats_server, "WORKFLOW_EVENTS_blue")
    assert all(s.startswith("wf.event.") for s in events_a) and events_a
    assert all(s.startswith("wf.blue.event.") for s in events_b) and events_b
    assert not any(r in s for r in runs_b + [more_b] for s in events_a)
    assert not any(r in s for r in runs_a + [held] for s in events_b)
    assert "does not know" not in a.log() + b.log()
    assert a.stop() == 0 and b.stop() == 0


# -- the consumer on a shared store ---------------------------------------------------------------
def test_a_shared_store_binds_to_the_consumer_and_a_single_one_resets_it(nats_server: NatsServer) -> None:
    """A replica starting beside live ones must not delete the consumer (their in-flight tasks would be
    handed out again at once); a single daemon does, to get its dead predecessor's work back now."""
    ns = Namespace("own")
    task = encode_task(run_task("run-in-flight"))

    async def go() -> dict[str, Any]:
        first = Bus(nats_server.url, namespace=ns, ack_wait=60)
        await first.connect()
        await first.ensure_topology()
        await first.claim_consumer(shared=True)
        await first.publish(task.subject, task.body, task.msg_id)
        got = []
        async for msg in first.pull(1, expires=2):
            got.append(msg)  # delivered, never acked: in flight on "another replica"
        assert first.js is not None
        before = await first.js.consumer_info(ns.tasks_stream, ns.consumer)

        second = Bus(nats_server.url, namespace=ns, ack_wait=60, max_ack_pending=4096)
        await second.connect()
        await second.ensure_topology()
        await second.claim_consumer(shared=True)
        assert second.js is not None
        shared = await second.js.consumer_info(ns.tasks_stream, ns.consumer)
        await first.ensure_topology()  # a reconciler pass of a replica with other settings changes nothing
        passed = await second.js.consumer_info(ns.tasks_stream, ns.consumer)
        await second.claim_consumer(shared=False)
        reset = await second.js.consumer_info(ns.tasks_stream, ns.consumer)
        await first.close()
        await second.close()
        return {"got": len(got), "before": before, "shared": shared, "passed": passed, "reset": reset}

    out = asyncio.run(go())
    assert out["got"] == 1
    before, shared, reset = out["before"], out["shared"], out["reset"]
    assert before.num_ack_pending == 1
    assert shared.created == before.created  # bound, not recreated
    assert shared.num_ack_pending == 1 and shared.delivered.stream_seq == before.delivered.stream_seq
    assert shared.config.max_ack_pending == 4096  # what may change was updated in place
    assert out["passed"].config.max_ack_pending == 4096 and out["passed"].created == before.created
    assert reset.created != before.created and reset.num_ack_pending == 0  # single replica: reset


def test_a_replica_restarting_beside_a_live_one_leaves_its_in_flight_task_alone(
        postgres_db: str, nats_server: NatsServer, daemon_factory: Callable[..., Daemon]) -> None:
    """On a shared store a restart binds to the consumer: B's unacked task is not handed to A at once
    (a reset would, and A would call the agent a second time while B's call is still running)."""
    a, b = replicas(daemon_factory, 2, postgres_db, nats_server.url, {"held": HELD}, agents=("slow",),
                    env={"STATION_ACK_WAIT_SECONDS": "30"}, start=False)
    assert b.agent_server is not None
    beh = b.agent_server.behave("slow", hold=threading.Event())
    b.start()
    run_id = b.start_run("held")["id"]
    wait_until(lambda: beh.active == 1, what="B's held agent call")

    def consumer(js: Any) -> Any:
        return js.consumer_info("WORKFLOW_TASKS", "station-wf-worker")

    before = nats_server.run(consumer)
    a.start()
    assert a.stop() == 0, a.log()
    a.start()
    time.sleep(3)
    after = nats_server.run(consumer)
    assert after.created == before.created and after.num_ack_pending == 1
    assert len(b.agent_server.calls_for("slow")) == 1 and beh.disconnects == 0
    assert beh.hold is not None
    beh.hold.set()
    assert a.wait_status(run_id, "COMPLETED")["status"] == "COMPLETED"
    assert len(b.agent_server.calls_for("slow")) == 1
    assert a.stop() == 0 and b.stop() == 0
