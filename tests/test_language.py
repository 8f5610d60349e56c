"""The workflow language through the real daemon: Station's own files, fan-out, retries, timeouts, crashes."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from tests.conftest import REPO, Daemon, wait_until

EXAMPLES = REPO.parent / "shared" / "reference" / "station-examples"
needs_examples = pytest.mark.skipif(not EXAMPLES.is_dir(), reason=f"{EXAMPLES} is not present (shared/ sits beside the repo in CI)")


def _use_example(daemon: Daemon, name: str, agents: list[str]) -> None:
    shutil.copy(EXAMPLES / f"{name}.workflow.yaml", daemon.workflows_dir / f"{name}.workflow.yaml")
    for agent in agents:
        daemon.add_agent(agent)


def _agent_order(daemon: Daemon) -> list[str]:
    return [c.agent for c in daemon.agent_server.calls]


@needs_examples
def test_station_switch_routing_takes_the_high_branch(daemon: Daemon) -> None:
    _use_example(daemon, "e2e-switch-routing", ["alert-investigator", "k8s-deployment-checker", "root-cause-analyzer",
                                                "grafana-analyst", "aws-log-analyzer"])
    daemon.start()
    run = daemon.wait_status(daemon.start_run("e2e-switch-routing")["id"])
    assert [s["stateName"] for s in run["steps"]] == ["inject_alert", "route_by_severity", "high_severity_response", "analyze_high"]
    assert _agent_order(daemon) == ["alert-investigator", "root-cause-analyzer"]
    first = daemon.agent_server.calls[0]
    assert first.body["task"].startswith("HIGH severity alert: HighErrorRate from prometheus. ")
    assert "Current value 0.12 vs threshold 0.05" in first.body["task"]


@needs_examples
def test_station_parallel_diagnostics(daemon: Daemon) -> None:
    _use_example(daemon, "e2e-parallel-diagnostics", ["k8s-investigator", "aws-log-analyzer", "grafana-analyst", "root-cause-analyzer"])
    daemon.start()
    run = daemon.wait_status(daemon.start_run("e2e-parallel-diagnostics")["id"])
    assert sorted(_agent_order(daemon)[:3]) == ["aws-log-analyzer", "grafana-analyst", "k8s-investigator"]
    assert _agent_order(daemon)[3] == "root-cause-analyzer"
    result = run["context"]["steps"]["gather_diagnostics"]["output"]  # Station: steps.<id>.output (DESIGN 4)
    assert set(result) == {"kubernetes", "aws_logs", "grafana_metrics"}
    assert result["kubernetes"]["agent"] == "k8s-investigator"  # a branch's output: its steps' outputs merged
    assert run["context"]["gather_diagnostics"] == result
    branch_paths = {s["branchPath"] for s in run["steps"]}
    assert {"gather_diagnostics:kubernetes", "gather_diagnostics:aws_logs", "gather_diagnostics:grafana_metrics"} <= branch_paths
    assert "namespace production" in daemon.agent_server.calls_for("k8s-investigator")[0].body["task"]


@needs_examples
def test_station_foreach_services(daemon: Daemon) -> None:
    _use_example(daemon, "e2e-foreach-services", ["k8s-deployment-checker", "root-cause-analyzer"])
    daemon.agent_server.behave("k8s-deployment-checker", delay=0.3)
    daemon.start()
    run = daemon.wait_status(daemon.start_run("e2e-foreach-services")["id"])
    checks = daemon.agent_server.calls_for("k8s-deployment-checker")
    assert sorted(c.body["task"].split()[4] for c in checks) == ["api-gateway", "auth-service", "payment-processor"]
    assert daemon.agent_server.behaviours["k8s-deployment-checker"].max_active == 2  # maxConcurrency: 2, and it overlapped
    results = run["context"]["steps"]["check_each_service"]["output"]  # Station's foreach output: {results, count}
    assert results["count"] == 3
    assert [r["task"].split()[4] for r in results["results"]] == ["api-gateway", "auth-service", "payment-processor"]
    assert [s["foreachIndex"] for s in run["steps"] if s["stateName"] == "health_check"] == [0, 1, 2]


@needs_examples
def test_station_cron_workflow_runs_as_a_scheduled_run_would(daemon: Daemon) -> None:
    _use_example(daemon, "e2e-cron-with-agents", ["grafana-analyst", "k8s-investigator", "root-cause-analyzer"])
    daemon.start()
    cron_input = {"check_type": "periodic_health", "namespace": "production", "alert_threshold": 0.05,
                  "_cronTriggeredAt": "2026-11-22T00:03:00Z"}
    run = daemon.wait_status(daemon.start_run("e2e-cron-with-agents", cron_input)["id"])
    assert [s["stateName"] for s in run["steps"]] == ["inject_config", "gather_metrics", "check_kubernetes", "analyze_health"]
    task = daemon.agent_server.calls_for("grafana-analyst")[0].body["task"]
    assert task.startswith("Periodic health check triggered at 2026-11-22T00:03:00Z. Query Grafana for [\"error_rate\"")


@needs_examples
def test_station_dataflow_transform(daemon: Daemon) -> None:
    _use_example(daemon, "dataflow-transform", ["k8s-investigator", "root-cause-analyzer", "deployment-analyst"])
    daemon.agent_server.behave("k8s-investigator", reply={"pods": [{"name": "a", "status": "Error"}, {"name": "b", "status": "Running"}],
                                                          "logs": ["l1", "l2"]})
    daemon.agent_server.behave("root-cause-analyzer", reply={"cause": "OOM", "confidence": 0.9, "evidence": ["oom-killed"]})
    daemon.start()
    run = daemon.wait_status(daemon.start_run("dataflow-transform", {"task": "why", "namespace": "prod"})["id"], ("COMPLETED", "FAILED"))
    extract = run["context"]["steps"]["extract"]["output"]
    assert extract == {"error_pods": [{"name": "a", "status": "Error"}], "error_count": 1, "recent_logs": ["l1", "l2"],
                       "namespace": "prod", "original_task": "why"}
    # prepare_report reads `ctx.steps.extract.output.error_count`: Station's data flow (DESIGN 4) makes it complete.
    assert run["status"] == "COMPLETED", run.get("error")
    prepared = run["context"]["steps"]["prepare"]["output"]
    assert prepared["details"] == {"root_cause": "OOM", "confidence": 0.9, "evidence": ["oom-killed"], "affected_pods": 1}
    assert prepared["metadata"]["namespace"] == "prod" and prepared["summary"] == "OOM"
    # every agent got the workflow's task (Station: an agent step without a task takes input.task)
    assert [c.body["task"] for c in daemon.agent_server.calls] == ["why", "why", "why"]


@needs_examples
def test_every_station_example_syncs(daemon: Daemon) -> None:
    from station_wf.dsl.loader import iter_states, load_definition_file

    agents = set()
    for file in EXAMPLES.glob("*.workflow.yaml"):
        shutil.copy(file, daemon.workflows_dir / file.name)
        for _, state in iter_states(load_definition_file(file)):
            if state.get("action") == "agent.run":
                agents.add(state["input"]["agent"])
    missing = daemon.workflows_dir / "missing-agent.workflow.yaml"
    missing.write_text("id: missing-agent\nstart: a\nstates:\n  - { name: a, type: agent, agent: nobody, end: true }\n")
    for agent in agents:
        daemon.add_agent(agent)
    daemon.start()
    assert "nobody" in daemon.log() and "missing-agent" in daemon.log()  # refused at sync, named in the log
    ids = {w["id"] for w in daemon.request("GET", "/api/v1/workflows").json()["workflows"]}
    assert ids == {"approval-demo", "dataflow-transform", "e2e-cron-with-agents", "e2e-foreach-services",
                   "e2e-parallel-diagnostics", "e2e-switch-routing", "slack-approval-escalation"}


RETRY = """
id: retry
start: call
states:
  - name: call
    type: operation
    action: agent.run
    input: { agent: flaky, task: t }
    retry: { maxAttempts: 3, backoffSeconds: 1, backoffRate: 2 }
    end: true
"""


def test_retry_with_durable_backoff_survives_kill9(daemon: Daemon) -> None:
    daemon.add_agent("flaky")
    daemon.add_workflow("retry", RETRY)
    daemon.agent_server.behave("flaky", fail_first=2)
    daemon.start()
    run = daemon.start_run("retry")
    wait_until(lambda: len(daemon.agent_server.calls_for("flaky")) == 1, what="first attempt")
    daemon.kill()  # during the first back-off: the retry lives in the timers table
    daemon.start()
    done = daemon.wait_status(run["id"])
    calls = daemon.agent_server.calls_for("flaky")
    assert [c.body["attempt"] for c in calls] == [1, 2, 3]
    assert len({c.idempotency_key for c in calls}) == 3
    assert [(s["attempt"], s["status"]) for s in done["steps"]] == [(1, "FAILED"), (2, "FAILED"), (3, "SUCCEEDED")]
    failed = [e for e in daemon.events(run["id"]) if e["type"] == "step.failed"]
    assert [e["payload"]["retryInSeconds"] for e in failed] == [1.0, 2.0]


def test_step_timeout_and_workflow_timeout(daemon: Daemon) -> None:
    daemon.add_agent("slow")
    daemon.agent_server.behave("slow", delay=3.0)
    daemon.add_workflow("st", """
id: st
start: call
states:
  - { name: call, type: operation, action: agent.run, input: { agent: slow, task: t }, timeoutSeconds: 0.5, end: true }
""")
    daemon.add_workflow("wt", """
id: wt
timeoutSeconds: 1
start: nap
states:
  - { name: nap, type: sleep, duration: 1h, end: true }
""")
    daemon.start()
    step_run = daemon.wait_status(daemon.start_run("st")["id"], "FAILED")
    assert step_run["steps"][0]["status"] == "TIMED_OUT" and step_run["error"]["type"] == "timeout"
    wf_run = daemon.wait_status(daemon.start_run("wt")["id"], "TIMED_OUT")
    assert wf_run["steps"][0]["status"] == "CANCELLED"
    assert daemon.events(wf_run["id"])[-1]["type"] == "run.timed_out"


FANOUT = """
id: fanout
start: each
states:
  - name: each
    type: foreach
    itemsPath: items
    maxConcurrency: 3
    iterator:
      states:
        - { name: work, type: operation, action: agent.run, input: { agent: slow, task: "{{ item }}" }, resultPath: r, end: true }
    next: both
  - name: both
    type: parallel
    branches:
      - name: left
        states: [ { name: l, type: operation, action: agent.run, input: { agent: gate, task: left }, end: true } ]
      - name: right
        states: [ { name: r, type: operation, action: agent.run, input: { agent: worker, task: right }, end: true } ]
    end: true
"""


def test_kill9_mid_foreach_and_mid_parallel_join(daemon: Daemon) -> None:
    daemon.add_agent("slow")
    daemon.add_agent("gate")
    daemon.add_workflow("fanout", FANOUT)
    hold = threading.Event()
    daemon.agent_server.behave("slow", hold=hold)
    hold2 = threading.Event()
    daemon.agent_server.behave("gate", hold=hold2)
    daemon.start()
    run = daemon.start_run("fanout", {"items": list(range(7))})
    wait_until(lambda: len(daemon.agent_server.calls_for("slow")) == 3, what="three live iterations")
    assert daemon.agent_server.behaviours["slow"].max_active == 3
    daemon.kill()
    hold.set()
    daemon.start()
    # The parallel's left branch is held while the right one finishes; then kill again mid-join.
    wait_until(lambda: daemon.agent_server.calls_for("gate"), what="left branch", timeout=30)
    wait_until(lambda: daemon.agent_server.calls_for("worker"), what="right branch")
    wait_until(lambda: any(s["stateName"] == "r" and s["status"] == "SUCCEEDED" for s in daemon.run(run["id"])["steps"]),
               what="right branch recorded")
    daemon.kill()
    hold2.set()
    daemon.start()
    done = daemon.wait_status(run["id"])

    items = [c.body["task"] for c in daemon.agent_server.calls_for("slow")]
    assert sorted(set(items)) == list(range(7))  # "{{ item }}" keeps its type
    assert len(items) - 7 <= 3  # only the three in flight at the kill ran again
    assert daemon.agent_server.behaviours["slow"].max_active <= 3
    assert [r["r"]["task"] for r in done["context"]["steps"]["each"]] == list(range(7))
    assert len(daemon.agent_server.calls_for("worker")) == 1  # the finished branch was not re-run
    assert len(daemon.agent_server.calls_for("gate")) == 2  # the held one ran once more, after the kill
    assert set(done["context"]["steps"]["both"]) == {"left", "right"}
    events = daemon.events(run["id"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    succeeded = [(e["stepId"], e["payload"]["attempt"]) for e in events if e["type"] == "step.succeeded"]
    assert len(succeeded) == len(set(succeeded))


def test_incident_triage_example_runs_to_the_approval_gate(daemon_factory) -> None:
    """The PRD appendix workflow ships in the example environment; it runs up to its approval step."""
    d = daemon_factory("triage")
    src = REPO / "environments" / "default" / "workflows" / "incident-triage.workflow.yaml"
    if not src.is_file():
        pytest.skip("incident-triage example not shipped yet")
    shutil.copy(src, d.workflows_dir / src.name)
    for agent in ("k8s-pod-checker", "slo-analyzer", "k8s-remediator", "notification-sender"):
        d.add_agent(agent)
    d.agent_server.behave("slo-analyzer", reply={"error_rate": 0.2})
    d.start()
    run = d.wait_status(d.start_run("incident-triage", {"namespace": "prod", "service": "api"})["id"],
                        ("WAITING_APPROVAL", "FAILED", "COMPLETED"))
    names = [s["stateName"] for s in run["steps"]]
    assert names[:5] == ["inject_defaults", "diagnostics", "check_pods", "check_errors", "decide"] or \
        names[:5] == ["inject_defaults", "diagnostics", "check_errors", "check_pods", "decide"]
    assert "request_approval" in names
    assert Path(src).read_text().count("human.approval") == 1


def test_try_catch_finally_sleep_and_transform_through_the_daemon(daemon: Daemon) -> None:
    daemon.add_agent("flaky")
    daemon.agent_server.behave("flaky", status=503, reply={"error": "down"})
    daemon.add_workflow("guarded", """
id: guarded
start: guard
states:
  - name: guard
    type: try
    try:
      - { name: risky, type: operation, action: agent.run, input: { agent: flaky, task: t }, end: true }
    catch:
      - { name: note, type: transform, expression: '{"failedState": error["stateName"], "status": error["details"]["status"]}', resultPath: recovered, end: true }
    finally:
      - { name: pause, type: sleep, duration: 0.5s, end: true }
    next: after
  - { name: after, type: operation, action: agent.run, input: { agent: worker, task: "{{ recovered.status }}" }, end: true }
""")
    daemon.start()
    run = daemon.wait_status(daemon.start_run("guarded")["id"])
    assert run["context"]["recovered"] == {"failedState": "risky", "status": 503}
    assert daemon.agent_server.calls_for("worker")[0].body["task"] == 503
    statuses = {s["stateName"]: s["status"] for s in run["steps"]}
    assert statuses == {"guard": "SUCCEEDED", "risky": "FAILED", "note": "SUCCEEDED", "pause": "SUCCEEDED", "after": "SUCCEEDED"}
