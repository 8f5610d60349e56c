"""`agent.run`: look the agent up, check its input, call its provider, check and shape its output.

The engine has already rendered the step's `{{ }}` templates, so `call.input` holds final values:
`agent` (`name` or `name@env`), `task` and `variables`. Order matters: the input schema is checked
before any network traffic (a bad input never reaches a model), the output schema after, and both
failures are `StepError(type="validation")`, retried like any other error by the engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

import aiohttp

from station_wf.agents.catalog import AgentCatalog, AgentFileError, AgentSpec
from station_wf.agents.prompt import PromptRenderer, PromptRenderError
from station_wf.agents.providers import (
    MAX_ERROR_BODY,
    AgentLimits,
    AgentRequest,
    Provider,
    ProviderReply,
    select_provider,
    too_deep,
)
from station_wf.agents.providers.openai_chat import OpenAIChatProvider
from station_wf.agents.schemas import validation_errors
from station_wf.agents.tool_loop import (
    BudgetExceeded,
    LoopLimits,
    StepBudget,
    ToolCallSink,
    ToolFailed,
    ToolLoop,
)
from station_wf.agents.toolbox import Route, build_toolbox
from station_wf.executors.base import StepCall, StepError, StepResult
from station_wf.expr.limits import value_depth_exceeds
from station_wf.mcp.pool import McpPool
from station_wf.telemetry.tracing import agent_span, token_attributes

MAX_INTERRUPTED = 1024  # audits of interrupted attempts the worker has not taken yet (a bound, never reached)


class AgentRunExecutor:
    action = "agent.run"

    def __init__(self, catalog: AgentCatalog, limits: AgentLimits | None = None, pool: McpPool | None = None,
                 max_steps: int = 10, tool_timeout_s: float = 60.0, tool_depth: int = 2,
                 conversation_max_bytes: int = 16 * 1024 * 1024, max_tool_calls: int = 256) -> None:
        self.catalog = catalog
        self.limits = limits or AgentLimits()
        self.pool = pool or McpPool(catalog.environments_dir)  # issue 20: the MCP servers agents call tools on
        self.max_steps = max_steps
        self.tool_timeout_s = tool_timeout_s
        self.tool_depth = tool_depth
        self.conversation_max_bytes = conversation_max_bytes  # review M5: one step's conversations, summed
        self.max_tool_calls = max_tool_calls
        self.tool_call_sink: ToolCallSink | None = None  # the daemon's worker logs each tool call as it happens
        self.renderer = PromptRenderer()
        self._session: aiohttp.ClientSession | None = None
        self._interrupted: dict[str, dict[str, Any]] = {}

    def interrupted_metadata(self, call: StepCall) -> dict[str, Any] | None:
        """The tool calls of an attempt that was cancelled or timed out (taken once, by the worker)."""
        return self._interrupted.pop(call.idempotency_key, None)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=512),
                timeout=aiohttp.ClientTimeout(total=None, connect=self.limits.connect_timeout_s,
                                              sock_connect=self.limits.connect_timeout_s,
                                              sock_read=self.limits.read_timeout_s),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self.pool.close()

    def lookup(self, ref: Any) -> AgentSpec:
        if not isinstance(ref, str) or not ref.strip():
            raise StepError("agent.run needs input.agent (the agent's name, or name@env)", type="validation")
        try:
            spec, catalog = self.catalog.resolve(ref.strip())
        except AgentFileError as exc:
            raise StepError(f"agent {ref!r}: {exc}", type="validation") from None
        if spec is None:
            name = ref.partition("@")[0]
            why = catalog.broken.get(name)
            detail = f": its file does not load: {why}" if why else f" (looked in {catalog.directory})"
            raise StepError(f"unknown agent {ref!r}{detail}", type="validation")
        return spec

    async def execute(self, call: StepCall) -> StepResult:
        ref = call.input.get("agent")
        spec = self.lookup(ref)
        assert isinstance(ref, str)
        task = call.input.get("task")  # any JSON value: "{{ item }}" keeps the item's type (DESIGN 3)
        audit: list[dict[str, Any]] = []
        try:
            budget = StepBudget(self.conversation_max_bytes, self.max_tool_calls)
            result = await self._run(spec, ref, task, call.input.get("variables"), call, self.tool_depth, audit,
                                     (spec.name,), budget)
        except StepError as exc:
            if audit:
                exc.metadata = {**exc.metadata, "toolCalls": audit}
            raise
        except asyncio.CancelledError:  # timed out or cancelled: the worker records what was done so far
            if audit:
                while len(self._interrupted) >= MAX_INTERRUPTED:
                    self._interrupted.pop(next(iter(self._interrupted)))
                self._interrupted[call.idempotency_key] = {"agent": spec.name, "toolCalls": audit}
            raise
        if audit:
            result.metadata["toolCalls"] = audit
        return result

    async def _run(self, spec: AgentSpec, ref: str, task: Any, variables: Any, call: StepCall, depth_left: int,
                   audit: list[dict[str, Any]], path: tuple[str, ...], budget: StepBudget) -> StepResult:
        """One agent, its tools included; an agent-as-tool comes back here one level deeper."""
        if variables is None:
            variables = {}
        if not isinstance(variables, dict):
            raise StepError(f"agent.run variables must be an object, got {type(variables).__name__}", type="validation")
        meta: dict[str, Any] = {"agent": spec.name, "agentHash": spec.content_hash, "agentFile": spec.source_file}
        if spec.input_schema is not None:
            errors = validation_errors(variables, spec.input_schema)
            if errors:
                raise StepError(f"agent {spec.name!r}: variables do not match its input schema: {errors[0]}",
                                type="validation", details={"schema": "input", "errors": errors}, metadata=meta)
        provider, model = select_provider(spec)
        meta.update(provider=provider.name, model=model)
        rendered = None
        if provider.renders_prompt:
            try:
                rendered = await self.renderer.render(spec, task, variables)
            except PromptRenderError as exc:
                raise StepError(str(exc), type="validation", metadata=meta) from None
            meta["prompt"] = rendered.prompt
            if rendered.explicit_roles:
                meta["messages"] = rendered.messages
        request = AgentRequest(call=call, spec=spec, agent_ref=ref, model=model, task=task, variables=variables,
                               prompt=rendered, limits=self.limits)
        started = time.monotonic()
        with agent_span({"agent.name": spec.name, "agent.provider": provider.name, "agent.model": model,
                         "run.id": call.run_id, "step.id": call.step_id}) as aspan:
            try:
                if spec.tools:
                    reply = await self._tool_loop(request, provider, depth_left, audit, path, meta, budget)
                else:
                    reply = await provider.complete(request, self._http())
            except StepError as exc:
                aspan.set_status("failed", exc.type if exc.type in ("timeout", "validation") else "agent_error", str(exc))
                exc.metadata = {**meta, "latencyMs": _ms(started), **exc.metadata}
                raise
            if value_depth_exceeds(reply.output, self.limits.max_output_depth):  # any provider, before deepcopy
                exc = too_deep(f"agent {spec.name!r}", self.limits, {**meta, "latencyMs": _ms(started)})
                aspan.set_status("failed", "validation", str(exc))
                raise exc
            aspan.update({"agent.model": reply.model} if reply.model else {})
            aspan.update(token_attributes(reply.usage))
            aspan.set_status("succeeded")
        meta["latencyMs"] = _ms(started)
        meta.update(reply.metadata)
        if reply.model:
            meta["model"] = reply.model
        if reply.usage is not None:
            meta["usage"] = reply.usage
        return StepResult(self.shape(spec, reply, meta), meta)

    async def _tool_loop(self, request: AgentRequest, provider: Provider, depth_left: int,
                         audit: list[dict[str, Any]], path: tuple[str, ...], meta: dict[str, Any],
                         budget: StepBudget) -> ProviderReply:
        spec = request.spec
        if not isinstance(provider, OpenAIChatProvider):
            raise StepError(f"agent {spec.name!r}: 'tools' need an OpenAI-compatible model (openai/...), "
                            f"not the {provider.name!r} provider", type="validation", metadata=meta)
        box = await build_toolbox(spec, self.catalog, self.pool, depth_left - 1)
        meta["tools"] = sorted(box.routes)
        if box.clashes:
            meta["toolClashes"] = box.clashes

        async def agent_tool(route: Route, arguments: dict[str, Any], key: str) -> Any:
            assert route.agent is not None
            sub = dataclasses.replace(request.call, idempotency_key=key)
            try:
                done = await self._run(route.agent, route.agent.name, arguments.get("task"), arguments.get("variables"),
                                       sub, depth_left - 1, audit, (*path, route.agent.name), budget)
            except BudgetExceeded as exc:
                exc.metadata = {}  # the step's own limit, not this tool's failure: the step's metadata is the caller's
                raise
            except StepError as exc:
                raise ToolFailed(f"agent {route.agent.name!r} failed: {exc}") from None
            return done.output

        limits = LoopLimits(max(1, spec.max_steps or self.max_steps), self.tool_timeout_s)
        loop = ToolLoop(provider, self.pool, box, limits, agent_tool, audit, path, budget, self.tool_call_sink)
        return await loop.run(request, self._http(), meta)

    def shape(self, spec: AgentSpec, reply: ProviderReply, meta: dict[str, Any]) -> dict[str, Any]:
        """DESIGN 3: the structured output when the answer is JSON (schema-checked), else {"response": text}."""
        if spec.output_schema is not None:
            if not reply.is_json:
                raise StepError(f"agent {spec.name!r}: the answer is not JSON but the agent has an output schema",
                                type="validation",
                                details={"schema": "output", "answer": _excerpt(reply)},
                                metadata=meta)
            errors = validation_errors(reply.output, spec.output_schema)
            if errors:
                raise StepError(f"agent {spec.name!r}: the answer does not match its output schema: {errors[0]}",
                                type="validation",
                                details={"schema": "output", "errors": errors,
                                         "answer": _excerpt(reply)},
                                metadata=meta)
        if reply.is_json and isinstance(reply.output, dict):
            return reply.output
        return {"response": reply.output}


def _excerpt(reply: ProviderReply) -> str:
    text = reply.text if reply.text is not None else json.dumps(reply.output, default=str)
    return text[:MAX_ERROR_BODY]


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
