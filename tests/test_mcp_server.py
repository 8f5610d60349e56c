"""The daemon's own MCP server at /mcp, driven by the SDK's client: list the workflow tools, start a
run, see its approval and approve it (approvers enforced), all behind the API's bearer auth."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.conftest import Daemon, wait_until

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

QUICK = """
id: quick
start: a
states:
  - { name: a, type: inject, data: { ok: true }, end: true }
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("mcp-daemon")
    tokens = root / "tokens.json"
    tokens.write_text(json.dumps({"alice-token-0123456789": {"principal": "alice"},
                                  "bob-token-0123456789ab": {"principal": "bob"}}))
    d = Daemon(root, None, {"STATION_API_TOKENS_FILE": str(tokens)})
    (root / "environments" / "default" / "agents").mkdir(parents=True)
    d.add_workflow("gated-deploy", GATED)
    d.add_workflow("quick", QUICK)
    d.start(wait=False)
    d.wait_ready()
    yield d
    assert d.stop() == 0, d.log()


def _call(daemon: Daemon, token: str, work: Any) -> Any:
    async def go() -> Any:
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        async with http, Client(streamable_http_client(daemon.base + "/mcp", http_client=http), cache=None) as client:
            return await work(client)

    return asyncio.run(go())


def _data(result: Any) -> Any:
    assert result.content, result
    return json.loads(result.content[0].text)


def test_workflows_are_tools_and_a_gate_is_approved_through_mcp(daemon: Daemon) -> None:
    async def work(client: Client) -> dict[str, Any]:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        started = _data(await client.call_tool("run_gated-deploy", {"service": "billing", "_waitSeconds": 10}))
        run_id = started["run"]["id"]
        pending = _data(await client.call_tool("list_approvals", {"runId": run_id}))["approvals"]
        refused = await client.call_tool("approve", {"runId": run_id, "approvalId": pending[0]["id"]})
        return {"tools": tools, "started": started, "pending": pending, "refused": refused, "run_id": run_id}

    seen = _call(daemon, "bob-token-0123456789ab", work)
    tools = seen["tools"]
    assert {"run_gated-deploy", "run_quick", "get_run", "list_approvals", "approve", "reject"} <= set(tools)
    schema = tools["run_gated-deploy"].input_schema
    assert schema["required"] == ["service"] and schema["properties"]["service"] == {"type": "string"}
    assert "Deploys a service" in tools["run_gated-deploy"].description
    assert seen["started"]["run"]["status"] == "WAITING_APPROVAL"  # it waited until the gate
    assert len(seen["pending"]) == 1 and seen["pending"][0]["message"] == "Deploy billing?"
    refused = seen["refused"]
    assert refused.is_error and _data(refused)["error"]["code"] == "forbidden"  # bob is not an approver
    run_id = seen["run_id"]

    async def approve(client: Client) -> Any:
        pending = _data(await client.call_tool("list_approvals", {"runId": run_id}))["approvals"]
        decided = _data(await client.call_tool("approve", {"runId": run_id, "approvalId": pending[0]["id"],
                                                           "comment": "ship it"}))
        return decided

    decided = _call(daemon, "alice-token-0123456789", approve)
    assert decided["approval"]["decidedBy"] == "alice", decided

    def finished() -> Any:
        got = _data(_call(daemon, "alice-token-0123456789", lambda c: c.call_tool("get_run", {"runId": run_id})))
        return got["run"] if got["run"]["status"] == "COMPLETED" else None

    done = wait_until(finished, 30, interval=0.2, what="the approved run to complete (get_run)")
    assert done["context"]["deployed"] is True


def test_bad_calls_are_tool_errors_and_the_door_needs_a_token(daemon: Daemon) -> None:
    async def work(client: Client) -> list[Any]:
        return [await client.call_tool("run_gated-deploy", {}),  # misses `service`
                await client.call_tool("get_run", {"runId": "nope"}),
                await client.call_tool("run_nothing", {})]

    missing, unknown_run, unknown_tool = _call(daemon, "alice-token-0123456789", work)
    assert missing.is_error and _data(missing)["error"]["status"] == 400
    assert unknown_run.is_error and _data(unknown_run)["error"]["status"] == 404
    assert unknown_tool.is_error and "no tool" in _data(unknown_tool)["error"]["message"]
    resp = httpx.post(daemon.base + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=10)
    assert resp.status_code == 401, resp.text


