"""Agents that call MCP tools, through the real daemon: a real MCP server written with the SDK (stdio,
started by the daemon; and one over streamable HTTP), the fake OpenAI-compatible model scripted to ask
for tool calls (tests/fake_llm.py). One daemon serves the module; each test scripts its own turns."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from station_wf.bus.nats_server import free_port
from tests.conftest import REPO, Daemon, wait_until
from tests.fake_llm import FakeLLM, calls, running_llm, tool_call

CHROMIUM = Path("/usr/bin/chromium")

TRIAGE = """---
model: openai/tiny
description: Checks and fixes the pods of a namespace
tools: ["__get_pods", "__restart_pod", "__whoami", "__hang", "__crash"]
max_steps: 4
input:
  schema:
    namespace: string
output:
  schema:
    type: object
    properties: { restarted: { type: string } }
    required: [restarted]
---
Fix the pods in {{namespace}}.
"""

REMOTE = """---
model: openai/tiny
tools: ["remote/get_pods"]
---
Look at the pods.
"""

BROKEN = """---
model: openai/tiny
tools: ["__nothing"]
---
Uses a server that cannot start.
"""

PLANNER = """---
model: openai/tiny
metadata:
  name: Planner
tools: ["__agent_triage"]
---
Plan the fix.
"""

CHIEF = """---
model: openai/tiny
tools: ["__agent_planner"]
---
Delegate.
"""

GATED = """
id: gated-deploy
name: Gated deploy
description: Deploys a service after a person approves
inputSchema:
  type: object
  properties:
    service: { type: string }
  required: [service]
start: gate
states:
  - name: gate
    type: operation
    action: human.approval
    input: { message: "Deploy {{ service }}?", approvers: ["user:alice"] }
    next: done
  - { name: done, type: inject, data: { deployed: true }, end: true }
"""

WORKFLOW = """
id: {id}
start: fix
states:
  - name: fix
    type: operation
    action: agent.run
    input: {{ agent: {agent}, task: "Fix it", variables: {variables} }}
    {timeout}
    end: true
"""


def _workflow(wid: str, agent: str, variables: str = "{}", timeout: str = "") -> str:
    return WORKFLOW.format(id=wid, agent=agent, variables=variables, timeout=f"timeoutSeconds: {timeout}" if timeout else "")


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    with running_llm() as server:
        yield server


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    """The same SDK server over streamable HTTP, as its own process (the daemon fixture waits for it)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.mcp_servers.ops_server", "http", str(port)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.kill()
        proc.wait(10)


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def marks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("marks")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, llm: FakeLLM, http_server: str, marks: Path) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("tools-daemon")
    env_dir = root / "environments" / "default"
    d = Daemon(root, None, {"OPENAI_BASE_URL": llm.base_url, "STATION_MCP_TOOL_TIMEOUT_SECONDS": "2.5",
                            "OPS_MARK_DIR": str(marks), "STATION_ACK_WAIT_SECONDS": "3"})
    (env_dir / "agents").mkdir(parents=True)
    (env_dir / "mcp-servers").mkdir()
    (env_dir / "template.json").write_text(json.dumps({"name": "ops", "mcpServers": {"ops": {
        "command": sys.executable, "args": ["-m", "tests.mcp_servers.ops_server"], "cwd": str(REPO),
        "env": {"OPS_CLUSTER": "{{ .CLUSTER }}", "OPS_MARK_DIR": "{{ .OPS_MARK_DIR }}"}}}}))
    (env_dir / "variables.yml").write_text('CLUSTER: "prod-eu-1"\n')
    (env_dir / "mcp-servers" / "remote.json").write_text(json.dumps({"url": http_server}))
    (env_dir / "mcp-servers" / "zz-broken.json").write_text(json.dumps({"command": str(root / "no-such-binary")}))
    (env_dir / "agents" / "triage.prompt").write_text(TRIAGE)
    (env_dir / "agents" / "remote-look.prompt").write_text(REMOTE)
    (env_dir / "agents" / "broken.prompt").write_text(BROKEN)
    (env_dir / "agents" / "planner.prompt").write_text(PLANNER)
    (env_dir / "agents" / "chief.prompt").write_text(CHIEF)
    d.add_workflow("planner", _workflow("planner", "planner"))
    d.add_workflow("chief", _workflow("chief", "chief"))
    d.add_workflow("triage", _workflow("triage", "triage", "{ namespace: prod }"))
    d.add_workflow("triage-short", _workflow("triage-short", "triage", "{ namespace: prod }", timeout="1.5"))
    d.add_workflow("remote", _workflow("remote", "remote-look"))
    d.add_workflow("broken", _workflow("broken", "broken"))
    d.add_workflow("gated-deploy", GATED)
    d.start(wait=False)
    wait_until(lambda: _up(http_server), 30, what="the HTTP MCP server")
    d.wait_ready()
    llm.answer(calls(tool_call("whoami")), {"restarted": "warm-up"})  # starts the stdio server now: the timing
    # tests below do not wait on it
    d.wait_status(d.start_run("triage")["id"], "COMPLETED", timeout=60)
    yield d
    assert d.stop() == 0, d.log()
    pids = {int(m.name.split("-")[-2]) for m in marks.iterdir()}  # every stdio server the daemon started
    assert pids, "no stdio server was started"
    wait_until(lambda: not [p for p in pids if _alive(p)], 10, what="the MCP servers to stop with the daemon")


@pytest.fixture(autouse=True)
def fresh_script(llm: FakeLLM) -> Iterator[None]:
    """Turns a test scripted but its run did not use (a timeout cut it short) never reach the next test."""
    yield
    with llm._lock:
        llm.script.clear()


def _step(run: dict[str, Any]) -> dict[str, Any]:
    (step,) = [s for s in run["steps"] if s["stateName"] == "fix"]
    return step


def _marks(marks: Path, name: str) -> list[Path]:
    return sorted(marks.glob(f"{name}-*"))


def test_an_agent_calls_two_tools_of_a_stdio_server_and_answers(daemon: Daemon, llm: FakeLLM) -> None:
    before = len(llm.requests)
    llm.answer(calls(tool_call("get_pods", {"namespace": "prod"})),
               calls(tool_call("restart_pod", {"name": "api-1"})),
               {"restarted": "api-1"})
    run = daemon.wait_status(daemon.start_run("triage")["id"], "COMPLETED", timeout=60)
    assert run["context"]["steps"]["fix"] == {"restarted": "api-1"}
    first, second, third = llm.requests[before:]
    assert first.tool_names() == ["get_pods", "restart_pod", "whoami", "hang", "crash"]
    assert "get_pods" in json.dumps(first.body["tools"][0]) and first.body["tools"][0]["function"]["parameters"][
        "required"] == ["namespace"]
    tool_results = [m for m in second.body["messages"] if m["role"] == "tool"]
    assert len(tool_results) == 1 and "CrashLoopBackOff" in tool_results[0]["content"]
    assert [m["content"] for m in third.body["messages"] if m["role"] == "tool"][-1] == "restarted api-1"
    meta = _step(run)["metadata"]
    audit = meta["toolCalls"]
    assert [(c["tool"], c["server"], c["arguments"]) for c in audit] == [
        ("get_pods", "ops", {"namespace": "prod"}), ("restart_pod", "ops", {"name": "api-1"})]
    assert all(c["error"] is None and c["resultBytes"] > 0 and c["durationMs"] >= 0 for c in audit)
    assert meta["turns"] == 3 and meta["usage"]["total_tokens"] == 3 * 18
    events = [e for e in daemon.events(run["id"]) if e["type"] == "agent.tool_called"]
    assert [e["payload"]["tool"] for e in events] == ["get_pods", "restart_pod"]
    assert events[0]["stepId"] == _step(run)["stepId"] and "CrashLoopBackOff" in events[0]["payload"]["excerpt"]


def test_the_idempotency_key_and_the_variables_reach_the_tool(daemon: Daemon, llm: FakeLLM) -> None:
    llm.answer(calls(tool_call("whoami")), {"restarted": "none"})
    run = daemon.wait_status(daemon.start_run("triage")["id"], "COMPLETED", timeout=60)
    step = _step(run)
    (call,) = step["metadata"]["toolCalls"]
    seen = json.loads(call["excerpt"])
    assert seen["cluster"] == "prod-eu-1"  # {{ .CLUSTER }} from variables.yml
    assert seen["meta"]["io.station/idempotencyKey"] == call["idempotencyKey"]
    assert seen["meta"]["stepIdempotencyKey"] == step["idempotencyKey"]
    assert call["idempotencyKey"].startswith(step["idempotencyKey"] + ":tool:")


def test_a_hung_tool_times_out_is_cancelled_and_the_model_goes_on(daemon: Daemon, llm: FakeLLM, marks: Path) -> None:
    before = len(llm.requests)
    llm.answer(calls(tool_call("hang")), {"restarted": "gave up"})
    run = daemon.wait_status(daemon.start_run("triage")["id"], "COMPLETED", timeout=60)
    (call,) = _step(run)["metadata"]["toolCalls"]
    assert "did not answer within 2.5s" in call["error"] and call["durationMs"] >= 2400
    told = [m for m in llm.requests[-1].body["messages"] if m["role"] == "tool"]
    assert told[-1]["content"].startswith("error: ") and len(llm.requests) == before + 2
    wait_until(lambda: _marks(marks, "hang_cancelled"), 10, what="the server to see the call cancelled")


def test_a_server_that_crashes_mid_run_is_restarted(daemon: Daemon, llm: FakeLLM, marks: Path) -> None:
    llm.answer(calls(tool_call("crash")), calls(tool_call("whoami")), {"restarted": "after crash"})
    run = daemon.wait_status(daemon.start_run("triage")["id"], "COMPLETED", timeout=60)
    crashed, after = _step(run)["metadata"]["toolCalls"]
    assert "went away" in crashed["error"] or "not running" in crashed["error"], crashed
    assert after["error"] is None
    (crash_mark,) = _marks(marks, "crash")
    crashed_pid = int(crash_mark.name.split("-")[-2])
    assert json.loads(after["excerpt"])["pid"] != crashed_pid  # a new server process answered


def test_max_steps_fails_the_step_with_the_audit(daemon: Daemon, llm: FakeLLM) -> None:
    llm.answer(*[calls(tool_call("get_pods", {"namespace": "prod"})) for _ in range(4)])
    run = daemon.wait_status(daemon.start_run("triage")["id"], "FAILED", timeout=60)
    step = _step(run)
    assert step["error"]["type"] == "max_steps" and "max_steps (4 model turns)" in step["error"]["message"]
    assert len(step["metadata"]["toolCalls"]) == 4
    assert sum(e["type"] == "agent.tool_called" for e in daemon.events(run["id"])) == 4


def test_cancelling_the_run_cancels_the_tool_call_in_flight(daemon: Daemon, llm: FakeLLM, marks: Path) -> None:
    started = len(_marks(marks, "hang_started"))
    cancelled = len(_marks(marks, "hang_cancelled"))
    llm.answer(calls(tool_call("hang")))
    run_id = daemon.start_run("triage")["id"]
    wait_until(lambda: len(_marks(marks, "hang_started")) > started, 30, what="the hanging tool call")
    resp = daemon.request("POST", f"/api/v1/workflow-runs/{run_id}/cancel", json={"reason": "stop"})
    assert resp.status_code == 200, resp.text
    daemon.wait_status(run_id, "CANCELLED")
    wait_until(lambda: len(_marks(marks, "hang_cancelled")) > cancelled, 10, what="the server to see the cancel")


def test_the_step_timeout_cancels_the_tool_call(daemon: Daemon, llm: FakeLLM, marks: Path) -> None:
    cancelled = len(_marks(marks, "hang_cancelled"))
    llm.answer(calls(tool_call("hang")))  # the step's 1.5 s timeout comes before the tool's 2.5 s
    run = daemon.wait_status(daemon.start_run("triage-short")["id"], "FAILED", timeout=60)
    assert _step(run)["error"]["type"] == "timeout", _step(run)["error"]
    (call,) = _step(run)["metadata"]["toolCalls"]  # the call the timeout cut short is in the record
    assert call["tool"] == "hang" and call["error"].startswith("cancelled"), call
    events = [e["payload"] for e in daemon.events(run["id"]) if e["type"] == "agent.tool_called"]
    assert [e["tool"] for e in events] == ["hang"]
    wait_until(lambda: len(_marks(marks, "hang_cancelled")) > cancelled, 10, what="the server to see the cancel")


def test_a_streamable_http_server_named_explicitly(daemon: Daemon, llm: FakeLLM) -> None:
    llm.answer(calls(tool_call("remote__get_pods", {"namespace": "edge"})), "two pods")
    run = daemon.wait_status(daemon.start_run("remote")["id"], "COMPLETED", timeout=60)
    assert run["context"]["steps"]["fix"] == {"response": "two pods"}
    (call,) = _step(run)["metadata"]["toolCalls"]
    assert call["server"] == "remote" and '"namespace": "edge"' in call["excerpt"]


def test_a_server_that_cannot_start_fails_the_step_naming_it(daemon: Daemon, llm: FakeLLM) -> None:
    before = len(llm.requests)
    run = daemon.wait_status(daemon.start_run("broken")["id"], "FAILED", timeout=60)
    error = _step(run)["error"]
    assert error["type"] == "mcp_unavailable" and "'zz-broken'" in error["message"], error
    assert len(llm.requests) == before  # the model is never asked


def test_an_agent_calls_another_agent_as_a_tool_with_the_same_audit(daemon: Daemon, llm: FakeLLM) -> None:
    before = len(llm.requests)
    llm.answer(calls(tool_call("agent_triage", {"task": "fix prod", "variables": {"namespace": "prod"}})),
               calls(tool_call("get_pods", {"namespace": "prod"})),  # the triage agent's own loop
               {"restarted": "api-1"},
               "triage restarted api-1")
    run = daemon.wait_status(daemon.start_run("planner")["id"], "COMPLETED", timeout=60)
    assert run["context"]["steps"]["fix"] == {"response": "triage restarted api-1"}
    planner_first, triage_first, _, planner_last = llm.requests[before:]
    params = planner_first.body["tools"][0]["function"]["parameters"]
    assert planner_first.tool_names() == ["agent_triage"] and params["properties"]["variables"]["required"] == ["namespace"]
    assert triage_first.messages("system") == ["Fix the pods in prod."] and triage_first.messages("user") == ["fix prod"]
    assert json.loads([m for m in planner_last.body["messages"] if m["role"] == "tool"][-1]["content"]) == {"restarted": "api-1"}
    audit = _step(run)["metadata"]["toolCalls"]
    assert [(c["tool"], c["agentPath"]) for c in audit] == [("get_pods", ["planner", "triage"]),
                                                            ("agent_triage", ["planner"])]
    assert audit[1]["kind"] == "agent" and audit[1]["agent"] == "triage" and audit[1]["error"] is None
    keys = [c["idempotencyKey"] for c in audit]
    assert len(set(keys)) == 2 and keys[0].startswith(keys[1])  # the nested call's key derives from its caller's
    events = [e["payload"]["tool"] for e in daemon.events(run["id"]) if e["type"] == "agent.tool_called"]
    assert events == ["get_pods", "agent_triage"]


def test_agents_as_tools_are_bounded_in_depth(daemon: Daemon, llm: FakeLLM) -> None:
    """chief -> planner -> triage is three levels; STATION_AGENT_TOOL_DEPTH (2) refuses the third."""
    llm.answer(calls(tool_call("agent_planner", {"task": "go"})), "could not delegate")
    run = daemon.wait_status(daemon.start_run("chief")["id"], "COMPLETED", timeout=60)
    (call,) = _step(run)["metadata"]["toolCalls"]
    assert call["tool"] == "agent_planner" and "STATION_AGENT_TOOL_DEPTH" in call["error"], call


def test_the_dashboards_step_detail_lists_the_tool_calls(daemon: Daemon, llm: FakeLLM) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    llm.answer(calls(tool_call("get_pods", {"namespace": "prod"}), tool_call("restart_pod", {"name": "api-1"})),
               {"restarted": "api-1"})
    run = daemon.wait_status(daemon.start_run("triage")["id"], "COMPLETED", timeout=60)
    pw = sync_api.sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.set_default_timeout(15_000)
        page.goto(f"{daemon.base}/#/runs/{run['id']}")
        page.click(".tl-item[data-state=fix] > .tl-head")
        rows = page.locator(".tool-calls > li")
        sync_api.expect(rows).to_have_count(2)
        assert rows.nth(0).get_attribute("data-tool") == "get_pods"
        assert "@ ops" in rows.nth(0).inner_text() and "restart_pod" in rows.nth(1).inner_text()
        rows.nth(0).locator("summary").click()
        sync_api.expect(rows.nth(0)).to_contain_text("CrashLoopBackOff")  # the result's excerpt, on open
        assert not errors, errors
        browser.close()
    finally:
        pw.stop()


# -- the daemon's own MCP server at /mcp, through the SDK's client ----------------------------------
def _mcp(daemon: Daemon, principal: str, work: Any) -> Any:
    """Without tokens (this daemon's loopback mode) callers name themselves; with tokens the bearer
    token's principal acts (api/door.py, the same for /mcp as for /api)."""
    async def go() -> Any:
        http = create_mcp_http_client(headers={"X-Station-Principal": principal})
        async with http, Client(streamable_http_client(daemon.base + "/mcp", http_client=http), cache=None) as client:
            return await work(client)

    return asyncio.run(go())


def _data(result: Any) -> Any:
    assert result.content, result
    return json.loads(result.content[0].text)


def test_workflows_are_mcp_tools_and_a_gate_is_approved_through_mcp(daemon: Daemon) -> None:
    async def work(client: Client) -> dict[str, Any]:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        started = _data(await client.call_tool("run_gated-deploy", {"service": "billing", "_waitSeconds": 10}))
        run_id = started["run"]["id"]
        pending = _data(await client.call_tool("list_approvals", {"runId": run_id}))["approvals"]
        refused = await client.call_tool("approve", {"runId": run_id, "approvalId": pending[0]["id"]})
        return {"tools": tools, "started": started, "pending": pending, "refused": refused}

    seen = _mcp(daemon, "bob", work)
    tools = seen["tools"]
    assert {"run_gated-deploy", "run_triage", "get_run", "list_approvals", "approve", "reject"} <= set(tools)
    schema = tools["run_gated-deploy"].input_schema
    assert schema["required"] == ["service"] and schema["properties"]["service"] == {"type": "string"}
    assert "Deploys a service" in tools["run_gated-deploy"].description
    assert seen["started"]["run"]["status"] == "WAITING_APPROVAL"  # it waited until the gate
    assert len(seen["pending"]) == 1 and seen["pending"][0]["message"] == "Deploy billing?"
    refused = seen["refused"]
    assert refused.is_error and _data(refused)["error"]["code"] == "forbidden"  # bob is not an approver
    run_id, approval_id = seen["started"]["run"]["id"], seen["pending"][0]["id"]

    decided = _data(_mcp(daemon, "alice", lambda c: c.call_tool(
        "approve", {"runId": run_id, "approvalId": approval_id, "comment": "ship it"})))
    assert decided["approval"]["decidedBy"] == "alice", decided

    def finished() -> Any:
        got = _data(_mcp(daemon, "alice", lambda c: c.call_tool("get_run", {"runId": run_id})))
        return got["run"] if got["run"]["status"] == "COMPLETED" else None

    done = wait_until(finished, 30, interval=0.2, what="the approved run to complete (get_run)")
    assert done["context"]["deployed"] is True


def test_bad_mcp_calls_are_tool_errors(daemon: Daemon) -> None:
    async def work(client: Client) -> list[Any]:
        return [await client.call_tool("run_gated-deploy", {}),  # misses `service`
                await client.call_tool("get_run", {"runId": "nope"}),
                await client.call_tool("run_nothing", {})]

    missing, unknown_run, unknown_tool = _mcp(daemon, "alice", work)
    assert missing.is_error and _data(missing)["error"]["status"] == 400
    assert unknown_run.is_error and _data(unknown_run)["error"]["status"] == 404
    assert unknown_tool.is_error and "no tool" in _data(unknown_tool)["error"]["message"]


# -- last: kills and restarts the module's daemon ---------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_kill_9_mid_tool_call_takes_the_server_along_and_the_step_runs_again(daemon: Daemon, llm: FakeLLM,
                                                                              marks: Path) -> None:
    """The stdio server dies with its daemon (its stdin closes), and the redelivered attempt runs the
    agent again with the same idempotency keys for its tool calls."""
    started = set(_marks(marks, "hang_started"))
    llm.answer(calls(tool_call("hang")))
    run_id = daemon.start_run("triage")["id"]
    (mark,) = wait_until(lambda: set(_marks(marks, "hang_started")) - started, 30, what="the hanging tool call")
    server_pid = int(mark.name.split("-")[-2])
    assert _alive(server_pid)
    daemon.kill()
    wait_until(lambda: not _alive(server_pid), 15, what="the stdio MCP server to exit with its daemon")
    llm.answer(calls(tool_call("whoami")), {"restarted": "after the crash"})
    daemon.start()
    run = daemon.wait_status(run_id, "COMPLETED", timeout=60)

    assert run["context"]["steps"]["fix"] == {"restarted": "after the crash"}
    step = _step(run)
    (call,) = step["metadata"]["toolCalls"]
    assert call["tool"] == "whoami" and call["idempotencyKey"] == f"{step['idempotencyKey']}:tool:triage:1:0"
    assert json.loads(call["excerpt"])["pid"] != server_pid
