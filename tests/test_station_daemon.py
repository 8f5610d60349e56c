"""Station users' own files through the real daemon: the shared examples with the data their comments
describe, Station's REST shapes, Station's `.prompt` agents on a fake OpenAI-compatible LLM, and the
API-payload form from a file, from POST /api/v1/workflows and from sync."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import REPO, Daemon, wait_until
from tests.fake_llm import FakeLLM, running_llm

EXAMPLES = REPO.parent / "shared" / "reference" / "station-examples"
needs_examples = pytest.mark.skipif(not EXAMPLES.is_dir(), reason=f"{EXAMPLES} is not present")
ADMIN = {"X-Station-Principal": "admin"}  # approval-demo's `approvers: ["admin"]` (no tokens: loopback names itself)


def _use_example(daemon: Daemon, name: str, agents: list[str]) -> None:
    shutil.copy(EXAMPLES / f"{name}.workflow.yaml", daemon.workflows_dir / f"{name}.workflow.yaml")
    for agent in agents:
        daemon.add_agent(agent)


def _pending_approval(daemon: Daemon, run_id: str) -> dict:
    def found() -> dict | None:
        approvals = daemon.request("GET", f"/api/v1/workflow-runs/{run_id}/approvals").json()["approvals"]
        return next((a for a in approvals if a["status"] == "pending"), None)
    return wait_until(found, what="a pending approval")


@needs_examples
def test_approval_demo_approved_through_stations_approval_path(daemon: Daemon) -> None:
    _use_example(daemon, "approval-demo", [])
    daemon.start()
    run = daemon.start_run("approval-demo")
    approval = _pending_approval(daemon, run["id"])
    # Station's path: the approval by id alone, `{"comment"}`
    got = daemon.request("GET", f"/api/v1/workflow-approvals/{approval['id']}").json()["approval"]
    assert got["runId"] == run["id"] and got["approvers"] == ["admin"]
    ok = daemon.request("POST", f"/api/v1/workflow-approvals/{approval['id']}/approve", json={"comment": "fine"},
                        headers=ADMIN)
    assert ok.status_code == 200, ok.text
    done = daemon.wait_status(run["id"])
    assert done["context"]["result"] == {"status": "approved", "message": "You approved the workflow!"}
    assert done["context"]["intro"]["greeting"].startswith("Hello!")


@needs_examples
def test_approval_demo_rejected_takes_the_rejected_path(daemon: Daemon) -> None:
    _use_example(daemon, "approval-demo", [])
    daemon.start()
    run = daemon.start_run("approval-demo")
    approval = _pending_approval(daemon, run["id"])
    no = daemon.request("POST", f"/api/v1/workflow-approvals/{approval['id']}/reject", json={"reason": "not today"},
                        headers=ADMIN)
    assert no.status_code == 200 and no.json()["approval"]["status"] == "rejected"
    done = daemon.wait_status(run["id"])  # "Step 4b: Rejected path": the switch routes on the decision
    assert done["context"]["result"]["status"] == "rejected"
    assert done["context"]["approval"]["approved"] is False and done["context"]["approval"]["comment"] == "not today"
    missing = daemon.request("POST", "/api/v1/workflow-approvals/apr-nope/approve", json={})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


@needs_examples
def test_slack_approval_escalation_blocks_a_risky_ip(daemon: Daemon) -> None:
    _use_example(daemon, "slack-approval-escalation", ["security-analyzer", "firewall-admin", "security-logger", "notifier"])
    daemon.agent_server.behave("security-analyzer", reply={"risk_score": 0.93, "reason": "port scan", "ticket_id": "SEC-42"})
    daemon.start()
    run = daemon.start_run("slack-approval-escalation", {"ip": "203.0.113.7"})
    approval = _pending_approval(daemon, run["id"])
    assert approval["message"].startswith("A high-risk IP (203.0.113.7) was detected with risk score 0.93. Reason: port scan.")
    daemon.request("POST", f"/api/v1/workflow-approvals/{approval['id']}/approve", json={}).raise_for_status()
    done = daemon.wait_status(run["id"])
    order = [c.agent for c in daemon.agent_server.calls]
    assert order == ["security-analyzer", "firewall-admin", "notifier"]
    block = daemon.agent_server.calls_for("firewall-admin")[0].body["task"]
    assert block == "Block IP address 203.0.113.7 in the production firewall. Ticket Reference: SEC-42"
    assert done["context"]["analysis"]["risk_score"] == 0.93


@needs_examples
def test_slack_approval_escalation_logs_a_low_risk_ip(daemon: Daemon) -> None:
    _use_example(daemon, "slack-approval-escalation", ["security-analyzer", "firewall-admin", "security-logger", "notifier"])
    daemon.agent_server.behave("security-analyzer", reply={"risk_score": 0.1, "reason": "known crawler"})
    daemon.start()
    done = daemon.wait_status(daemon.start_run("slack-approval-escalation", {"ip": "198.51.100.1"})["id"])
    assert [c.agent for c in daemon.agent_server.calls] == ["security-analyzer", "security-logger"]
    logged = daemon.agent_server.calls_for("security-logger")[0].body["task"]
    assert logged == "Log the security event for IP 198.51.100.1. Status: Not blocked (Low risk)"
    assert done["context"]["log_incident"]["agent"] == "security-logger"  # Station: also at `<id>`


@needs_examples
def test_cron_example_registers_its_schedule(daemon: Daemon) -> None:
    _use_example(daemon, "e2e-cron-with-agents", ["grafana-analyst", "k8s-investigator", "root-cause-analyzer"])
    daemon.start()
    schedules = daemon.request("GET", "/api/v1/workflow-schedules", params={"workflowId": "e2e-cron-with-agents"}).json()
    (schedule,) = schedules["schedules"]
    assert schedule["cron"] == "*/3 * * * *" and schedule["timezone"] == "UTC" and schedule["enabled"] is True
    assert schedule["input"] == {"check_type": "periodic_health", "namespace": "production", "alert_threshold": 0.05}


# ---- Station's REST shapes -------------------------------------------------------------------------

SHORT = """\
id: short
start: a
states:
  - {id: a, type: agent, agent: echo, task: "hello {{ who }}", end: true}
"""


def test_station_start_bodies_steps_and_sse_format(daemon: Daemon) -> None:
    daemon.add_agent("echo")
    daemon.add_workflow("short", SHORT)
    daemon.start()
    snake = daemon.request("POST", "/api/v1/workflow-runs", json={"workflow_id": "short", "input": {"who": "a"},
                                                                 "environmentId": 1})
    assert snake.status_code == 201, snake.text
    nested = daemon.request("POST", "/api/v1/workflows/short/runs", json={"input": {"who": "b"}})
    assert nested.status_code == 201, nested.text
    for created in (snake, nested):
        daemon.wait_status(created.json()["run"]["id"])
    assert sorted(c.body["task"] for c in daemon.agent_server.calls) == ["hello a", "hello b"]
    run_id = nested.json()["run"]["id"]
    steps = daemon.request("GET", f"/api/v1/workflow-runs/{run_id}/steps").json()["steps"]
    assert [s["stateName"] for s in steps] == ["a"] and steps[0]["status"] == "SUCCEEDED"
    messages = []
    with httpx.stream("GET", f"{daemon.base}/api/v1/workflow-runs/{run_id}/stream", params={"format": "station"},
                      timeout=10) as resp:
        event = None
        for line in resp.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                messages.append((event, json.loads(line.split(":", 1)[1])))
    assert {e for e, _ in messages} == {"message"}
    assert messages[0][1]["type"] == "run_update" and messages[0][1]["run"]["status"] == "COMPLETED"
    assert [m["step"]["stateName"] for _, m in messages if m["type"] == "step_update"] == ["a"]
    bad = daemon.request("POST", "/api/v1/workflow-runs", json={"workflow_id": "short", "workflowId": "other"})
    assert bad.status_code == 400 and "differ" in bad.json()["error"]["message"]


# ---- the API-payload form ----------------------------------------------------------------------------

PAYLOAD = {"workflowId": "payload-form", "name": "Payload form", "description": "Station's API body",
           "definition": {"start": "a", "states": [{"id": "a", "type": "inject", "data": {"x": 1}, "end": True}]}}


def test_api_payload_form_from_sync_and_from_post(daemon: Daemon) -> None:
    daemon.add_workflow("payload-form", "")  # placeholder name; the real file is JSON
    (daemon.workflows_dir / "payload-form.workflow.yaml").unlink()
    (daemon.workflows_dir / "payload-form.workflow.json").write_text(json.dumps(PAYLOAD, indent=2))
    daemon.start()
    stored = daemon.request("GET", "/api/v1/workflows/payload-form").json()
    assert stored["name"] == "Payload form" and stored["definition"]["dialect"] == "station"
    done = daemon.wait_status(daemon.start_run("payload-form")["id"])
    assert done["context"]["x"] == 1 and done["context"]["steps"]["a"] == {"output": {"x": 1}}
    posted = daemon.request("POST", "/api/v1/workflows", json={**PAYLOAD, "workflowId": "payload-posted"})
    assert posted.status_code == 201, posted.text
    assert posted.json()["id"] == "payload-posted" and posted.json()["description"] == "Station's API body"


# ---- Station's agent files ---------------------------------------------------------------------------

STATION_AGENT = """\
---
metadata:
  name: "Cost Spike RCA"
  description: "Finds why costs jumped"
  tags: ["finops"]
model: gpt-4o-mini
max_steps: 8
app: "finops"
app_type: "investigations"
output:
  format: json
  schema:
    type: object
    required: ["root_cause"]
    properties:
      root_cause: {type: string}
tools:
  - "__get_cost_and_usage"
---

{{role "system"}}
You are a FinOps analyst. Explain cost spikes.

{{role "user"}}
{{userInput}}
"""

USES_AGENT = """\
id: cost-rca
start: rca
states:
  - id: rca
    type: agent
    agent: cost-spike-rca
    task: "Why did {{ service }} cost more?"
    output: {finding: "$.result.root_cause"}
    end: true
"""


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with running_llm() as server:
        yield server


def test_station_prompt_file_loads_and_runs(daemon: Daemon, llm: FakeLLM) -> None:
    daemon.agents_dir.mkdir(parents=True, exist_ok=True)
    (daemon.agents_dir / "cost-spike-rca.prompt").write_text(STATION_AGENT)
    daemon.add_workflow("cost-rca", USES_AGENT)
    daemon.env["OPENAI_BASE_URL"] = llm.base_url
    # issue 20: the agent's `tools:` are offered from the environment's MCP servers, so it has one
    (daemon.agents_dir.parent / "template.json").write_text(json.dumps({"mcpServers": {"costs": {
        "command": sys.executable, "args": ["-m", "tests.mcp_servers.ops_server"], "cwd": str(REPO)}}}))
    llm.answer({"root_cause": "NAT gateway traffic"})
    daemon.start()
    agents = {a["name"]: a for a in daemon.request("GET", "/api/v1/agents").json()["agents"]}
    agent = agents["cost-spike-rca"]  # the file stem is the id, the display name is shown beside it
    assert agent["displayName"] == "Cost Spike RCA" and agent["model"] == "openai/gpt-4o-mini"
    assert any("'tools'" in n for n in agent["notes"]) and any("'max_steps'" in n for n in agent["notes"])
    done = daemon.wait_status(daemon.start_run("cost-rca", {"service": "billing-api"})["id"])
    assert done["context"]["finding"] == "NAT gateway traffic"
    (request,) = llm.requests
    assert request.body["model"] == "gpt-4o-mini"
    assert request.messages("system") == ["You are a FinOps analyst. Explain cost spikes."]
    assert request.messages("user") == ["Why did billing-api cost more?"]  # {{userInput}} is the task, once
    assert request.body["response_format"]["type"] == "json_schema"
    assert [t["function"]["name"] for t in request.body["tools"]] == ["get_cost_and_usage"]
