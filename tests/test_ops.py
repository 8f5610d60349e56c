"""Operations through the real daemon: one trace per run across a restart, /metrics, JSON logs."""

from __future__ import annotations

import json
import threading
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Daemon, wait_until

TWO_STEPS = """
id: traced
start: first
states:
  - { name: first, type: operation, action: agent.run, input: { agent: worker, task: one }, next: second }
  - { name: second, type: operation, action: agent.run, input: { agent: slow, task: two }, end: true }
"""


def spans(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def test_a_runs_spans_form_one_trace_across_a_restart(daemon: Daemon, tmp_path) -> None:
    trace_file = tmp_path / "spans.jsonl"
    daemon.env["STATION_TRACE_FILE"] = str(trace_file)
    daemon.add_agent("slow")
    daemon.add_workflow("traced", TWO_STEPS)
    hold = threading.Event()
    daemon.agent_server.behave("slow", hold=hold)
    daemon.start()
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    r = daemon.request("POST", "/api/v1/workflow-runs", json={"workflowId": "traced", "input": {}}, headers={"traceparent": parent})
    run = r.json()["run"]
    wait_until(lambda: daemon.agent_server.calls_for("slow"), what="second step")
    daemon.kill()
    hold.set()
    daemon.start()
    daemon.wait_status(run["id"])
    daemon.stop()

    recorded = spans(trace_file)
    by_name = defaultdict(list)
    for s in recorded:
        by_name[s["name"]].append(s)
    (root,) = by_name["WorkflowRun"]
    assert root["trace_id"] == "0af7651916cd43dd8448eb211c80319c" and root["parent_id"] == "b7ad6b7169203331"
    assert {s["trace_id"] for s in recorded} == {root["trace_id"]}  # one trace, before and after the restart
    transitions = by_name["StateTransition"]
    assert {s["parent_id"] for s in transitions} == {root["span_id"]}
    executes = by_name["StepExecute"]
    assert {s["parent_id"] for s in executes} <= {t["span_id"] for t in transitions}
    assert sorted(s["attributes"]["state.name"] for s in executes) == ["first", "second"]
    second = next(s for s in executes if s["attributes"]["state.name"] == "second")
    assert second["attributes"]["run.id"] == run["id"] and second["attributes"]["executor"] == "agent.run"
    agents = by_name["AgentExecute"]
    assert {a["parent_id"] for a in agents} <= {s["span_id"] for s in executes}
    # The agent received the AgentExecute span's traceparent (so its own spans join the run's trace).
    call = daemon.agent_server.calls_for("worker")[0]
    assert call.body["runId"] == run["id"]


def test_metrics_parse_and_move(daemon: Daemon) -> None:
    daemon.add_workflow("traced", TWO_STEPS.replace("agent: slow", "agent: worker"))
    daemon.start()

    def scrape() -> dict:
        text = daemon.request("GET", "/metrics").text
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    before = scrape()
    assert before[("station_wf_outbox_depth", ())] >= 0
    for _ in range(3):
        daemon.wait_status(daemon.start_run("traced")["id"])
    after = scrape()
    assert after[("station_wf_runs_started_total", (("workflow", "traced"),))] == 3
    assert after[("station_wf_runs_finished_total", (("status", "COMPLETED"), ("workflow", "traced")))] == 3
    assert after[("station_wf_step_duration_seconds_count", (("executor", "agent.run"),))] == 6
    assert ("station_wf_jetstream_num_pending", ()) in after and ("station_wf_timer_backlog", ()) in after


def test_logs_are_json_lines_with_step_fields(daemon: Daemon) -> None:
    daemon.add_workflow("traced", TWO_STEPS.replace("agent: slow", "agent: worker"))
    daemon.start()
    run = daemon.wait_status(daemon.start_run("traced")["id"])
    daemon.stop()
    records = []
    for line in daemon.log_path.read_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    steps = [r for r in records if r.get("run_id") == run["id"]]
    assert len(steps) == 2
    assert {k for k in ("run_id", "step_id", "attempt", "executor", "duration_ms", "status")} <= set(steps[0])
    assert steps[0]["status"] == "succeeded" and steps[0]["executor"] == "agent.run"
