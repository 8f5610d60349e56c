"""Server-sent events: one run's stream and the global stream, each resumable by `Last-Event-ID`.

A stream subscribes to the hub (`services/events.py`) before it replays its backlog, so nothing
committed in between is missed; copies are dropped by id. Events have the one shape of
`store/events.py`; a client receives `stream_view` of each.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response

from station_wf.api.params import last_event_id
from station_wf.api.state import ApiState
from station_wf.api.station_routes import station_stream
from station_wf.services.events import TERMINAL_EVENTS, Subscriber, stream_view
from station_wf.services.runs import TERMINAL_RUN_STATUSES
from station_wf.services.storable import dumps_safe


def _sse(event: dict[str, Any], ident: int) -> dict[str, Any]:
    return {"event": event["type"], "id": str(ident), "data": dumps_safe(stream_view(event))}


async def _follow(sub: Subscriber) -> AsyncIterator[dict[str, Any]]:
    """Queue events until the hub drops us (we fell behind): the client then resumes by Last-Event-ID."""
    while True:
        try:
            event = await asyncio.wait_for(sub.queue.get(), 1.0)
        except TimeoutError:
            if sub.overflowed:
                return
            continue
        if event is None:
            return
        yield event


async def run_stream(request: Request, state: ApiState) -> Response:
    if request.query_params.get("format") == "station":
        return await station_stream(request, state)
    run_id = request.path_params["run_id"]
    last = last_event_id(request)
    run = await state.runs.summary(run_id)  # 404 before the stream starts; no step rows needed
    sub = await state.hub.subscribe(Subscriber(run_id=run_id))  # before the backfill: nothing falls between

    async def events() -> AsyncIterator[dict[str, Any]]:
        nonlocal last
        try:
            sent = 0
            async for event in state.hub.run_backlog(run_id, last):
                yield _sse(event, event["seq"])
                last, sent = event["seq"], sent + 1
                if event["type"] in TERMINAL_EVENTS:
                    return
            if not sent and run["status"] in TERMINAL_RUN_STATUSES and last >= run["lastEventSeq"]:
                return
            async for event in _follow(sub):
                if event["seq"] <= last:
                    continue
                yield _sse(event, event["seq"])
                last = event["seq"]
                if event["type"] in TERMINAL_EVENTS:
                    return
        finally:
            state.hub.unsubscribe(sub)

    return EventSourceResponse(events(), ping=state.sse_ping)


async def global_stream(request: Request, state: ApiState) -> Response:
    q = request.query_params
    statuses = frozenset(s.strip().upper() for s in q.get("status", "").split(",") if s.strip()) or None
    last = last_event_id(request)
    sub = await state.hub.subscribe(Subscriber(workflow_id=q.get("workflowId") or None, statuses=statuses))
    live_from = state.hub.cursor  # everything after it reaches the queue; the backlog pages up to it

    async def events() -> AsyncIterator[dict[str, Any]]:
        nonlocal last
        try:
            if last:
                async for event in state.hub.global_backlog(last, sub, live_from):
                    yield _sse(event, event["id"])
                    last = event["id"]
                last = max(last, live_from)
            async for event in _follow(sub):
                if event["id"] <= last:
                    continue
                yield _sse(event, event["id"])
                last = event["id"]
        finally:
            state.hub.unsubscribe(sub)

    return EventSourceResponse(events(), ping=state.sse_ping)
