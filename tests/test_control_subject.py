"""Cancels on the deployment's core-NATS control subject (issue 15): the replica that commits a cancel
announces it, every replica interrupts its executions of that run, and the database stays the truth
(a message for a run that is not cancelled interrupts nothing)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import nats

from station_wf.protocol import encode_control
from tests.conftest import Daemon, NatsServer, replicas, wait_until

HELD = """
id: held
start: call
states:
  - { name: call, type: operation, action: agent.run, input: { agent: slow, task: "t" }, end: true }
"""


class Listener:
    """A core-NATS subscriber on one subject, on its own thread and loop, recording what arrives."""

    def __init__(self, url: str, subject: str) -> None:
        self.url, self.subject = url, subject
        self.messages: list[bytes] = []
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        nc = await nats.connect(self.url)

        async def on_msg(msg: Any) -> None:
            self.messages.append(msg.data)

        await nc.subscribe(self.subject, cb=on_msg)
        await nc.flush()
        self._ready.set()
        while not self._stop.is_set():
            await asyncio.sleep(0.05)
        await nc.close()

    def __enter__(self) -> Listener:
        self._thread.start()
        assert self._ready.wait(10), "listener did not subscribe"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _publish(url: str, subject: str, data: bytes) -> None:
    async def go() -> None:
        nc = await nats.connect(url)
        await nc.publish(subject, data)
        await nc.flush()
        await nc.close()

    asyncio.run(go())


def _held_daemon(daemon_factory: Callable[..., Daemon], nats_server: NatsServer, deployment: str) -> tuple[Daemon, Any]:
    d = daemon_factory(deployment, {"STATION_NATS_EMBEDDED": "false", "STATION_NATS_URL": nats_server.url,
                                    "STATION_DEPLOYMENT": deployment})
    d.add_agent("slow")
    d.add_workflow("held", HELD)
    assert d.agent_server is not None
    beh = d.agent_server.behave("slow", hold=threading.Event())
    d.start()
    return d, beh


def test_a_cancel_is_announced_on_the_control_subject_after_its_commit(
        nats_server: NatsServer, daemon_factory: Callable[..., Daemon]) -> None:
    d, beh = _held_daemon(daemon_factory, nats_server, "ctl")
    run_id = d.start_run("held")["id"]
    wait_until(lambda: beh.active == 1, what="the held agent call")
    with Listener(nats_server.url, "wf.ctl.control") as listener, Listener(nats_server.url, "wf.control") as other:
        resp = d.request("POST", f"/api/v1/workflow-runs/{run_id}/cancel", json={"reason": "stop"})
        assert resp.status_code == 200, resp.text
        wait_until(lambda: listener.messages, 10, what="the cancel on wf.ctl.control")
        wait_until(lambda: beh.disconnects == 1, 10, what="the held call to be interrupted")
        time.sleep(0.3)
    assert listener.messages == [encode_control("cancel", run_id)]
    assert other.messages == []  # the default deployment's replicas are not told
    assert d.run(run_id)["status"] == "CANCELLED"
    assert d.stop() == 0, d.log()


def test_a_control_message_for_a_run_that_is_not_cancelled_interrupts_nothing(
        nats_server: NatsServer, daemon_factory: Callable[..., Daemon]) -> None:
    """The database is the truth: a stale, forged or early message cannot fail a live step."""
    d, beh = _held_daemon(daemon_factory, nats_server, "truth")
    run_id = d.start_run("held")["id"]
    wait_until(lambda: beh.active == 1, what="the held agent call")
    for data in (encode_control("cancel", run_id), b"not json", b'{"op": "cancel", "runId": 1}',
                 encode_control("cancel", "no-such-run")):
        _publish(nats_server.url, "wf.truth.control", data)
    time.sleep(1.5)
    assert beh.disconnects == 0 and beh.active == 1
    assert beh.hold is not None
    beh.hold.set()
    run = d.wait_status(run_id, "COMPLETED")
    assert run["status"] == "COMPLETED"
    assert d.agent_server is not None and len(d.agent_server.calls_for("slow")) == 1
    assert d.stop() == 0, d.log()


def test_a_cancel_through_one_replica_interrupts_the_call_another_replica_is_making(
        postgres_db: str, nats_server: NatsServer, daemon_factory: Callable[..., Daemon]) -> None:
    """Two replicas on one Postgres database and one NATS: B executes the step, A's API cancels the run;
    A has nothing in flight, so only the control subject can reach B's call."""
    a, b = replicas(daemon_factory, 2, postgres_db, nats_server.url, {"held": HELD}, agents=("slow",), start=False)
    assert b.agent_server is not None
    beh = b.agent_server.behave("slow", hold=threading.Event())
    b.start()
    run_id = b.start_run("held")["id"]
    wait_until(lambda: beh.active == 1, what="B's held agent call")  # only B is up: B is making it
    a.start()
    resp = a.request("POST", f"/api/v1/workflow-runs/{run_id}/cancel", json={"reason": "from A"})
    assert resp.status_code == 200, resp.text
    wait_until(lambda: beh.disconnects == 1, 15, what="B's call to be interrupted by A's cancel")
    wait_until(lambda: "interrupted 1 execution(s) of cancelled run" in b.log(), 10, what="B's log line")
    assert a.run(run_id)["status"] == b.run(run_id)["status"] == "CANCELLED"
    assert len(b.agent_server.calls_for("slow")) == 1
    assert a.stop() == 0, a.log()
    assert b.stop() == 0, b.log()
