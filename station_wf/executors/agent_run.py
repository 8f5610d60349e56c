"""`agent.run`: calls an agent. Here, the HTTP agent protocol (`endpoint:` in the agent's front matter)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from station_wf.agents.catalog import AgentCatalog
from station_wf.executors.base import StepCall, StepError

MAX_ERROR_BODY = 2000


class AgentRunExecutor:
    action = "agent.run"

    def __init__(self, catalog: AgentCatalog) -> None:
        self.catalog = catalog
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=512), timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def execute(self, call: StepCall) -> Any:
        name = call.input.get("agent")
        if not isinstance(name, str) or not name:
            raise StepError("agent.run needs input.agent (the agent's name)", type="validation")
        spec = self.catalog.get(name)
        if spec is None:
            raise StepError(f"unknown agent {name!r} (looked in {self.catalog.directory})", type="validation")
        if not spec.endpoint:
            raise StepError(f"agent {name!r} has no endpoint and no supported model provider", type="validation")
        body = {
            "agent": name,
            "task": call.input.get("task"),
            "input": call.input,
            "variables": call.input.get("variables") or {},
            "runId": call.run_id,
            "stepId": call.step_id,
            "attempt": call.attempt,
        }
        headers = {"Idempotency-Key": call.idempotency_key}
        if call.traceparent:
            headers["traceparent"] = call.traceparent
        try:
            async with self._http().post(spec.endpoint, json=body, headers=headers) as resp:
                text = await resp.text()
                if not 200 <= resp.status < 300:
                    raise StepError(
                        f"agent {name!r} answered HTTP {resp.status}",
                        details={"status": resp.status, "body": text[:MAX_ERROR_BODY]},
                    )
        except aiohttp.ClientError as exc:
            raise StepError(f"agent {name!r} at {spec.endpoint}: {type(exc).__name__}: {exc}") from None
        try:
            result = json.loads(text)
        except ValueError:
            return {"response": text}
        return result if isinstance(result, dict) else {"response": result}
