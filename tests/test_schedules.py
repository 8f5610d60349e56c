"""Cron schedules through the real daemon with a test clock: right minute, once per tick across restarts."""

from __future__ import annotations

import time

from tests.conftest import Daemon, wait_until

SCHEDULED = """
id: nightly
inputSchema: { type: object, properties: { region: { type: string } }, required: [region] }
schedules:
  - { cron: "*/3 * * * *", timezone: UTC, input: { region: eu } }
start: hello
states:
  - { name: hello, type: operation, action: agent.run, input: { agent: worker, task: "at {{ ctx._cronTriggeredAt }} in {{ region }}" }, end: true }
"""


def runs_of(d: Daemon) -> list[dict]:
    return d.request("GET", "/api/v1/workflow-runs", params={"workflowId": "nightly"}).json()["runs"]


def test_cron_fires_on_its_minute_once_across_restarts(daemon: Daemon) -> None:
    daemon.add_workflow("nightly", SCHEDULED)
    daemon.start(extra_env={"STATION_TEST_CLOCK": "2026-01-01T00:02:50Z"})
    listed = daemon.request("GET", "/api/v1/workflow-schedules").json()["schedules"]
    assert [(s["id"], s["cron"], s["nextFireAt"]) for s in listed] == [("nightly:0", "*/3 * * * *", "2026-01-01T00:03:00Z")]
    wait_until(lambda: len(runs_of(daemon)) == 1, timeout=30, what="the 00:03 tick")
    run = daemon.wait_status(runs_of(daemon)[0]["id"])
    assert run["context"]["_cronTriggeredAt"] == "2026-01-01T00:03:00Z" and run["input"] == {"region": "eu"}
    assert daemon.agent_server.calls_for("worker")[0].body["task"] == "at 2026-01-01T00:03:00Z in eu"

    daemon.kill()
    daemon.start(extra_env={"STATION_TEST_CLOCK": "2026-01-01T00:03:30Z"})  # same tick again after a crash
    time.sleep(2.5)
    assert len(runs_of(daemon)) == 1

    daemon.stop()
    daemon.start(extra_env={"STATION_TEST_CLOCK": "2026-01-01T00:10:00Z"})  # down over 00:06 and 00:09
    wait_until(lambda: len(runs_of(daemon)) == 2, timeout=15, what="the missed tick")
    time.sleep(2.5)
    runs = runs_of(daemon)
    assert len(runs) == 2  # the missed ticks fire once, not once each
    latest = daemon.wait_status(runs[0]["id"])
    assert latest["context"]["_cronTriggeredAt"] == "2026-01-01T00:09:00Z"

    off = daemon.request("POST", "/api/v1/workflow-schedules/nightly:0/disable")
    assert off.status_code == 200 and off.json()["enabled"] is False and off.json()["nextFireAt"] is None
    assert daemon.request("POST", "/api/v1/workflow-schedules/nope:0/enable").status_code == 404


def test_station_cron_state_registers_a_schedule(daemon: Daemon) -> None:
    daemon.add_workflow("cron", """
id: cronwf
start: schedule
states:
  - { name: schedule, type: cron, cron: "0 6 * * 1-5", timezone: Europe/Berlin, input: { check: daily }, next: go }
  - { name: go, type: inject, data: { ok: true }, end: true }
""")
    daemon.start(extra_env={"STATION_TEST_CLOCK": "2026-01-02T12:00:00Z"})
    (sched,) = daemon.request("GET", "/api/v1/workflow-schedules").json()["schedules"]
    assert sched["timezone"] == "Europe/Berlin" and sched["input"] == {"check": "daily"}
    assert sched["nextFireAt"] == "2026-01-05T05:00:00Z"  # Monday 06:00 in Berlin (UTC+1)


def test_retention_prunes_finished_runs_only(daemon: Daemon) -> None:
    daemon.add_workflow("quick", """
id: quick
start: a
states: [ { name: a, type: inject, data: { x: 1 }, end: true } ]
""")
    daemon.add_workflow("waits", """
id: waits
start: w
states: [ { name: w, type: operation, action: signal.wait, input: { signal: go }, end: true } ]
""")
    daemon.start(extra_env={"STATION_RETENTION_DAYS": "0.00002", "STATION_RETENTION_INTERVAL_SECONDS": "0.5"})
    done = daemon.wait_status(daemon.start_run("quick")["id"])
    waiting = daemon.wait_status(daemon.start_run("waits")["id"], "WAITING_SIGNAL")
    wait_until(lambda: daemon.request("GET", f"/api/v1/workflow-runs/{done['id']}").status_code == 404, timeout=15,
               what="the finished run to be pruned")
    assert daemon.request("GET", f"/api/v1/workflow-runs/{done['id']}/events").status_code == 404
    assert daemon.run(waiting["id"])["status"] == "WAITING_SIGNAL"  # still going: kept however old
