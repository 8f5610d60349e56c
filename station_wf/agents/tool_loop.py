"""The agent loop (issue 20): offer the agent's tools to its model, call what it asks for, feed the results
back, until a final answer or `max_steps` model turns.

A tool that fails, hangs past its timeout or whose server dies mid-call is reported to the model as
that tool call's result (an error text), as MCP intends, and the model decides what follows; the
call itself is never sent twice by us. Cancelling the step (the run is cancelled, or its timeout
fires) cancels the call in flight: the SDK sends `notifications/cancelled` to the server.
Every call is audited (tool, arguments, result size, a bounded excerpt, duration, error) into the
step's metadata, which the worker records with the result, and as `agent.tool_called` events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from station_wf.agents.providers import AgentRequest, ProviderReply, loads_json
from station_wf.agents.providers.openai_chat import OpenAIChatProvider
from station_wf.agents.toolbox import Route, Toolbox, bounded_json
from station_wf.executors.base import StepError
from station_wf.mcp.pool import McpPool, McpUnavailable, ServerDied

EXCERPT_CHARS = 500
ARGUMENTS_CHARS = 2000
MAX_TOOL_RESULT_CHARS = 64 * 1024  # what one tool result may add to the conversation
MAX_CALLS_PER_TURN = 32
IDEMPOTENCY_META = "io.station/idempotencyKey"
STEP_GRACE_S = 1.0  # past the step's deadline: only a caller that enforces no deadline of its own sees it

AgentTool = Callable[[Route, dict[str, Any], str], Awaitable[Any]]
"""Runs an agent-as-tool: (route, arguments, idempotency key) -> its output."""


@dataclasses.dataclass
class LoopLimits:
    max_steps: int
    tool_timeout_s: float


class ToolLoop:
    def __init__(self, provider: OpenAIChatProvider, pool: McpPool, box: Toolbox, limits: LoopLimits,
                 agent_tool: AgentTool, audit: list[dict[str, Any]], agent_path: tuple[str, ...]) -> None:
        self.provider = provider
        self.pool = pool
        self.box = box
        self.limits = limits
        self.agent_tool = agent_tool
        self.audit = audit
        self.agent_path = agent_path
        self.usage: dict[str, int] = {}

    async def run(self, request: AgentRequest, http: aiohttp.ClientSession, meta: dict[str, Any]) -> ProviderReply:
        assert request.prompt is not None
        started = time.monotonic()
        total = request.call.timeout_seconds
        messages: list[dict[str, Any]] = [dict(m) for m in request.prompt.messages]
        what = f"model {request.model!r}"
        for turn in range(1, self.limits.max_steps + 1):
            left = None if total is None else max(0.001, total - (time.monotonic() - started))
            turn_request = dataclasses.replace(request, call=dataclasses.replace(request.call, timeout_seconds=left))
            body = {**self.provider.body(turn_request), "messages": messages, "tools": self.box.functions}
            text = await self.provider.post(turn_request, http, body, meta)
            message = self._message(text, request, meta, what)
            calls = message.get("tool_calls") or []
            if not calls:
                reply = self.provider.reply(turn_request, text, meta, what)
                reply.usage = self._add_usage(reply.usage)
                meta["turns"] = turn
                return reply
            self._add_usage(_usage_of(text))
            if not isinstance(calls, list) or len(calls) > MAX_CALLS_PER_TURN:
                raise StepError(f"{what} asked for {len(calls) if isinstance(calls, list) else 'malformed'} tool calls "
                                f"in one turn (at most {MAX_CALLS_PER_TURN})", metadata=meta)
            calls = [_with_id(c, turn, n) for n, c in enumerate(calls)]  # a tool message answers its call by id
            messages.append({"role": "assistant", "content": message.get("content"), "tool_calls": calls})
            for n, tool_call in enumerate(calls):
                content = await self._call(tool_call, request, turn, n, left, started, total)
                messages.append({"role": "tool", "tool_call_id": tool_call["id"], "content": content})
        meta["turns"] = self.limits.max_steps
        raise StepError(f"agent {request.spec.name!r} reached max_steps ({self.limits.max_steps} model turns) "
                        "without a final answer", type="max_steps",
                        details={"maxSteps": self.limits.max_steps, "toolCalls": len(self.audit)},
                        metadata={**meta, "usage": dict(self.usage)})

    def _message(self, text: str, request: AgentRequest, meta: dict[str, Any], what: str) -> dict[str, Any]:
        try:
            message = loads_json(text, what, request.limits, meta)["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            return {}  # provider.reply names what is wrong with it
        return message if isinstance(message, dict) else {}

    def _add_usage(self, usage: dict[str, Any] | None) -> dict[str, int | None]:
        for key, value in (usage or {}).items():
            if isinstance(value, int):
                self.usage[key] = self.usage.get(key, 0) + value
        return dict(self.usage)

    async def _call(self, tool_call: Any, request: AgentRequest, turn: int, n: int, left: float | None,
                    started: float, total: float | None) -> str:
        """One tool call, audited; returns what the model is told."""
        fn = (tool_call.get("function") or {}) if isinstance(tool_call, dict) else {}
        name = str(fn.get("name") or "")
        entry: dict[str, Any] = {"agentPath": list(self.agent_path), "turn": turn, "tool": name}
        t0 = time.monotonic()
        try:
            arguments = _arguments(fn.get("arguments"))
            entry["arguments"] = bounded_json(arguments, ARGUMENTS_CHARS)
            route = self.box.routes.get(name)
            if route is None:
                raise ToolFailed(f"unknown tool {name!r}; the tools are: {', '.join(sorted(self.box.routes))}")
            entry.update(kind=route.kind, server=route.server, mcpTool=route.tool,
                         agent=route.agent.name if route.agent else None)
            key = f"{request.call.idempotency_key}:tool:{'/'.join(self.agent_path)}:{turn}:{n}"
            entry["idempotencyKey"] = key
            timeout = self.limits.tool_timeout_s
            if total is not None:  # the step's own deadline comes first: it cancels the call (the worker's wait)
                left_now = total - (time.monotonic() - started)
                if left_now <= timeout:
                    timeout = max(0.001, left_now) + STEP_GRACE_S
            if route.kind == "agent":
                result: Any = await self.agent_tool(route, arguments, key)
                text = json.dumps(result, default=str, ensure_ascii=False)
            else:
                text = await self._mcp(route, request, arguments, key, timeout)
            entry.update(resultBytes=len(text.encode()), excerpt=text[:EXCERPT_CHARS], error=None)
        except ToolFailed as exc:
            text = f"error: {exc}"
            entry.update(resultBytes=0, excerpt=None, error=str(exc))
        except asyncio.CancelledError:  # the step timed out or was cancelled: the call in flight is audited too
            entry.update(resultBytes=0, excerpt=None, error="cancelled: the step timed out or was cancelled during the call",
                         durationMs=round((time.monotonic() - t0) * 1000))
            self.audit.append(entry)
            raise
        entry["durationMs"] = round((time.monotonic() - t0) * 1000)
        self.audit.append(entry)
        if len(text) > MAX_TOOL_RESULT_CHARS:
            text = text[:MAX_TOOL_RESULT_CHARS] + f"\n[truncated: {len(text)} characters in all]"
        return text

    async def _mcp(self, route: Route, request: AgentRequest, arguments: dict[str, Any], key: str,
                   timeout: float) -> str:
        env = request.spec.environment or "default"
        assert route.server is not None and route.tool is not None
        try:
            spec = self.pool.servers(env).get(route.server)
            if spec is None:
                raise ToolFailed(f"MCP server {route.server!r} is no longer configured")
            handle = await self.pool.handle(env, spec)
            result = await handle.call(route.tool, arguments, {IDEMPOTENCY_META: key, "stepIdempotencyKey":
                                                               request.call.idempotency_key}, timeout)
        except TimeoutError:
            raise ToolFailed(f"tool {route.tool!r} of MCP server {route.server!r} did not answer within {timeout:g}s "
                             "(STATION_MCP_TOOL_TIMEOUT_SECONDS); the call was cancelled") from None
        except (ServerDied, McpUnavailable) as exc:
            raise ToolFailed(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - an MCP protocol error is this call's failure
            raise ToolFailed(f"tool {route.tool!r} of MCP server {route.server!r}: {type(exc).__name__}: {exc}") from None
        text = _result_text(result)
        if getattr(result, "is_error", False):
            raise ToolFailed(f"tool {route.tool!r} of MCP server {route.server!r} answered an error: {text[:EXCERPT_CHARS]}")
        return text


class ToolFailed(Exception):
    """A tool call that did not produce a result; the model is told why."""


def _with_id(call: Any, turn: int, n: int) -> dict[str, Any]:
    if not isinstance(call, dict):
        return {"id": f"call_{turn}_{n}", "type": "function", "function": {"name": "", "arguments": "{}"}}
    return call if call.get("id") else {**call, "id": f"call_{turn}_{n}"}


def _arguments(raw: Any) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ToolFailed(f"the arguments are not a JSON object: {str(raw)[:200]!r}")
    return value


def _result_text(result: Any) -> str:
    """Structured content as JSON when the tool gave it, else its text parts joined."""
    structured = getattr(result, "structured_content", None)
    if structured is not None:
        if isinstance(structured, dict) and set(structured) == {"result"}:
            structured = structured["result"]  # the SDK wraps a bare return value so
        if isinstance(structured, str):
            return structured
        return json.dumps(structured, default=str, ensure_ascii=False)
    parts = []
    for block in getattr(result, "content", None) or []:
        text = getattr(block, "text", None)
        parts.append(text if isinstance(text, str) else f"[{getattr(block, 'type', 'content')}]")
    return "\n".join(parts)


def _usage_of(text: str) -> dict[str, Any]:
    try:
        usage = json.loads(text).get("usage")
    except (ValueError, AttributeError):
        return {}
    return usage if isinstance(usage, dict) else {}


__all__ = ["LoopLimits", "ToolFailed", "ToolLoop"]
