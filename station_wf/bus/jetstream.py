"""JetStream topology and the few operations the engine needs: publish, pull, and "is this task live?".

The wire form (subjects, message ids, headers) is `station_wf.protocol`'s; this module is the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError

from station_wf.bus import wire
from station_wf.bus.wire import Wire
from station_wf.protocol import (
    EVENT_SUBJECT_FILTER,
    MSG_ID_HEADER,
    TASK_SUBJECT_FILTER,
    Namespace,
    encode_control,
    header_block,
)
from station_wf.store.jsontext import dumps_bytes, loads

log = logging.getLogger(__name__)

PUBLISH_WINDOW = 1000     # JetStream publishes in flight at once (each waits for its own PubAck)
ACK_TIMEOUT_S = 10.0      # a PubAck not back by then counts as failed (the row is published again)
HEADER_OVERHEAD = 64      # "NATS/1.0\r\n" and the framing around headers

PULL_EXPIRES_S = 2.0      # how long one pull request lingers on the server waiting for tasks
DUPLICATE_WINDOW_S = 120.0
EVENTS_MAX_AGE_S = 7 * 24 * 3600.0
EVENTS_MAX_BYTES = 1 << 30
TASKS_MAX_MSGS = 1_000_000
TASKS_MAX_BYTES = 1 << 30


def server_list(url: str) -> list[str]:
    """`STATION_NATS_URL` may name several servers of one cluster, comma-separated (nats-py takes a list)."""
    return [u.strip() for u in url.split(",") if u.strip()]


class Bus:
    """One NATS connection; the streams of DESIGN 5; the durable pull consumer the worker shares.

    `namespace` names the deployment's streams, subjects and consumer (several deployments on one
    NATS never see each other's tasks); `replicas` is the streams' `num_replicas` (3 on a 3-node
    cluster). Subjects cross this class in their canonical form (`protocol.Namespace`)."""

    def __init__(self, url: str, *, ack_wait: float = 30.0, max_ack_pending: int = 1024,
                 namespace: Namespace | None = None, replicas: int = 1) -> None:
        self.url = url
        self.ack_wait = ack_wait
        self.max_ack_pending = max_ack_pending
        self.ns = namespace or Namespace()
        self.replicas = replicas
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.on_reconnect: Callable[[], Awaitable[None]] | None = None
        self.consumer_ready = False  # the worker's consumer answered the last pull (readiness)
        self._acks = wire.AckRouter()

    async def connect(self) -> None:
        async def _error(exc: Exception) -> None:
            log.warning("nats: %s", exc)

        async def _reconnected() -> None:
            server = self.nc.connected_url if self.nc is not None else None
            log.info("nats: reconnected to %s", f"{server.hostname}:{server.port}" if server else "?")  # no token in logs
            if self.on_reconnect is not None:
                await self.on_reconnect()

        async def _disconnected() -> None:
            log.warning("nats: disconnected")

        self.nc = await nats.connect(
            server_list(self.url),
            name="station-wf",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            connect_timeout=5,
            error_cb=_error,
            reconnected_cb=_reconnected,
            disconnected_cb=_disconnected,
        )
        self.js = self.nc.jetstream(timeout=10)

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def _consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.ns.consumer,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            max_deliver=-1,
            max_ack_pending=self.max_ack_pending,
            filter_subject=self.ns.wire(TASK_SUBJECT_FILTER),
            # A work-queue stream's consumer must have the stream's replica count; 1 stays implicit
            # (what every release before replicas created, so an upgrade does not touch it).
            num_replicas=self.replicas if self.replicas > 1 else None,
        )

    async def ensure_topology(self, scale: bool = False) -> None:
        """Create the streams and the consumer when missing (also after someone deleted them); with
        `scale` (start-up only, so a replica configured otherwise does not rescale the shared streams on
        every reconciler pass) bring an existing stream to our replica count in place. Never deletes."""
        assert self.js is not None
        await self._ensure_stream(StreamConfig(
            name=self.ns.tasks_stream, subjects=[self.ns.wire(TASK_SUBJECT_FILTER)], retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW_S,
            # Bounded: when full, publishes fail and tasks wait in the SQLite outbox (back-pressure, no loss).
            max_msgs=TASKS_MAX_MSGS, max_bytes=TASKS_MAX_BYTES, discard=DiscardPolicy.NEW, num_replicas=self.replicas,
        ), scale)
        await self._ensure_stream(StreamConfig(
            name=self.ns.events_stream, subjects=[self.ns.wire(EVENT_SUBJECT_FILTER)], retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW_S, max_age=EVENTS_MAX_AGE_S,
            max_bytes=EVENTS_MAX_BYTES, discard=DiscardPolicy.OLD, num_replicas=self.replicas,
        ), scale)
        await self._ensure_consumer(update=False)

    async def _ensure_stream(self, config: StreamConfig, scale: bool) -> None:
        assert self.js is not None
        try:
            info = await self.js.stream_info(config.name)
        except NotFoundError:
            # A fresh start creates its streams: expected, so INFO (a warning must mean something is wrong).
            log.info("creating JetStream stream %s (%d replica(s))", config.name, self.replicas)
            await self.js.add_stream(config)
            return
        if scale and (info.config.num_replicas or 1) != self.replicas:
            # In place: the stream keeps its messages (a delete would lose every queued task).
            log.warning("JetStream stream %s: %s -> %d replica(s)", config.name, info.config.num_replicas, self.replicas)
            info.config.num_replicas = self.replicas
            await self.js.update_stream(info.config)

    async def _ensure_consumer(self, update: bool) -> None:
        """Create-or-bind: add the consumer when missing; with `update` (start-up only, so replicas with
        different settings do not undo each other every reconciler pass), bring what may change
        (ack_wait, max_ack_pending, num_replicas) to ours in place. Its delivery state is kept."""
        assert self.js is not None
        wanted = self._consumer_config()
        try:
            info = await self.js.consumer_info(self.ns.tasks_stream, self.ns.consumer)
        except NotFoundError:
            await self.js.add_consumer(self.ns.tasks_stream, wanted)
            return
        if not update:
            return
        have = info.config
        if ((have.ack_wait, have.max_ack_pending, have.max_deliver, have.num_replicas or 1)
                != (wanted.ack_wait, wanted.max_ack_pending, wanted.max_deliver, wanted.num_replicas or 1)):
            log.info("JetStream consumer %s: updating ack_wait/max_ack_pending/num_replicas in place", self.ns.consumer)
            with contextlib.suppress(APIError):  # an older server refusing the update: bind as it is
                await self.js.add_consumer(self.ns.tasks_stream, wanted)  # create-or-update (same durable name)

    async def claim_consumer(self, shared: bool) -> None:
        """Start-up: on a single-replica store, reset the consumer so what a dead predecessor held is
        redelivered now; on a shared store (several replicas) only bind to it: other live replicas
        hold its pending acks, and deleting it would hand their in-flight work out a second time."""
        if shared:
            await self._ensure_consumer(update=True)
        else:
            await self.reset_consumer()

    async def reset_consumer(self) -> None:
        """Start-up only, single replica: messages delivered to a dead daemon are redelivered now, not
        after ack_wait.

        Safe because one daemon owns the data directory (the lock) and so the consumer: every pending
        ack belongs to a process that no longer exists. Never on a shared store (`claim_consumer`).
        """
        assert self.js is not None
        with contextlib.suppress(NotFoundError):
            await self.js.delete_consumer(self.ns.tasks_stream, self.ns.consumer)
        await self.js.add_consumer(self.ns.tasks_stream, self._consumer_config())

    @property
    def pull_subject(self) -> str:
        """Where pull requests for the worker consumer go."""
        return f"$JS.API.CONSUMER.MSG.NEXT.{self.ns.tasks_stream}.{self.ns.consumer}"

    async def pull(self, batch: int, stop: asyncio.Event | None = None,
                   expires: float = PULL_EXPIRES_S) -> AsyncIterator[Msg]:
        """One lingering pull request for up to `batch` tasks, yielding each the moment it arrives; ends
        when the request is answered empty (404/408), expires, `batch` arrived, or `stop` is set.

        nats-py's `fetch(n)` waits for the whole batch (or its timeout) before returning, which would
        add up to the timeout to a step's latency at light load; this does not. Close it with
        `contextlib.aclosing` when leaving early. Raises when the server refuses the request (the
        consumer is gone): the caller rebuilds the topology."""
        nc = self.nc
        assert nc is not None
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        try:
            try:
                request = {"batch": batch, "expires": int(expires * 1e9)}
                await nc.publish(self.pull_subject, dumps_bytes(request), reply=inbox)
                if self.js is not None and not self.consumer_ready:
                    await self.js.consumer_info(self.ns.tasks_stream, self.ns.consumer)  # raises if the consumer is gone
                    self.consumer_ready = True
                deadline = time.monotonic() + expires + 1.0
                got = 0
                while got < batch and not (stop is not None and stop.is_set()):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    try:
                        msg = await sub.next_msg(timeout=remaining)
                    except TimeoutError:
                        return
                    status = msg.headers.get("Status") if msg.headers else None
                    if status is None:
                        self.consumer_ready = True
                        got += 1
                        yield msg
                    elif status in ("404", "408", "100"):  # no messages / request expired / heartbeat
                        if status != "100":
                            self.consumer_ready = True
                            return
                    else:
                        raise RuntimeError(f"pull request answered {status} {msg.headers.get('Description', '')}")
            except Exception:
                self.consumer_ready = False
                raise
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def task_stream_last_seq(self) -> int:
        assert self.js is not None
        return (await self.js.stream_info(self.ns.tasks_stream)).state.last_seq

    async def live_task_subjects(self) -> set[str] | None:
        """(Canonical) subjects with a task still in the work queue, in one request; None if the server
        left some out."""
        assert self.js is not None
        info = await self.js.stream_info(self.ns.tasks_stream, subjects_filter=self.ns.wire(TASK_SUBJECT_FILTER))
        subjects = info.state.subjects or {}
        if info.state.messages and sum(subjects.values()) < info.state.messages:
            return None  # a truncated answer: ask per subject this time
        return {self.ns.local(s) for s in subjects}

    async def publish(self, subject: str, payload: bytes, msg_id: str, headers: dict[str, str] | None = None) -> Any:
        assert self.js is not None
        hdrs = {MSG_ID_HEADER: msg_id, **(headers or {})}
        return await self.js.publish(self.ns.wire(subject), payload, headers=hdrs)

    def fits(self, payload: bytes, headers: dict[str, str]) -> bool:
        """Whether a message fits the server's max_payload (which counts headers too; nats-py does not)."""
        assert self.nc is not None
        head = sum(len(k) + len(v) + 4 for k, v in headers.items()) + HEADER_OVERHEAD
        return len(payload) + head <= self.nc.max_payload

    def fits_wire(self, header: bytes, payload: bytes) -> bool:
        """`fits` for a precomputed header section: exact, the server counts these very bytes."""
        assert self.nc is not None
        return len(header) + len(payload) <= self.nc.max_payload

    async def publish_each(self, items: list[tuple[str, bytes, str, dict[str, str]]],
                           timeout: float = ACK_TIMEOUT_S) -> list[BaseException | None]:
        """`publish_wire` for (subject, payload, message id, headers) items."""
        return await self.publish_wire([(s, header_block(m, h), p) for s, p, m, h in items], timeout)

    async def publish_wire(self, items: list[Wire], timeout: float = ACK_TIMEOUT_S) -> list[BaseException | None]:
        """Publish in order on one connection, each as a JetStream publish with its own reply subject,
        at most `PUBLISH_WINDOW` in flight, and return per item None when JetStream acked that very
        message (a `duplicate` ack counts: the stream has it) or the error it got. Callers forget only
        the rows acked (invariant 2).

        Pipelined by hand (`bus/wire.py`: precomputed headers, one long-lived reply subscription)
        rather than with `js.publish_async`, whose per-message futures made the relays ~10x slower."""
        assert self.nc is not None
        if not self.ns.is_default:
            items = [(self.ns.wire(subject), header, payload) for subject, header, payload in items]
        outcomes: list[BaseException | None] = [None] * len(items)
        for start in range(0, len(items), PUBLISH_WINDOW):
            await wire.publish_window(self.nc, self._acks, items, start, min(start + PUBLISH_WINDOW, len(items)),
                                      outcomes, timeout, _pub_ack_error)
        return outcomes

    async def task_is_live(self, subject: str) -> bool:
        """A work-queue message stays in the stream until acked, so its presence means a live task."""
        assert self.js is not None
        try:
            await self.js.get_last_msg(self.ns.tasks_stream, self.ns.wire(subject))
        except NotFoundError:
            return False
        return True

    async def consumer_lag(self) -> dict[str, int]:
        assert self.js is not None
        info = await self.js.consumer_info(self.ns.tasks_stream, self.ns.consumer)
        return {"pending": info.num_pending or 0, "ackPending": info.num_ack_pending or 0}

    # -- control messages (core NATS: a hint after a commit, never the truth) -----------------------
    async def subscribe_control(self, handler: Callable[[bytes], Awaitable[None]]) -> None:
        """Every replica listens on the deployment's control subject (nats-py re-subscribes after a
        reconnect; what was sent while disconnected is lost, which the database makes harmless)."""
        assert self.nc is not None

        async def on_msg(msg: Msg) -> None:
            await handler(msg.data)

        await self.nc.subscribe(self.ns.control_subject, cb=on_msg)

    async def publish_control(self, op: str, run_id: str) -> None:
        """Fire and forget: core NATS, no ack (a lost message only means the step runs to its end and its
        result is discarded, as before)."""
        if self.nc is None or self.nc.is_closed:
            return
        await self.nc.publish(self.ns.control_subject, encode_control(op, run_id))

    async def close(self) -> None:
        nc, self.nc = self.nc, None
        await self._acks.close()
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()



def _pub_ack_error(msg: Msg) -> BaseException | None:
    """None for a PubAck (new or duplicate), else the error JetStream answered (or no stream at all)."""
    if msg.headers and msg.headers.get("Status") == "503":
        return NoStreamResponseError()
    try:
        resp = loads(msg.data)
    except ValueError as exc:
        return exc
    if not isinstance(resp, dict):
        return ValueError(f"not a PubAck: {msg.data[:200]!r}")
    if "error" in resp:
        try:
            APIError.from_error(resp["error"])  # raises the error class that fits the code
        except APIError as exc:
            return exc
        return APIError(description=str(resp["error"]))
    return None
