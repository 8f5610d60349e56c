"""Pipelined JetStream publishes with a PubAck each, at the cost of one buffer append per message.

Why not `nc.publish` per message: nats-py rebuilds the header section from a dict (a regex per key)
and validates the subject for every call, and a subscription per batch for the replies costs a SUB,
an UNSUB and a task each time. Here the header section comes precomputed (`protocol.header_block`),
the HPUB line is written into nats-py's pending buffer (one flush per window), and one long-lived
wildcard subscription routes every PubAck by its reply token to the window waiting for it.

Invariant 2 is untouched: a message counts as stored only when its own PubAck came back.
The raw write uses nats-py 2.x's `_send_command`/`_flush_pending` (pinned `<3` in pyproject); when
those are missing, or the connection is not up, it falls back to the public `publish`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import BadSubjectError, ConnectionClosedError, MaxPayloadError

Wire = tuple[str, bytes, bytes]
"""One message as the relays hand it over: subject, header section (`protocol.header_block`), payload."""

_UNSAFE_SUBJECT = re.compile(r"[\s]")  # whitespace or CR/LF would inject protocol; nats-py refuses them too


def headers_of(block: bytes) -> dict[str, str]:
    """The header dict a header section encodes (the fallback path hands nats-py a dict)."""
    out: dict[str, str] = {}
    for line in block.decode().split("\r\n")[1:]:
        key, sep, value = line.partition(": ")
        if sep:
            out[key] = value
    return out


class AckRouter:
    """One subscription on `<inbox>.*` for the PubAcks of every pipelined publish of a connection."""

    def __init__(self) -> None:
        self._tokens = itertools.count(1)
        self._handlers: dict[int, Callable[[Msg], None]] = {}
        self._sub: Subscription | None = None
        self._nc: Client | None = None
        self.prefix = ""

    async def ensure(self, nc: Client) -> str:
        """The reply prefix (`<inbox>.`), subscribing on first use or on a new connection object."""
        if self._sub is None or self._nc is not nc:
            self._nc = nc
            inbox = nc.new_inbox()
            self._sub = await nc.subscribe(inbox + ".*", cb=self._on_msg)
            self.prefix = inbox + "."
        return self.prefix

    def token(self) -> int:
        return next(self._tokens)

    def expect(self, token: int, handler: Callable[[Msg], None]) -> None:
        self._handlers[token] = handler

    def forget(self, token: int) -> None:
        self._handlers.pop(token, None)

    async def _on_msg(self, msg: Msg) -> None:
        try:
            token = int(msg.subject.rsplit(".", 1)[1])
        except ValueError:
            return
        handler = self._handlers.pop(token, None)
        if handler is not None:
            handler(msg)

    @property
    def pending(self) -> int:
        return len(self._handlers)

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        self._handlers.clear()
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


def _raw_ok(nc: Client) -> bool:
    return nc.is_connected and not nc.is_draining_pubs and hasattr(nc, "_send_command") and hasattr(nc, "_flush_pending")


async def send(nc: Client, subject: str, reply: str, header: bytes, payload: bytes, raw: bool | None = None) -> None:
    """Queue one HPUB on the connection (flushed by `flush`); raises what `nc.publish` would. `raw`:
    the caller's `_raw_ok(nc)` of this window (None: ask)."""
    if nc.is_closed:
        raise ConnectionClosedError
    if not subject or _UNSAFE_SUBJECT.search(subject):
        raise BadSubjectError
    size = len(header) + len(payload)
    if size > nc.max_payload:
        raise MaxPayloadError
    if not (_raw_ok(nc) if raw is None else raw and nc.is_connected):
        await nc.publish(subject, payload, reply=reply, headers=headers_of(header))
        return
    cmd = b"".join((f"HPUB {subject} {reply} {len(header)} {size}\r\n".encode(), header, payload, b"\r\n"))
    nc.stats["out_msgs"] += 1
    nc.stats["out_bytes"] += len(payload)
    await nc._send_command(cmd)  # noqa: SLF001 - see the module docstring


async def flush(nc: Client) -> None:
    """Hand what `send` queued to nats-py's flusher (it writes it in one go)."""
    if _raw_ok(nc):
        await nc._flush_pending()  # noqa: SLF001


async def publish_window(nc: Client, router: AckRouter, items: list[Wire], start: int, end: int,
                         outcomes: list[BaseException | None], timeout: float,
                         ack_error: Callable[[Msg], BaseException | None]) -> None:
    """Publish items[start:end] pipelined and wait (at most `timeout`) for each one's PubAck; fill
    `outcomes[i]` with None (stored) or the error that message got."""
    try:
        prefix = await router.ensure(nc)
    except Exception as exc:  # noqa: BLE001 - no reply subscription (connection closed): none of these is stored
        for i in range(start, end):
            outcomes[i] = exc
        return
    waiting: dict[int, int] = {}
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    all_sent = False

    def on_ack(i: int, token: int) -> Callable[[Msg], None]:
        def handle(msg: Msg) -> None:
            if waiting.pop(token, None) is None:
                return
            try:
                outcomes[i] = ack_error(msg)
            except Exception as exc:  # noqa: BLE001 - never count a reply we could not read as an ack
                outcomes[i] = exc
            if all_sent and not waiting and not done.done():
                done.set_result(None)
        return handle

    raw = _raw_ok(nc)
    try:
        for i in range(start, end):
            subject, header, payload = items[i]
            token = router.token()
            router.expect(token, on_ack(i, token))
            waiting[token] = i
            try:
                await send(nc, subject, f"{prefix}{token}", header, payload, raw)
            except Exception as exc:  # noqa: BLE001 - this message failed; the others may not have
                waiting.pop(token, None)
                router.forget(token)
                outcomes[i] = exc
        await flush(nc)
        all_sent = True
        if waiting:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done, timeout)
    finally:
        for token, i in list(waiting.items()):
            router.forget(token)
            outcomes[i] = TimeoutError("no PubAck within the timeout")
        waiting.clear()
