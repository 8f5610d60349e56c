"""The door in front of /mcp (api/door.py), in-process: the same bearer auth as the API, and the token's
principal handed to the MCP server. The MCP tools themselves are driven through the SDK's client
against the real daemon in tests/test_agent_tools.py (`test_workflows_are_mcp_tools...`)."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.types import Receive, Scope, Send

from station_wf.api.auth import TokenTable
from station_wf.api.door import LoopbackPolicy, RequestContext
from station_wf.principals import Principal


async def test_mcp_needs_the_apis_bearer_token() -> None:
    seen: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["state"]["principal"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    door = RequestContext(app, TokenTable({"alice-token-0123456789": Principal("alice")}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=door), base_url="http://127.0.0.1") as client:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        refused = await client.post("/mcp", json=body)
        wrong = await client.post("/mcp", json=body, headers={"Authorization": "Bearer not-the-token-at-all"})
        allowed = await client.post("/mcp", json=body, headers={"Authorization": "Bearer alice-token-0123456789"})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    assert wrong.status_code == 401
    assert allowed.status_code == 200 and seen == [Principal("alice")]


async def test_without_tokens_mcp_takes_json_from_this_daemons_own_origin_only() -> None:
    """The loopback mode's checks (a web page the developer visits cannot drive /mcp either)."""
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    door = RequestContext(app, TokenTable({}), LoopbackPolicy("127.0.0.1", 8587))
    body = '{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}'
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=door), base_url="http://127.0.0.1:8587") as client:
        simple = await client.post("/mcp", content=body, headers={"Content-Type": "text/plain"})
        foreign = await client.post("/mcp", content=body, headers={"Content-Type": "application/json",
                                                                   "Origin": "https://evil.example"})
        fine = await client.post("/mcp", content=body, headers={"Content-Type": "application/json"})
    assert simple.status_code == 415 and foreign.status_code == 403 and fine.status_code == 200
