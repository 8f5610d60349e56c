"""A lean SSE response: the headers, then whatever bytes the stream's producer writes, as they are.

sse-starlette encoded each event per subscriber and ran three tasks per connection (stream, ping,
disconnect) plus our 1 s queue poll; with frames built once by the hub (`services/sse_frames.py`) a
write here is one ASGI `send` of shared bytes. Per connection there is the request's own task (the
producer, which sleeps on its subscriber until the hub wakes it) and one task that waits for the
client to leave; pings come from the hub's single ticker. A client that leaves is noticed at once
(the subscriber is closed, the producer returns) and a producer's write after that raises `ClientGone`.
A write to a client that reads slowly waits in uvicorn's flow control: backpressure on the producer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from station_wf.services.events import Subscriber

HEADERS = {"Cache-Control": "no-store", "Connection": "keep-alive", "X-Accel-Buffering": "no"}


class ClientGone(Exception):
    """The client disconnected: nothing more can be written."""


class SseOut:
    """The producer's side of one connection: `write` bytes; `sub` is closed when the client leaves."""

    __slots__ = ("_send", "gone", "sub")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.gone = False
        self.sub: Subscriber | None = None

    async def write(self, data: bytes) -> None:
        if self.gone:
            raise ClientGone
        await self._send({"type": "http.response.body", "body": data, "more_body": True})
        if self.gone:  # it left while the write waited for the socket to drain
            raise ClientGone

    def attach(self, sub: Subscriber) -> None:
        """Close `sub` when the client leaves (at once if it already has)."""
        self.sub = sub
        if self.gone:
            sub.close()


Producer = Callable[[SseOut], Awaitable[None]]


class SseResponse(Response):
    """`text/event-stream` whose body is written by `produce(out)`; the stream ends when it returns."""

    media_type = "text/event-stream"

    def __init__(self, produce: Producer) -> None:  # no Response.__init__: it would set Content-Length: 0
        self.status_code = 200
        self.background = None
        self.produce = produce
        self.init_headers(HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if scope.get("method", "GET").upper() == "HEAD":  # headers only: a HEAD must never open a stream
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        out = SseOut(send)
        watcher = asyncio.create_task(_watch_disconnect(receive, out))
        try:
            await self.produce(out)
        except ClientGone:
            return
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if not out.gone:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _watch_disconnect(receive: Receive, out: SseOut) -> None:
    """Wait (not poll) for `http.disconnect`; then wake the producer so it ends and unsubscribes."""
    for _ in range(1 << 20):  # a GET's body messages end after one; the bound only guards odd servers
        message = await receive()
        if message["type"] == "http.disconnect":
            break
    out.gone = True
    if out.sub is not None:
        out.sub.close()
