"""`Client`: the whole API, blocking, over one `httpx.Client` (connection reuse; thread-safe).

    from station_wf.client import Client
    with Client("http://127.0.0.1:8587") as api:
        run = api.start_run("hello", {"name": "Ada"})
        for event in api.stream_run(run["id"]):
            print(event.type, event.step_id)

Every method sends one `calls` builder's request (see `calls.py`); every error is an `ApiError`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
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


class Client:
    """Blocking client; `AsyncClient` has the same methods, awaited."""

    def __init__(self, base_url: str | None = None, *, token: str | None = None, principal: str | None = None,
                 timeout: float | None = None, options: Options | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        opts = options or Options.from_env()
        overrides: dict[str, Any] = {"base_url": base_url, "token": token, "principal": principal, "timeout": timeout}
        opts = dataclasses.replace(opts, **{k: v for k, v in overrides.items() if v is not None})
        self.options = opts
        self.base_url = opts.base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=opts.default_headers(),
                                  timeout=opts.httpx_timeout(), transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, call: calls.Call[T]) -> T:
        """Send one prepared call (the layer every method uses; public for operations added later)."""
        try:
            response = self._http.request(call.method, call.path, params=call.query(), content=call.body(),
                                          headers=call.request_headers())
        except httpx.HTTPError as exc:
            raise calls.transport_error(exc, self.base_url) from None
        return calls.decode(call, response)

    # -- the daemon ----------------------------------------------------------------------------
    def health(self) -> Health:
        return self.call(calls.health())

    def ready(self) -> Health:
        return self.call(calls.ready())

    def metrics(self) -> str:
        return self.call(calls.metrics())

    def leases(self) -> dict[str, Any]:
        return self.call(calls.leases())

    def openapi(self) -> dict[str, Any]:
        return self.call(calls.openapi())

    # -- workflows -----------------------------------------------------------------------------
    def list_workflows(self, status: str | None = None, q: str | None = None) -> list[Workflow]:
        return self.call(calls.list_workflows(status, q))

    def get_workflow(self, workflow_id: str, version: int | None = None) -> Workflow:
        return self.call(calls.get_workflow(workflow_id, version))

    def create_workflow(self, definition: dict[str, Any]) -> Workflow:
        return self.call(calls.create_workflow(definition))

    def update_workflow(self, workflow_id: str, definition: dict[str, Any]) -> Workflow:
        """A new version (PUT)."""
        return self.call(calls.update_workflow(workflow_id, definition))

    def disable_workflow(self, workflow_id: str) -> Workflow:
        return self.call(calls.disable_workflow(workflow_id))

    def workflow_versions(self, workflow_id: str) -> list[Workflow]:
        return self.call(calls.workflow_versions(workflow_id))

    def enable_workflow(self, workflow_id: str) -> Workflow:
        return self.call(calls.enable_workflow(workflow_id))

    def workflow_sync(self, workflow_id: str) -> SyncStatus:
        """The workflow's file against the stored version: in_sync, file_changed, file_removed, not_file_synced."""
        return self.call(calls.workflow_sync(workflow_id))

    def sync_workflow(self, workflow_id: str) -> dict[str, Any]:
        """Register this workflow's file now: `{"result", "workflow", "sync"}`."""
        return self.call(calls.sync_workflow(workflow_id))

    def rollback_workflow(self, workflow_id: str, version: int) -> Workflow:
        """A new version made from stored `version` (history is never rewritten)."""
        return self.call(calls.rollback_workflow(workflow_id, version))

    def workflow_schema(self) -> dict[str, Any]:
        return self.call(calls.workflow_schema())

    def validate_workflow(self, text: str, fmt: str = "yaml") -> Validation:
        """Check a definition (YAML or JSON text) without storing it."""
        return self.call(calls.validate_workflow(text, fmt))

    # -- runs ----------------------------------------------------------------------------------
    def start_run(self, workflow_id: str, input: Any = None, version: int | None = None,
                  idempotency_key: str | None = None) -> Run:
        return self.call(calls.start_run(workflow_id, input, version, idempotency_key))

    def start_runs(self, items: list[BatchItem]) -> list[BatchResult]:
        """Start 1-1000 runs in one transaction; one result per item, in order."""
        return self.call(calls.start_runs(list(items)))

    def list_runs(self, workflow_id: str | None = None, status: str | list[str] | None = None,
                  limit: int | None = None, cursor: str | None = None, parent_run_id: str | None = None) -> RunPage:
        """One page, newest first; pass `nextCursor` back as `cursor` for the next."""
        return self.call(calls.list_runs(workflow_id, status, limit, cursor, parent_run_id))

    def iter_runs(self, workflow_id: str | None = None, status: str | list[str] | None = None,
                  page_size: int = 100, max_pages: int = 10_000, parent_run_id: str | None = None) -> Iterator[Run]:
        """Every run matching, page after page (bounded by `max_pages`)."""
        cursor = None
        for _ in range(max_pages):
            page = self.list_runs(workflow_id, status, page_size, cursor, parent_run_id)
            yield from page["runs"]
            cursor = page["nextCursor"]
            if cursor is None:
                return

    def get_run(self, run_id: str) -> Run:
        return self.call(calls.get_run(run_id))

    def run_steps(self, run_id: str) -> list[Step]:
        return self.call(calls.run_steps(run_id))

    def run_events(self, run_id: str, after_seq: int = 0, limit: int | None = None) -> EventPage:
        return self.call(calls.run_events(run_id, after_seq, limit))

    def iter_run_events(self, run_id: str, after_seq: int = 0, page_size: int = 1000,
                        max_pages: int = 10_000) -> Iterator[Event]:
        """The run's event log from `after_seq`, every page."""
        for _ in range(max_pages):
            page = self.run_events(run_id, after_seq, page_size)
            yield from page["events"]
            if page["nextAfterSeq"] is None:
                return
            after_seq = page["nextAfterSeq"]

    def pause_run(self, run_id: str) -> Run:
        return self.call(calls.pause_run(run_id))

    def resume_run(self, run_id: str) -> Run:
        return self.call(calls.resume_run(run_id))

    def cancel_run(self, run_id: str, reason: str | None = None) -> Run:
        return self.call(calls.cancel_run(run_id, reason))

    def signal(self, run_id: str, name: str, payload: Any = None, idempotency_key: str | None = None) -> Signal:
        return self.call(calls.signal(run_id, name, payload, idempotency_key))

    def rerun(self, run_id: str, version: int | str | None = None, input: Any = None) -> Run:
        """A new run from this one (same version and input unless given; `version="latest"`)."""
        return self.call(calls.rerun(run_id, version, input))

    def redrive(self, run_id: str) -> Run:
        """The same run again, re-executing only its failed, timed-out or cancelled steps."""
        return self.call(calls.redrive(run_id))

    def children(self, run_id: str) -> list[Run]:
        return self.call(calls.children(run_id))

    # -- approvals -----------------------------------------------------------------------------
    def list_approvals(self, status: str | None = "pending", workflow_id: str | None = None) -> list[Approval]:
        """The inbox: `status` pending (default), approved, rejected, timed_out, or None for all."""
        return self.call(calls.list_approvals(status, workflow_id))

    def run_approvals(self, run_id: str) -> list[Approval]:
        return self.call(calls.run_approvals(run_id))

    def get_approval(self, approval_id: str) -> Approval:
        return self.call(calls.get_approval(approval_id))

    def approve(self, approval_id: str, comment: str | None = None, *, run_id: str | None = None,
                idempotency_key: str | None = None) -> Approval:
        return self.call(calls.decide(approval_id, True, comment, run_id, idempotency_key))

    def reject(self, approval_id: str, reason: str | None = None, *, run_id: str | None = None,
               idempotency_key: str | None = None) -> Approval:
        return self.call(calls.decide(approval_id, False, reason, run_id, idempotency_key))

    def approval_deliveries(self, approval_id: str) -> list[Delivery]:
        return self.call(calls.approval_deliveries(approval_id))

    # -- schedules and agents ------------------------------------------------------------------
    def list_schedules(self, workflow_id: str | None = None) -> list[Schedule]:
        return self.call(calls.list_schedules(workflow_id))

    def enable_schedule(self, schedule_id: str) -> Schedule:
        return self.call(calls.set_schedule(schedule_id, True))

    def disable_schedule(self, schedule_id: str) -> Schedule:
        return self.call(calls.set_schedule(schedule_id, False))

    def list_agents(self, environment: str | None = None) -> AgentList:
        return self.call(calls.list_agents(environment))

    def get_agent(self, name: str, environment: str | None = None) -> Agent:
        return self.call(calls.get_agent(name, environment))

    # -- streams -------------------------------------------------------------------------------
    def stream_run(self, run_id: str, last_event_id: int = 0, timeout: float | None = None) -> Iterator[StreamEvent]:
        """The run's events from after `last_event_id` (its seq) to its terminal event, reconnecting as
        needed. `timeout` (seconds) ends the iteration early (kept to within the daemon's ping interval)."""
        follow = Follow(run_stream=True, last_id=last_event_id, max_reconnects=self.options.max_reconnects)
        path = calls.get_run(run_id).path + "/stream"
        yield from self._follow(path, {}, follow, timeout)

    def stream_events(self, workflow_id: str | None = None, status: str | list[str] | None = None,
                      last_event_id: int = 0, timeout: float | None = None) -> Iterator[StreamEvent]:
        """Every run's events (optionally of one workflow, or of runs in `status`), live from now, or from
        after `last_event_id` (a global event id). Runs until `timeout` or until the caller stops."""
        if isinstance(status, list | tuple | set | frozenset):
            status = ",".join(status)
        follow = Follow(run_stream=False, last_id=last_event_id, max_reconnects=self.options.max_reconnects)
        params = {k: v for k, v in {"workflowId": workflow_id, "status": status}.items() if v}
        yield from self._follow(f"{calls.API}/workflow-runs/stream", params, follow, timeout)

    def wait_run(self, run_id: str, timeout: float | None = None) -> Run:
        """Follow the run's stream to its end and return the run; `ApiError` `wait_timeout` (status 0) when
        it is still going at `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for _ in self.stream_run(run_id, timeout=timeout):
            pass
        run = self.get_run(run_id)
        if deadline is not None and not is_terminal(run):
            raise ApiError(0, "wait_timeout", f"run {run_id} is still {run.get('status')} after {timeout:g} s",
                           {"run": run_id, "status": run.get("status")})
        return run

    def _follow(self, path: str, params: dict[str, Any], follow: Follow, timeout: float | None) -> Iterator[StreamEvent]:
        deadline = None if timeout is None else time.monotonic() + timeout
        for _ in range(1 << 30):
            if follow.done:
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            try:
                with self._http.stream("GET", path, params=params, headers=follow.headers(),
                                       timeout=self.options.stream_timeout(remaining)) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise calls.error_from(response)
                    parser = LineParser()
                    for line in response.iter_lines():
                        event = parser.feed(line)
                        if event is not None and follow.seen(event):
                            yield event
                            if follow.done:
                                return
                        if deadline is not None and time.monotonic() >= deadline:
                            return
                follow.closed()
            except httpx.HTTPError as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    return
                time.sleep(_pause(follow.failed(calls.transport_error(exc, self.base_url)), deadline))
            except ApiError as exc:
                time.sleep(_pause(follow.failed(exc), deadline))


def _pause(delay: float, deadline: float | None) -> float:
    """The pause before a reconnect, never past the caller's deadline."""
    return delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic()))
