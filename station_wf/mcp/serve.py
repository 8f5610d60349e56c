"""The daemon's own MCP server at `/mcp` (streamable HTTP, issue 20): workflows as tools.

One tool per active workflow, named `run_<workflow id>`, whose input schema is the workflow's
`inputSchema`; calling it starts a run with the arguments as the run's input and answers the run
(with `_waitSeconds` among the arguments, up to 300, it answers once the run has finished or is
waiting on a person, or when the time is up). And `get_run`, `list_approvals`, `approve`, `reject`,
which do what the REST API does, through the same services: approvers are enforced the same way, the
caller being the bearer token's principal (the request passes `api/door.py` like any API request).

Stateless and JSON-answering: any replica serves any request, nothing is kept between them.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import re
import time
from typing import Any

from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from station_wf.errors import ServiceError
from station_wf.governance.admission import RunMeta
from station_wf.principals import Principal

WAIT_ARG = "_waitSeconds"
MAX_WAIT_S = 300.0
MAX_WORKFLOW_TOOLS = 500
TOOL_PREFIX = "run_"
_WAITING = ("WAITING_APPROVAL", "WAITING_SIGNAL", "PAUSED")
_TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("mcp_principal", default=None)

_RUN_ID = {"runId": {"type": "string", "description": "the run's id"}}
FIXED_TOOLS: list[tuple[str, str, dict[str, Any]]] = [
    ("get_run", "A run: its status, context (output), error and current steps.",
     {"type": "object", "properties": _RUN_ID, "required": ["runId"]}),
    ("list_approvals", "Pending approvals (optionally of one workflow or run).",
     {"type": "object", "properties": {"workflowId": {"type": "string"}, "runId": {"type": "string"}}}),
    ("approve", "Approve a pending approval (the caller must be one of its approvers).",
     {"type": "object", "properties": {**_RUN_ID, "approvalId": {"type": "string"}, "comment": {"type": "string"}},
      "required": ["runId", "approvalId"]}),
    ("reject", "Reject a pending approval (the caller must be one of its approvers).",
     {"type": "object", "properties": {**_RUN_ID, "approvalId": {"type": "string"}, "reason": {"type": "string"}},
      "required": ["runId", "approvalId"]}),
]


def tool_name(workflow_id: str) -> str:
    return (TOOL_PREFIX + _SAFE.sub("_", workflow_id))[:128]


def _tool_schema(input_schema: Any) -> dict[str, Any]:
    schema = dict(input_schema) if isinstance(input_schema, dict) else {}
    schema.setdefault("type", "object")
    props = dict(schema.get("properties") or {})
    props[WAIT_ARG] = {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S,
                       "description": "wait up to this many seconds for the run to finish (or wait on a person)"}
    schema["properties"] = props
    return schema


class WorkflowTools:
    """The `/mcp` endpoint. The SDK's server and session manager are made at the first request (importing
    the SDK costs a second of start-up that a daemon nobody calls over MCP should not pay); `run()` is the
    daemon's component that keeps the manager running until the daemon stops."""

    def __init__(self, definitions: Any, runs: Any, control: Any) -> None:
        self.definitions = definitions
        self.runs = runs
        self.control = control
        self._asgi: Any = None
        self._ready: asyncio.Event | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def route(self) -> Route:
        return Route("/mcp", endpoint=self)  # an ASGI app (not a function): Starlette hands it the raw request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = scope.get("state", {}).get("principal")
        token = _principal.set(principal if isinstance(principal, Principal) else None)
        try:
            await (await self._started())(scope, receive, send)
        finally:
            _principal.reset(token)

    async def _started(self) -> Any:
        if self._ready is None:
            self._ready = asyncio.Event()
            # A fresh context: the manager outlives this request and must not carry its caller's principal.
            self._task = asyncio.create_task(self._serve(), name="mcp-session-manager", context=contextvars.Context())
        await self._ready.wait()
        if self._asgi is None:
            raise RuntimeError("the MCP session manager did not start")
        return self._asgi

    async def _serve(self) -> None:
        assert self._ready is not None
        try:
            from mcp.server.lowlevel import Server
            from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager

            server: Any = Server("station-wf", on_list_tools=self._list_tools, on_call_tool=self._call_tool)
            manager = StreamableHTTPSessionManager(app=server, stateless=True, json_response=True)
            async with manager.run():
                self._asgi = StreamableHTTPASGIApp(manager)
                self._ready.set()
                await self._stop.wait()
        finally:
            self._asgi = None
            self._ready.set()

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._stop.set()
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=5)

    # -- handlers ------------------------------------------------------------------------------
    async def _workflows(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for item in (await self.definitions.list("active"))[:MAX_WORKFLOW_TOOLS]:
            try:
                full = await self.definitions.get(item["id"])
            except ServiceError:
                continue  # disabled meanwhile
            out.append((item["id"], full))
        return out

    async def _list_tools(self, ctx: Any, params: Any) -> Any:
        import mcp.types as types

        tools = []
        for wf_id, full in await self._workflows():
            defn = full.get("definition") or {}
            text = full.get("description") or full.get("name") or f"Start a run of the workflow {wf_id!r}"
            tools.append(types.Tool(name=tool_name(wf_id), description=f"{text} (workflow {wf_id})",
                                    input_schema=_tool_schema(defn.get("inputSchema"))))
        fixed = [types.Tool(name=name, description=text, input_schema=schema) for name, text, schema in FIXED_TOOLS]
        return types.ListToolsResult(tools=tools + fixed)

    async def _call_tool(self, ctx: Any, params: Any) -> Any:
        import mcp.types as types

        args = dict(params.arguments or {})
        try:
            result = await self._dispatch(params.name, args, _caller(ctx))
        except ServiceError as exc:
            body = {"error": {"code": exc.code, "message": exc.message, "details": exc.details, "status": exc.status}}
            return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps(body, default=str))],
                                        structured_content=body, is_error=True)
        text = json.dumps(result, default=str)
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)], structured_content=result)

    async def _dispatch(self, name: str, args: dict[str, Any], principal: Principal) -> dict[str, Any]:
        if name == "get_run":
            return {"run": await self.runs.get(_str(args, "runId"))}
        if name == "list_approvals":
            run_id = args.get("runId")
            return {"approvals": await self.control.list_approvals("pending", args.get("workflowId"),
                                                                   run_id if isinstance(run_id, str) else None)}
        if name in ("approve", "reject"):
            text = args.get("comment") if name == "approve" else args.get("reason", args.get("comment"))
            approval = await self.control.decide(_str(args, "runId"), _str(args, "approvalId"), name == "approve",
                                                 principal, text if isinstance(text, str) else None)
            return {"approval": approval}
        if name.startswith(TOOL_PREFIX):
            for wf_id, _ in await self._workflows():
                if tool_name(wf_id) == name:
                    return await self._start(wf_id, args)
        raise ServiceError(404, "not_found", f"no tool {name!r}: list the tools again (workflows change)")

    async def _start(self, wf_id: str, args: dict[str, Any]) -> dict[str, Any]:
        wait = args.pop(WAIT_ARG, None)
        run = await self.runs.start(wf_id, args, meta=RunMeta(principal=_principal.get()))  # issue 18: its policies
        if not isinstance(wait, int | float) or isinstance(wait, bool) or wait <= 0:
            return {"run": run}
        deadline = time.monotonic() + min(float(wait), MAX_WAIT_S)
        delay = 0.05
        while time.monotonic() < deadline:
            current = await self.runs.get(run["id"])
            if current["status"] in _TERMINAL or current["status"] in _WAITING:
                return {"run": current}
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)
        return {"run": await self.runs.get(run["id"]), "waited": "timed out; use get_run"}


def _caller(ctx: Any) -> Principal:
    request = getattr(ctx, "request", None)
    principal = getattr(request, "scope", {}).get("state", {}).get("principal") if request is not None else None
    if isinstance(principal, Principal):
        return principal
    return _principal.get() or Principal("anonymous")


def _str(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise ServiceError(400, "invalid_argument", f"{key!r} must be a non-empty string", {"field": key})
    return value
