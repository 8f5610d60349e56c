"""Server-sent events: one run's stream and the global stream, each resumable by `Last-Event-ID`.

A stream first replays its backlog a page at a time with no subscription (a long history buffers
nothing live, and each page is written before the next is read), then subscribes to the hub
(`services/events.py`), reads the backlog once more up to where the hub's live fan-out begins, and
follows live: nothing committed in between is missed, copies are dropped by id. Live frames are the
hub's shared bytes (`LiveEvent`); a client receives `stream_view` of each event. A subscriber the hub
cut off (it fell behind) ends its stream; the client resumes by `Last-Event-ID` with no gap.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.requests import Request
from starlette.responses import Response

from station_wf.api.params import last_event_id
from station_wf.api.sse import SseOut, SseResponse
from station_wf.api.state import ApiState
from station_wf.api.station_routes import station_stream
from station_wf.services.events import LiveEvent, Subscriber
from station_wf.services.runs import TERMINAL_RUN_STATUSES


async def _write(out: SseOut, items: Iterable[LiveEvent | bytes], last: int, by_seq: bool) -> tuple[int, bool]:
    """Write the items after `last` (by seq for a run's stream, by id for the global one) in one send;
    returns the new `last` and whether a run's terminal event was written (its stream ends there)."""
    chunks: list[bytes] = []
    ended = False
    for item in items:
        if isinstance(item, bytes):  # a ping
            chunks.append(item)
            continue
        ident = item.seq if by_seq else item.id
        if ident <= last:
            continue
        chunks.append(item.run_frame if by_seq else item.global_frame)
        last = ident
        if by_seq and item.terminal:
            ended = True
            break
    if chunks:
        await out.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
    return last, ended


async def _follow(out: SseOut, sub: Subscriber, last: int, by_seq: bool) -> None:
    """Live: sleep until the hub appends, write, again; ends when cut off, closed or the run ended."""
    for _ in range(1 << 62):
        items = await sub.take()
        if not items:
            return
        last, ended = await _write(out, items, last, by_seq)
        if ended:
            return


async def run_stream(request: Request, state: ApiState) -> Response:
    if request.query_params.get("format") == "station":
        return await station_stream(request, state)
    run_id = request.path_params["run_id"]
    start = last_event_id(request)
    run = await state.runs.summary(run_id)  # 404 before the stream starts; no step rows needed
    hub = state.hub

    async def produce(out: SseOut) -> None:
        last, sent = start, 0
        async for page in hub.run_backlog(run_id, last):
            last, ended = await _write(out, page, last, by_seq=True)
            sent += len(page)
            if ended:
                return
        sub = Subscriber(run_id=run_id, ping=state.sse_ping)
        out.attach(sub)
        await hub.subscribe(sub)
        try:
            async for page in hub.run_backlog(run_id, last):  # what committed before the subscription took
                last, ended = await _write(out, page, last, by_seq=True)
                sent += len(page)
                if ended:
                    return
            if not sent and run["status"] in TERMINAL_RUN_STATUSES and last >= run["lastEventSeq"]:
                return
            await _follow(out, sub, last, by_seq=True)
        finally:
            hub.unsubscribe(sub)

    return SseResponse(produce)


async def global_stream(request: Request, state: ApiState) -> Response:
    q = request.query_params
    statuses = frozenset(s.strip().upper() for s in q.get("status", "").split(",") if s.strip()) or None
    start = last_event_id(request)
    workflow_id = q.get("workflowId") or None
    hub = state.hub

    async def produce(out: SseOut) -> None:
        last = start
        sub = Subscriber(workflow_id=workflow_id, statuses=statuses, ping=state.sse_ping)
        if last:
            async for page, read_to in hub.global_backlog(last, sub):
                last, _ = await _write(out, page, last, by_seq=False)
                last = max(last, read_to)
        out.attach(sub)
        await hub.subscribe(sub)
        live_from = hub.cursor  # every later event reaches the subscriber; the backlog pages up to it
        try:
            if last:
                async for page, read_to in hub.global_backlog(last, sub, live_from):
                    last, _ = await _write(out, page, last, by_seq=False)
                    last = max(last, read_to)
                last = max(last, live_from)
            await _follow(out, sub, last, by_seq=False)
        finally:
            hub.unsubscribe(sub)

    return SseResponse(produce)
