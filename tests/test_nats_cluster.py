"""A daemon on a real 3-node NATS JetStream cluster (issue 15): R3 streams, one node killed -9 and
restarted while runs keep completing; an existing R1 stream scaled to R3 in place."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from station_wf.bus.jetstream import Bus
from station_wf.protocol import Namespace, encode_task, run_task
from tests.conftest import Daemon, wait_until
from tests.nats_cluster import NatsCluster

ONE_AGENT = """
id: one
start: call
states:
  - { name: call, type: operation, action: agent.run, input: { agent: worker, task: "t" }, end: true }
"""


def _replicas(cluster: NatsCluster, stream: str) -> tuple[int, int, str | None]:
    """(configured num_replicas, peers besides the leader that are current, the leader)."""

    async def info(js: Any) -> tuple[int, int, str | None]:
        si = await js.stream_info(stream)
        peers = [p for p in si.cluster.replicas or [] if p.current]
        return si.config.num_replicas, len(peers), si.cluster.leader

    return cluster.run(info)


def _node_index(cluster: NatsCluster, name: str | None) -> int:
    return next(i for i, n in enumerate(cluster.nodes) if n.name == name)


def _complete(daemon: Daemon, n: int, timeout: float = 60.0) -> list[str]:
    runs = [daemon.start_run("one", {"i": i})["id"] for i in range(n)]
    for run_id in runs:
        daemon.wait_status(run_id, "COMPLETED", timeout=timeout)
    return runs


def test_runs_keep_completing_while_a_nats_node_is_killed_and_restarted(
        nats_cluster: NatsCluster, daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory("r3", {"STATION_NATS_EMBEDDED": "false", "STATION_NATS_URL": nats_cluster.url,
                              "STATION_NATS_REPLICAS": "3"})
    d.add_agent("worker")
    d.add_workflow("one", ONE_AGENT)
    d.start()
    _complete(d, 3)
    for stream in ("WORKFLOW_TASKS", "WORKFLOW_EVENTS"):
        configured, peers, _ = wait_until(lambda s=stream: (r := _replicas(nats_cluster, s))[1] == 2 and r,
                                          30, interval=0.5, what=f"{stream} on three nodes")
        assert configured == 3 and peers == 2

    # Kill the node leading the task stream: a new leader is elected, the daemon's client fails over.
    leader = _replicas(nats_cluster, "WORKFLOW_TASKS")[2]
    victim = _node_index(nats_cluster, leader)
    nats_cluster.kill(victim)
    during = _complete(d, 5, timeout=90)
    assert d.proc is not None and d.proc.poll() is None, d.log()

    nats_cluster.restart(victim)
    after = _complete(d, 3)
    wait_until(lambda: _replicas(nats_cluster, "WORKFLOW_TASKS")[1] == 2, 60, interval=0.5,
               what="the restarted node to catch up on WORKFLOW_TASKS")
    calls = d.agent_server.calls_for("worker") if d.agent_server else []
    assert len({c.idempotency_key for c in calls}) >= 3 + len(during) + len(after)
    consumer = nats_cluster.run(lambda js: js.consumer_info("WORKFLOW_TASKS", "station-wf-worker"))
    assert consumer.config.num_replicas == 3
    assert d.stop() == 0, d.log()


def test_an_r1_stream_is_scaled_to_r3_in_place(nats_cluster: NatsCluster) -> None:
    """An upgrade from one NATS node to a cluster: the queued task survives, nothing is deleted."""
    ns = Namespace("scale")
    task = encode_task(run_task("run-queued"))

    async def go() -> tuple[int, int, str, str, int]:
        one = Bus(nats_cluster.url, namespace=ns, replicas=1)
        await one.connect()
        await one.ensure_topology()
        await one.publish(task.subject, task.body, task.msg_id)
        assert one.js is not None
        created = (await one.js.consumer_info(ns.tasks_stream, ns.consumer)).created
        await one.close()
        three = Bus(nats_cluster.url, namespace=ns, replicas=3)
        await three.connect()
        await three.ensure_topology(scale=True)  # what a start-up does
        await three.claim_consumer(shared=True)
        assert three.js is not None
        deadline = time.monotonic() + 60
        while True:
            info = await three.js.stream_info(ns.tasks_stream)
            peers = len([p for p in info.cluster.replicas or [] if p.current])
            if peers == 2 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        consumer = await three.js.consumer_info(ns.tasks_stream, ns.consumer)
        live = await three.live_task_subjects()
        await three.close()
        again = Bus(nats_cluster.url, namespace=ns, replicas=1)  # a reconciler pass of an R1-configured replica
        await again.connect()
        await again.ensure_topology()
        assert again.js is not None
        assert (await again.js.stream_info(ns.tasks_stream)).config.num_replicas == 3  # not scaled back down
        await again.close()
        assert live == {task.subject}
        return info.config.num_replicas, peers, str(created), str(consumer.created), consumer.num_pending

    replicas, peers, created_before, created_after, pending = asyncio.run(go())
    assert (replicas, peers) == (3, 2)
    assert created_after == created_before  # the same consumer, updated, not recreated
    assert pending == 1


def test_a_daemon_started_while_the_cluster_has_no_quorum_waits_for_it(
        nats_cluster: NatsCluster, daemon_factory: Callable[..., Daemon]) -> None:
    """Two of three nodes down: JetStream cannot answer (no meta leader), so the start-up's stream and
    consumer calls time out. The daemon retries (not ready meanwhile) instead of exiting, and serves
    once a second node is back."""
    d = daemon_factory("noquorum", {"STATION_NATS_EMBEDDED": "false", "STATION_NATS_URL": nats_cluster.nodes[0].url,
                                    "STATION_NATS_REPLICAS": "3"})
    d.add_agent("worker")
    d.add_workflow("one", ONE_AGENT)
    nats_cluster.kill(1)
    nats_cluster.kill(2)
    d.start(wait=False)
    wait_until(lambda: "JetStream streams and consumer" in d.log(), 40, what="a start-up retry in the log")
    assert d.proc is not None and d.proc.poll() is None  # still starting, not exited
    nats_cluster.restart(1)
    d.wait_ready(60)
    assert len(_complete(d, 3)) == 3
