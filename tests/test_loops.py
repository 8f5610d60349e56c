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
    from station_wf.core import history

    run_input = {"blob": "y" * 600_000, "n": 1}
    defn = {"id": "w", "start": "a", "states": {"a": {"name": "a", "type": "inject", "data": {"m": 2}, "end": True}}}
    context = history.initial_context(defn, "r", 1, run_input, "t0")
    context["_cronTriggeredAt"] = "t1"
    context["n"] = 5  # an extra that overrides an input key is kept
    started = history.started_payload(context)
    assert len(json.dumps(started)) < 1000 and started["context"]["n"] == 5
    output = {"big": "z" * 1000}
    succeeded = {"attempt": 1, "output": output, "write": {"scope": "", "path": "steps.a"}}
    rebuilt = history.rebuild_context([("run.created", {"input": run_input}), ("run.started", started),
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
    ended = daemon.wait_status(poison["id"], "FAILED", timeout=10)  # quarantined: the run does not wait forever
    assert ended["error"]["type"] == "engine_error" and "sleep timer failed 3 times" in ended["error"]["message"]
    assert "quarantined" in daemon.log() and daemon.proc is not None and daemon.proc.poll() is None
    # The loop does not spin on it: three attempts (back-off 1 s, 2 s), not one every 100 ms.
    assert daemon.log().count("failed (attempt") == 2
    later = daemon.start_run("nap")  # timers keep firing afterwards
    daemon.wait_status(later["id"], timeout=30)
    db.close()


def _post_run(daemon: Daemon, workflow_id: str, run_input: dict[str, Any]) -> httpx.Response | None:
    try:
        return httpx.post(daemon.base + "/api/v1/workflow-runs", json={"workflowId": workflow_id, "input": run_input},
                          timeout=15)
    except httpx.TransportError:
        return None  # the daemon is gone (the fatal case)


def _page_count_bytes(path: Any) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
    finally:
        db.close()


def test_database_full_answers_507_then_everything_completes_after_the_cap_is_raised(daemon: Daemon) -> None:
    """SQLITE_FULL for real: STATION_DATABASE_MAX_BYTES a little above what the file holds, then big runs.
    Writes answer 507 at once (never hang), reads and the daemon stay up, /healthz says the writer fails,
    the file is not corrupt, and with the cap raised every run that was accepted completes."""
    daemon.add_workflow("one", ONE_STEP.format(id="one", agent="worker"))
    daemon.start()
    daemon.stop()
    db_path = daemon.data_dir / "station-wf.db"
    cap = _page_count_bytes(db_path) + 1_000_000
    daemon.start(extra_env={"STATION_DATABASE_MAX_BYTES": str(cap)})
    accepted: list[str] = []
    refused: list[httpx.Response] = []
    for i in range(60):
        t0 = time.monotonic()
        resp = _post_run(daemon, "one", {"i": i, "blob": "b" * 60_000})
        assert resp is not None and time.monotonic() - t0 < 10, "a write hung"
        if resp.status_code == 201:
            accepted.append(resp.json()["run"]["id"])
            continue
        assert resp.status_code == 507, resp.text
        error = resp.json()["error"]
        assert error["code"] == "storage_full" and error["request_id"] and "nothing was stored" in error["message"]
        refused.append(resp)
        if len(refused) >= 3:
            break
    assert accepted and len(refused) == 3, (len(accepted), len(refused))
    health = httpx.get(daemon.base + "/healthz", timeout=5)
    assert health.status_code == 503 and "full" in health.json()["writer"]["lastError"]
    assert daemon.request("GET", "/api/v1/workflow-runs").status_code == 200  # reads still work
    assert daemon.proc is not None and daemon.proc.poll() is None  # a full disk is not a reason to exit
    daemon.stop()
    db = sqlite3.connect(db_path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()

    daemon.start()  # the cap raised (none)
    for run_id in accepted:
        done = daemon.wait_status(run_id, timeout=60)
        assert done["context"]["steps"]["call"]["ok"] is True
    runs = daemon.request("GET", "/api/v1/workflow-runs", params={"limit": 200}).json()["runs"]
    assert sorted(r["id"] for r in runs) == sorted(accepted)  # a refused start stored nothing
    assert httpx.get(daemon.base + "/healthz", timeout=5).status_code == 200


def test_repeated_fatal_writer_errors_stop_the_daemon_non_zero(daemon: Daemon) -> None:
    """After start-up's four commits (the definitions, the lease, the environment's webhook subscriptions,
    ...) every COMMIT fails with an
    I/O error (a test hook): API writes answer 503 at once, and after a few broken groups the daemon exits
    75 for its supervisor, instead of hanging with /healthz green. Restarted healthy, nothing half-written is left and runs complete."""
    daemon.add_workflow("one", ONE_STEP.format(id="one", agent="worker"))
    daemon.env["STATION_DATABASE_URL"] = f"sqlite:///{daemon.data_dir / 'station-wf.db'}"  # SQLite's fatal path
    daemon.start(extra_env={"STATION_FAULT_ERRORS": "writer.commit:4"})
    assert daemon.proc is not None
    answers: list[int] = []
    for i in range(40):
        resp = _post_run(daemon, "one", {"i": i})
        if resp is None or daemon.proc.poll() is not None:
            break
        answers.append(resp.status_code)
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "storage_unavailable", resp.text
        try:
            health = httpx.get(daemon.base + "/healthz", timeout=5)
        except httpx.TransportError:
            break  # it exited meanwhile
        assert health.status_code == 503 and "disk I/O error" in health.json()["writer"]["lastError"]
    assert daemon.proc.wait(30) == 75, daemon.log()
    assert answers and "refusing writes" in daemon.log()

    daemon.start()
    assert daemon.request("GET", "/api/v1/workflow-runs").json()["runs"] == []
    daemon.wait_status(daemon.start_run("one")["id"])


def test_publish_each_reports_every_message_on_its_own(nats_server: NatsServer) -> None:
    """Against a real nats-server: a full stream refuses the later messages while the earlier ones are
    stored, a duplicate counts as stored, an oversized one and one without a stream fail alone."""
    from nats.errors import MaxPayloadError
    from nats.js.api import DiscardPolicy, StreamConfig
    from nats.js.errors import APIError, NoStreamResponseError

    from station_wf.bus.jetstream import Bus

    async def go() -> list[BaseException | None]:
        bus = Bus(nats_server.url)
        await bus.connect()
        assert bus.js is not None
        await bus.js.add_stream(StreamConfig(name="T", subjects=["t.>"], max_msgs=2, discard=DiscardPolicy.NEW,
                                             duplicate_window=60))
        items = [("t.a", b"1", "m1", {}), ("t.a", b"1", "m1", {}), ("t.b", b"2", "m2", {}), ("t.c", b"3", "m3", {}),
                 ("t.d", b"x" * 2_000_000, "m4", {}), ("nostream.x", b"5", "m5", {})]
        try:
            return await bus.publish_each(items, timeout=5)
        finally:
            await bus.close()

    outcomes = asyncio.run(go())
    assert outcomes[:3] == [None, None, None]  # stored, duplicate (still stored), stored
    assert isinstance(outcomes[3], APIError) and "maximum messages" in str(outcomes[3])
    assert isinstance(outcomes[4], MaxPayloadError) and isinstance(outcomes[5], NoStreamResponseError)


def test_non_finite_numbers_are_stored_as_valid_json(daemon: Daemon) -> None:
    """An agent reply with NaN/Infinity (Python's JSON parser accepts them) is stored and served as
    valid JSON: the numbers become null, and the run, its events and SQLite's rows parse strictly."""
    daemon.add_agent("odd")
    daemon.add_workflow("odd", ONE_STEP.format(id="odd", agent="odd"))
    daemon.agent_server.behave("odd", reply={"x": float("nan"), "y": [float("inf"), 1.5]})
    daemon.start()
    run = daemon.start_run("odd")
    daemon.wait_status(run["id"], ("COMPLETED", "FAILED"))

    def strict(text: str) -> Any:
        return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"invalid JSON: {c}")))

    body = strict(daemon.request("GET", f"/api/v1/workflow-runs/{run['id']}").text)
    strict(daemon.request("GET", f"/api/v1/workflow-runs/{run['id']}/events").text)
    if body["status"] == "COMPLETED":  # (an agent-output check may refuse the reply instead: also fine)
        assert body["context"]["steps"]["call"] == {"x": None, "y": [None, 1.5]}
    db = sqlite3.connect(daemon.data_dir / "station-wf.db")
    for (text,) in db.execute("SELECT payload FROM workflow_run_events UNION ALL SELECT context FROM workflow_runs"
                              " UNION ALL SELECT COALESCE(output, '{}') FROM workflow_run_steps"):
        strict(text)
    db.close()
