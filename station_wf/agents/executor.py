"""`agent.run`: look the agent up, check its input, call its provider, check and shape its output.

The engine has already rendered the step's `{{ }}` templates, so `call.input` holds final values:
`agent` (`name` or `name@env`), `task` and `variables`. Order matters: the input schema is checked
before any network traffic (a bad input never reaches a model), the output schema after, and both
failures are `StepError(type="validation")`, retried like any other error by the engine.
"""

from __future__ import annotations

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
    ProviderReply,
    select_provider,
    too_deep,
)
from station_wf.agents.schemas import validation_errors
from station_wf.executors.base import StepCall, StepError, StepResult
from station_wf.expr.limits import value_depth_exceeds
from station_wf.telemetry.tracing import agent_span, token_attributes


class AgentRunExecutor:
    action = "agent.run"

    def __init__(self, catalog: AgentCatalog, limits: AgentLimits | None = None) -> None:
        self.catalog = catalog
        self.limits = limits or AgentLimits()
        self.renderer = PromptRenderer()
        self._session: aiohttp.ClientSession | None = None

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
        variables = call.input.get("variables")
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
