"""`endpoint:` agents: the HTTP agent protocol, unchanged from the durable core.

POST <endpoint> with JSON {agent, task, input, variables, runId, stepId, attempt} and the headers
`Idempotency-Key` (and `traceparent` when the run has one). A 2xx JSON body is the result (a non-object
JSON value or a non-JSON body becomes {"response": ...}); any other status is a StepError carrying the
status and the body.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from station_wf.agents.providers import (
    AgentRequest,
    ProviderReply,
    http_error,
    loads_json,
    read_body,
    request_timeout,
    timeout_error,
)
from station_wf.executors.base import StepError
from station_wf.telemetry.tracing import inject_traceparent


class HttpAgentProvider:
    name = "http"
    renders_prompt = False

    async def complete(self, request: AgentRequest, http: aiohttp.ClientSession) -> ProviderReply:
        call, spec = request.call, request.spec
        assert spec.endpoint
        body = {
            "agent": request.agent_ref,
            "task": request.task,
            "input": call.input,
            "variables": request.variables,
            "runId": call.run_id,
            "stepId": call.step_id,
            "attempt": call.attempt,
        }
        headers = {"Idempotency-Key": call.idempotency_key}
        tp = inject_traceparent() or call.traceparent  # the AgentExecute span, so the agent joins the trace
        if tp:
            headers["traceparent"] = tp
        meta: dict[str, Any] = {"endpoint": spec.endpoint}
        what = f"agent {request.agent_ref!r} at {spec.endpoint}"
        try:
            async with http.post(spec.endpoint, json=body, headers=headers, allow_redirects=False,
                                 timeout=request_timeout(call, request.limits)) as resp:
                text = await read_body(resp, what, request.limits, meta)
                if not 200 <= resp.status < 300:
                    raise http_error(f"agent {request.agent_ref!r}", resp.status, text, meta)
        except TimeoutError:
            raise timeout_error(what, call, meta, request.limits) from None
        except aiohttp.ClientError as exc:
            raise StepError(f"agent {request.agent_ref!r} at {spec.endpoint}: {type(exc).__name__}: {exc}",
                            metadata=meta) from None
        try:
            return ProviderReply(loads_json(text, what, request.limits, meta), True, text=None, model=spec.model,
                                 metadata=meta)
        except ValueError:
            return ProviderReply(text, False, text=text, model=spec.model, metadata=meta)
