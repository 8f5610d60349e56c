"""The pipelined publish path (`bus/wire.py`) against a real nats-server, and the daemon's event-loop and
event-mirror settings on a real daemon."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from station_wf.config import settings_from_env
from station_wf.protocol import encode_task, header_block, step_task
from tests.conftest import Daemon, NatsServer, wait_until

TWO_STEPS = """
id: two
start: a
states:
  - { name: a, type: inject, data: { a: 1 }, next: b }
  - { name: b, type: operation, action: agent.run, input: { agent: worker, task: "t" }, end: true }
"""


def test_many_windows_each_message_acked_once_with_its_headers(nats_server: NatsServer) -> None:
    """2,500 messages (more than one window), a duplicate among them, a message over max_payload and
    one with a subject that would inject protocol: each gets its own outcome, the stored messages carry
    their precomputed headers, the duplicate is dropped by Nats-Msg-Id, and no ack handler is left."""
    from nats.errors import BadSubjectError, MaxPayloadError
    from nats.js.api import StreamConfig

    from station_wf.bus.jetstream import PUBLISH_WINDOW, Bus

    async def go() -> tuple[list[BaseException | None], Any, Any, int]:
        bus = Bus(nats_server.url)
        await bus.connect()
        assert bus.js is not None
        await bus.js.add_stream(StreamConfig(name="W", subjects=["w.>"], duplicate_window=60))
        env = encode_task(step_task("run-1", "s1", 3, "run-1:s1:3", "00-trace-span-01"))
        items = [(f"w.n.{i}", header_block(f"m{i}"), str(i).encode()) for i in range(2500)]
        items.append((f"w.{env.subject}", header_block(env.msg_id, env.headers), env.body))
        items.append(("w.n.7", header_block("m7"), b"dup"))
        items.append(("w.big", header_block("big"), b"x" * 2_000_000))
        items.append(("w.bad\r\nPUB x 1", header_block("bad"), b"1"))
        try:
            outcomes = await bus.publish_wire(items, timeout=20)
            info = await bus.js.stream_info("W")
            task = await bus.js.get_last_msg("W", f"w.{env.subject}")
            return outcomes, info, task, bus._acks.pending
        finally:
            await bus.close()

    assert PUBLISH_WINDOW < 2500
    outcomes, info, task, pending = asyncio.run(go())
    assert outcomes[:2502] == [None] * 2502
    assert isinstance(outcomes[2502], MaxPayloadError) and isinstance(outcomes[2503], BadSubjectError)
    assert info.state.messages == 2501  # the duplicate was acked but not stored twice
    assert task.headers["Nats-Msg-Id"] == "step:run-1:s1:3"
    assert task.headers["idempotency-key"] == "run-1:s1:3" and task.headers["traceparent"] == "00-trace-span-01"
    assert json.loads(task.data) == {"runId": "run-1", "stepId": "s1", "attempt": 3}
    assert pending == 0


def test_a_closed_connection_fails_each_message_without_raising(nats_server: NatsServer) -> None:
    from station_wf.bus.jetstream import Bus

    async def go() -> list[BaseException | None]:
        bus = Bus(nats_server.url)
        await bus.connect()
        assert bus.nc is not None
        nc = bus.nc
        await nc.close()
        return await bus.publish_wire([("w.a", header_block("a"), b"1"), ("w.b", header_block("b"), b"2")], timeout=2)

    outcomes = asyncio.run(go())
    assert len(outcomes) == 2 and all(isinstance(o, Exception) for o in outcomes)


def test_event_loop_setting_is_checked() -> None:
    assert settings_from_env({}).event_loop == "uvloop" and settings_from_env({}).event_mirror is True
    with pytest.raises(ValueError, match="STATION_EVENT_LOOP"):
        settings_from_env({"STATION_EVENT_LOOP": "trio"}).validate()
    assert settings_from_env({"STATION_EVENT_MIRROR": "off"}).event_mirror is False


def _stream_subjects(nats_server: NatsServer) -> dict[str, int]:
    async def read(js: Any) -> dict[str, int]:
        info = await js.stream_info("WORKFLOW_EVENTS", subjects_filter=">")
        return dict(info.state.subjects or {})

    return nats_server.run(read)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_daemon_runs_on_either_event_loop_and_mirrors_every_event(daemon: Daemon, nats_server: NatsServer,
                                                                      loop: str) -> None:
    """A run with an inline step and an agent step completes on both loops (the writer's cross-thread
    futures, the sandbox processes, uvicorn and nats-py all on it), and every event reaches
    WORKFLOW_EVENTS, in order per run."""
    daemon.add_workflow("two", TWO_STEPS)
    daemon.env.update({"STATION_NATS_EMBEDDED": "false", "STATION_NATS_URL": nats_server.url,
                       "STATION_EVENT_LOOP": loop})
    daemon.start()
    runs = [daemon.start_run("two", {"i": i}) for i in range(5)]
    for run in runs:
        assert daemon.wait_status(run["id"])["status"] == "COMPLETED"
    wanted = sum(len(daemon.events(r["id"])) for r in runs)

    async def read(js: Any) -> list[dict[str, Any]]:
        sub = await js.subscribe("wf.event.>", ordered_consumer=True)
        out: list[dict[str, Any]] = []
        try:
            for _ in range(wanted):
                out.append(json.loads((await sub.next_msg(timeout=10)).data))
        finally:
            await sub.unsubscribe()
        return out

    wait_until(lambda: sum(_stream_subjects(nats_server).values()) >= wanted, 20, interval=0.2,
               what="every event on WORKFLOW_EVENTS")
    events = nats_server.run(read)
    for run in runs:
        seqs = [e["seq"] for e in events if e["runId"] == run["id"]]
        assert seqs == [e["seq"] for e in daemon.events(run["id"])]
    assert daemon.stop() == 0


def test_with_the_mirror_off_nothing_reaches_workflow_events_and_the_api_has_it_all(
        daemon: Daemon, nats_server: NatsServer) -> None:
    daemon.add_workflow("two", TWO_STEPS)
    daemon.env.update({"STATION_NATS_EMBEDDED": "false", "STATION_NATS_URL": nats_server.url,
                       "STATION_EVENT_MIRROR": "off"})
    daemon.start()
    run = daemon.start_run("two")
    assert daemon.wait_status(run["id"])["status"] == "COMPLETED"
    events = daemon.events(run["id"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)) and events[-1]["type"] == "run.completed"
    assert "event-relay" not in daemon.request("GET", "/metrics").text  # no mirror loop at all
    assert _stream_subjects(nats_server) == {}
