"""Every loop survives its own errors, tested on a real daemon: the event relay past an event over
NATS max_payload, the SQLite writer on a full database and on repeated I/O errors, the timer loop
past a timer that cannot fire."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from typing import Any

import httpx

from tests.conftest import Daemon, NatsServer, wait_until

ONE_STEP = """
id: {id}
start: call
states:
  - name: call
    type: operation
    action: agent.run
    input: {{ agent: {agent}, task: "t" }}
    end: true
"""


def _events_on_stream(nats_server: NatsServer) -> list[dict[str, Any]]:
    """Every message in WORKFLOW_EVENTS, read with nats-py (an ephemeral ordered consumer)."""

    async def read(js: Any) -> list[dict[str, Any]]:
        info = await js.stream_info("WORKFLOW_EVENTS")
        sub = await js.subscribe("wf.event.>", ordered_consumer=True)
        out: list[dict[str, Any]] = []
        try:
            for _ in range(info.state.messages):
                msg = await sub.next_msg(timeout=5)
                out.append(json.loads(msg.data))
        finally:
            await sub.unsubscribe()
        return out

    return nats_server.run(read)


def test_oversized_event_does_not_stop_the_event_stream(daemon: Daemon, nats_server: NatsServer) -> None:
    daemon.add_agent("big")
    daemon.add_workflow("big", ONE_STEP.format(id="big", agent="big"))
    daemon.add_workflow("small", ONE_STEP.format(id="small", agent="worker"))
    daemon.agent_server.behave("big", reply={"blob": "x" * 1_500_000})  # ~1.5 MB: over NATS' 1 MiB
    daemon.env.update({"STATION_NATS_EMBEDDED": "false", "STATION_NATS_URL": nats_server.url})
    daemon.start()
    big = daemon.start_run("big")
    daemon.wait_status(big["id"])
    later = [daemon.start_run("small") for _ in range(3)]
    for run in later:
        daemon.wait_status(run["id"])

    def stream_has_all() -> list[dict[str, Any]] | None:
        events = _events_on_stream(nats_server)
        wanted = {(r["id"], e["seq"]) for r in [big, *later] for e in daemon.events(r["id"])}
        got = {(e["runId"], e["seq"]) for e in events}
        return events if wanted <= got else None

    events = wait_until(stream_has_all, 20, interval=0.5, what="every event of every run on WORKFLOW_EVENTS")
    stubs = [e for e in events if e.get("truncated")]
    assert len(stubs) == 1 and stubs[0]["runId"] == big["id"] and stubs[0]["type"] == "step.succeeded"
    assert stubs[0]["bytes"] > 1_500_000 and "payload" not in stubs[0]
    full = next(e for e in daemon.events(big["id"]) if e["seq"] == stubs[0]["seq"])  # the API has it whole
    assert len(json.dumps(full)) > 1_500_000
    assert all("payload" in e for e in events if not e.get("truncated"))
    assert "over NATS max_payload; publishing a stub" in daemon.log()


def test_events_carry_the_input_and_outputs_once() -> None:
    """run.started no longer repeats the input (twice, before); step.succeeded carries its output once;
    the events still rebuild the context exactly."""
    from station_wf.engine import interpreter as ip

    run_input = {"blob": "y" * 600_000, "n": 1}
    defn = {"id": "w", "start": "a", "states": {"a": {"name": "a", "type": "inject", "data": {"m": 2}, "end": True}}}
    context = ip.initial_context(defn, "r", 1, run_input, "t0")
    context["_cronTriggeredAt"] = "t1"
    context["n"] = 5  # an extra that overrides an input key is kept
    started = ip.started_payload(context)
    assert len(json.dumps(started)) < 1000 and started["context"]["n"] == 5
    output = {"big": "z" * 1000}
    succeeded = {"attempt": 1, "output": output, "write": {"scope": "", "path": "steps.a"}}
    rebuilt = ip.rebuild_context([("run.created", {"input": run_input}), ("run.started", started),
                                  ("step.succeeded", succeeded)])
    assert rebuilt == {**context, "steps": {"a": output}}


def _sleeper(workflow_id: str) -> str:
    return f"""
id: {workflow_id}
start: nap
states:
  - {{ name: nap, type: sleep, duration: 0.3s, next: done }}
  - {{ name: done, type: inject, data: {{ woke: true }}, end: true }}
"""


def test_a_failing_timer_is_quarantined_and_the_others_fire(daemon: Daemon) -> None:
    """The poison run's sleep timer raises every time it fires (a test hook); the other runs' sleeps,
    due in the same batches, still complete, and the poison timer ends quarantined with its error."""
    daemon.add_workflow("poison", _sleeper("poison"))
    daemon.add_workflow("nap", _sleeper("nap"))
    daemon.start(extra_env={"STATION_FAULT_ERRORS": "timer.fire.poison:1", "STATION_TIMER_MAX_ATTEMPTS": "3"})
    poison = daemon.start_run("poison")
    naps = [daemon.start_run("nap") for _ in range(5)]
    for run in naps:
        assert daemon.wait_status(run["id"], timeout=30)["context"]["woke"] is True
    db = sqlite3.connect(daemon.data_dir / "station-wf.db")

    def quarantined() -> tuple | None:
        return db.execute("SELECT attempts, error, fired_at FROM timers WHERE run_id = ? AND fired_at IS NOT NULL",
                          (poison["id"],)).fetchone()

    attempts, error, fired_at = wait_until(quarantined, 20, interval=0.2, what="the poison timer to be quarantined")
    assert attempts == 3 and fired_at is not None
    assert json.loads(error)["message"] == "fault injected at timer.fire.poison"
    assert daemon.run(poison["id"])["status"] == "RUNNING"  # its sleep never completed: nothing advanced it
    assert "quarantined" in daemon.log() and daemon.proc is not None and daemon.proc.poll() is None
    # The loop does not spin on it: three attempts (back-off 1 s, 2 s), not one every 100 ms.
    assert daemon.log().count("failed (attempt") == 2
    later = daemon.start_run("nap")  # timers keep firing afterwards
    daemon.wait_status(later["id"], timeout=30)
    db.close()
