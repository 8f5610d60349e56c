"""`AsyncClient`: the whole API for asyncio, over one `httpx.AsyncClient`; the same methods as `Client`.

    from station_wf.client import AsyncClient
    async with AsyncClient("http://127.0.0.1:8587") as api:
        run = await api.start_run("hello", {"name": "Ada"})
        async for event in api.stream_run(run["id"]):
            print(event.type, event.step_id)

Every method sends one `calls` builder's request (see `calls.py`); every error is an `ApiError`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import httpx

from station_wf.client import calls
from station_wf.client.base import Options
from station_wf.client.errors import ApiError
from station_wf.client.sse import Follow, LineParser, StreamEvent
from station_wf.client.types import (
    Agent,
    AgentList,
    Approval,
    BatchItem,
    BatchResult,
    Delivery,
    Event,
    EventPage,
    Health,
    Run,
    RunPage,
    Schedule,
    Signal,
    Step,
    SyncStatus,
    Validation,
    Workflow,
    is_terminal,
)

T = TypeVar("T")


class AsyncClient:
    """The asyncio client; `Client` has the same methods, blocking."""

    def __init__(self, base_url: str | None = None, *, token: str | None = None, principal: str | None = None,
                 timeout: float | None = None, options: Options | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        opts = options or Options.from_env()
        overrides: dict[str, Any] = {"base_url": base_url, "token": token, "principal": principal, "timeout": timeout}
        opts = dataclasses.replace(opts, **{k: v for k, v in overrides.items() if v is not None})
        self.options = opts
        self.base_url = opts.base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=opts.default_headers(),
                                  timeout=opts.httpx_timeout(), transport=transport)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(self, call: calls.Call[T]) -> T:
        """Send one prepared call (the layer every method uses; public for operations added later)."""
        try:
            response = await self._http.request(call.method, call.path, params=call.query(), content=call.body(),
                                          headers=call.request_headers())
        except httpx.HTTPError as exc:
            raise calls.transport_error(exc, self.base_url) from None
        return calls.decode(call, response)

    # -- the daemon ----------------------------------------------------------------------------
    async def health(self) -> Health:
        return await self.call(calls.health())

    async def ready(self) -> Health:
        return await self.call(calls.ready())

    async def metrics(self) -> str:
        return await self.call(calls.metrics())

    async def leases(self) -> dict[str, Any]:
        return await self.call(calls.leases())

    async def openapi(self) -> dict[str, Any]:
        return await self.call(calls.openapi())

    # -- workflows -----------------------------------------------------------------------------
    async def list_workflows(self, status: str | None = None, q: str | None = None) -> list[Workflow]:
        return await self.call(calls.list_workflows(status, q))

    async def get_workflow(self, workflow_id: str, version: int | None = None) -> Workflow:
        return await self.call(calls.get_workflow(workflow_id, version))

    async def create_workflow(self, definition: dict[str, Any]) -> Workflow:
        return await self.call(calls.create_workflow(definition))

    async def update_workflow(self, workflow_id: str, definition: dict[str, Any]) -> Workflow:
        """A new version (PUT)."""
        return await self.call(calls.update_workflow(workflow_id, definition))

    async def disable_workflow(self, workflow_id: str) -> Workflow:
        return await self.call(calls.disable_workflow(workflow_id))

    async def workflow_versions(self, workflow_id: str) -> list[Workflow]:
        return await self.call(calls.workflow_versions(workflow_id))

    async def enable_workflow(self, workflow_id: str) -> Workflow:
        return await self.call(calls.enable_workflow(workflow_id))

    async def workflow_sync(self, workflow_id: str) -> SyncStatus:
        """The workflow's file against the stored version: in_sync, file_changed, file_removed, not_file_synced."""
        return await self.call(calls.workflow_sync(workflow_id))

    async def sync_workflow(self, workflow_id: str) -> dict[str, Any]:
        """Register this workflow's file now: `{"result", "workflow", "sync"}`."""
        return await self.call(calls.sync_workflow(workflow_id))

    async def rollback_workflow(self, workflow_id: str, version: int) -> Workflow:
        """A new version made from stored `version` (history is never rewritten)."""
        return await self.call(calls.rollback_workflow(workflow_id, version))

    async def workflow_schema(self) -> dict[str, Any]:
        return await self.call(calls.workflow_schema())

    async def validate_workflow(self, text: str, fmt: str = "yaml") -> Validation:
        """Check a definition (YAML or JSON text) without storing it."""
        return await self.call(calls.validate_workflow(text, fmt))

    # -- runs ----------------------------------------------------------------------------------
    async def start_run(self, workflow_id: str, input: Any = None, version: int | None = None,
                  idempotency_key: str | None = None) -> Run:
        return await self.call(calls.start_run(workflow_id, input, version, idempotency_key))

    async def start_runs(self, items: list[BatchItem]) -> list[BatchResult]:
        """Start 1-1000 runs in one transaction; one result per item, in order."""
        return await self.call(calls.start_runs(list(items)))

    async def list_runs(self, workflow_id: str | None = None, status: str | list[str] | None = None,
                  limit: int | None = None, cursor: str | None = None, parent_run_id: str | None = None) -> RunPage:
        """One page, newest first; pass `nextCursor` back as `cursor` for the next."""
        return await self.call(calls.list_runs(workflow_id, status, limit, cursor, parent_run_id))

    async def iter_runs(self, workflow_id: str | None = None, status: str | list[str] | None = None,
                  page_size: int = 100, max_pages: int = 10_000, parent_run_id: str | None = None) -> AsyncIterator[Run]:
        """Every run matching, page after page (bounded by `max_pages`)."""
        cursor = None
        for _ in range(max_pages):
            page = await self.list_runs(workflow_id, status, page_size, cursor, parent_run_id)
            for run in page["runs"]:
                yield run
            cursor = page["nextCursor"]
            if cursor is None:
                return

    async def get_run(self, run_id: str) -> Run:
        return await self.call(calls.get_run(run_id))

    async def run_steps(self, run_id: str) -> list[Step]:
        return await self.call(calls.run_steps(run_id))

    async def run_events(self, run_id: str, after_seq: int = 0, limit: int | None = None) -> EventPage:
        return await self.call(calls.run_events(run_id, after_seq, limit))

    async def iter_run_events(self, run_id: str, after_seq: int = 0, page_size: int = 1000,
                        max_pages: int = 10_000) -> AsyncIterator[Event]:
        """The run's event log from `after_seq`, every page."""
        for _ in range(max_pages):
            page = await self.run_events(run_id, after_seq, page_size)
            for event in page["events"]:
                yield event
            if page["nextAfterSeq"] is None:
                return
            after_seq = page["nextAfterSeq"]

    async def pause_run(self, run_id: str) -> Run:
        return await self.call(calls.pause_run(run_id))

    async def resume_run(self, run_id: str) -> Run:
        return await self.call(calls.resume_run(run_id))

    async def cancel_run(self, run_id: str, reason: str | None = None) -> Run:
        return await self.call(calls.cancel_run(run_id, reason))

    async def signal(self, run_id: str, name: str, payload: Any = None, idempotency_key: str | None = None) -> Signal:
        return await self.call(calls.signal(run_id, name, payload, idempotency_key))

    async def rerun(self, run_id: str, version: int | str | None = None, input: Any = None) -> Run:
        """A new run from this one (same version and input unless given; `version="latest"`)."""
        return await self.call(calls.rerun(run_id, version, input))

    async def redrive(self, run_id: str) -> Run:
        """The same run again, re-executing only its failed, timed-out or cancelled steps."""
        return await self.call(calls.redrive(run_id))

    async def children(self, run_id: str) -> list[Run]:
        return await self.call(calls.children(run_id))

    # -- approvals -----------------------------------------------------------------------------
    async def list_approvals(self, status: str | None = "pending", workflow_id: str | None = None) -> list[Approval]:
        """The inbox: `status` pending (default), approved, rejected, timed_out, or None for all."""
        return await self.call(calls.list_approvals(status, workflow_id))

    async def run_approvals(self, run_id: str) -> list[Approval]:
        return await self.call(calls.run_approvals(run_id))

    async def get_approval(self, approval_id: str) -> Approval:
        return await self.call(calls.get_approval(approval_id))

    async def approve(self, approval_id: str, comment: str | None = None, *, run_id: str | None = None,
                idempotency_key: str | None = None) -> Approval:
        return await self.call(calls.decide(approval_id, True, comment, run_id, idempotency_key))

    async def reject(self, approval_id: str, reason: str | None = None, *, run_id: str | None = None,
               idempotency_key: str | None = None) -> Approval:
        return await self.call(calls.decide(approval_id, False, reason, run_id, idempotency_key))

    async def approval_deliveries(self, approval_id: str) -> list[Delivery]:
        return await self.call(calls.approval_deliveries(approval_id))

    # -- schedules and agents ------------------------------------------------------------------
    async def list_schedules(self, workflow_id: str | None = None) -> list[Schedule]:
        return await self.call(calls.list_schedules(workflow_id))

    async def enable_schedule(self, schedule_id: str) -> Schedule:
        return await self.call(calls.set_schedule(schedule_id, True))

    async def disable_schedule(self, schedule_id: str) -> Schedule:
        return await self.call(calls.set_schedule(schedule_id, False))

    async def list_agents(self, environment: str | None = None) -> AgentList:
        return await self.call(calls.list_agents(environment))

    async def get_agent(self, name: str, environment: str | None = None) -> Agent:
        return await self.call(calls.get_agent(name, environment))

    # -- streams -------------------------------------------------------------------------------
    async def stream_run(self, run_id: str, last_event_id: int = 0, timeout: float | None = None) -> AsyncIterator[StreamEvent]:
        """The run's events from after `last_event_id` (its seq) to its terminal event, reconnecting as
        needed. `timeout` (seconds) ends the iteration early."""
        follow = Follow(run_stream=True, last_id=last_event_id, max_reconnects=self.options.max_reconnects)
        path = calls.get_run(run_id).path + "/stream"
        async for event in self._follow(path, {}, follow, timeout):
            yield event

    async def stream_events(self, workflow_id: str | None = None, status: str | list[str] | None = None,
                            last_event_id: int = 0, timeout: float | None = None) -> AsyncIterator[StreamEvent]:
        """Every run's events (optionally of one workflow, or of runs in `status`), live from now, or from
        after `last_event_id` (a global event id). Runs until `timeout` or until the caller stops."""
        if isinstance(status, list | tuple | set | frozenset):
            status = ",".join(status)
        follow = Follow(run_stream=False, last_id=last_event_id, max_reconnects=self.options.max_reconnects)
        params = {k: v for k, v in {"workflowId": workflow_id, "status": status}.items() if v}
        async for event in self._follow(f"{calls.API}/workflow-runs/stream", params, follow, timeout):
            yield event

    async def wait_run(self, run_id: str, timeout: float | None = None) -> Run:
        """Follow the run's stream to its end and return the run; `ApiError` `wait_timeout` (status 0) when
        it is still going at `timeout`."""
        async for _ in self.stream_run(run_id, timeout=timeout):
            pass
        run = await self.get_run(run_id)
        if timeout is not None and not is_terminal(run):
            raise ApiError(0, "wait_timeout", f"run {run_id} is still {run.get('status')} after {timeout:g} s",
                           {"run": run_id, "status": run.get("status")})
        return run

    async def _follow(self, path: str, params: dict[str, Any], follow: Follow,
                      timeout: float | None) -> AsyncIterator[StreamEvent]:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        for _ in range(1 << 30):
            if follow.done:
                return
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return
            try:
                async with self._http.stream("GET", path, params=params, headers=follow.headers(),
                                             timeout=self.options.stream_timeout(remaining)) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise calls.error_from(response)
                    parser = LineParser()
                    lines = response.aiter_lines().__aiter__()
                    for _ in range(1 << 62):
                        try:
                            if deadline is None:
                                line = await lines.__anext__()
                            else:  # per read, never across a yield: the caller's code is not ours to cancel
                                line = await asyncio.wait_for(lines.__anext__(), max(0.0, deadline - loop.time()))
                        except StopAsyncIteration:
                            break
                        except TimeoutError:
                            return
                        event = parser.feed(line)
                        if event is not None and follow.seen(event):
                            yield event
                            if follow.done:
                                return
                follow.closed()
            except httpx.HTTPError as exc:
                if deadline is not None and loop.time() >= deadline:
                    return
                await asyncio.sleep(_pause(follow.failed(calls.transport_error(exc, self.base_url)), deadline, loop))
            except ApiError as exc:
                await asyncio.sleep(_pause(follow.failed(exc), deadline, loop))


def _pause(delay: float, deadline: float | None, loop: asyncio.AbstractEventLoop) -> float:
    """The pause before a reconnect, never past the caller's deadline."""
    return delay if deadline is None else max(0.0, min(delay, deadline - loop.time()))
