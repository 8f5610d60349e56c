"""JetStream topology and the few operations the engine needs: publish, fetch, and "is this task live?"."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client
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
from nats.js.errors import NotFoundError

log = logging.getLogger(__name__)

TASKS_STREAM = "WORKFLOW_TASKS"
EVENTS_STREAM = "WORKFLOW_EVENTS"
TASK_SUBJECTS = ["wf.task.>"]
EVENT_SUBJECTS = ["wf.event.>"]
WORKER_CONSUMER = "station-wf-worker"
DUPLICATE_WINDOW_S = 120.0
EVENTS_MAX_AGE_S = 7 * 24 * 3600.0
EVENTS_MAX_BYTES = 1 << 30
TASKS_MAX_MSGS = 1_000_000
TASKS_MAX_BYTES = 1 << 30


class Bus:
    """One NATS connection; the streams of DESIGN 5; the durable pull consumer the worker shares."""

    def __init__(self, url: str, *, ack_wait: float = 30.0, max_ack_pending: int = 1024) -> None:
        self.url = url
        self.ack_wait = ack_wait
        self.max_ack_pending = max_ack_pending
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.on_reconnect: Callable[[], Awaitable[None]] | None = None

    async def connect(self) -> None:
        async def _error(exc: Exception) -> None:
            log.warning("nats: %s", exc)

        async def _reconnected() -> None:
            log.info("nats: reconnected to %s", self.url)
            if self.on_reconnect is not None:
                await self.on_reconnect()

        async def _disconnected() -> None:
            log.warning("nats: disconnected")

        self.nc = await nats.connect(
            self.url,
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
            durable_name=WORKER_CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            max_deliver=-1,
            max_ack_pending=self.max_ack_pending,
            filter_subject="wf.task.>",
        )

    async def ensure_topology(self) -> None:
        """Create the streams and the consumer when missing (also after someone deleted them)."""
        assert self.js is not None
        await self._ensure_stream(StreamConfig(
            name=TASKS_STREAM, subjects=TASK_SUBJECTS, retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW_S,
            # Bounded: when full, publishes fail and tasks wait in the SQLite outbox (back-pressure, no loss).
            max_msgs=TASKS_MAX_MSGS, max_bytes=TASKS_MAX_BYTES, discard=DiscardPolicy.NEW,
        ))
        await self._ensure_stream(StreamConfig(
            name=EVENTS_STREAM, subjects=EVENT_SUBJECTS, retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW_S, max_age=EVENTS_MAX_AGE_S,
            max_bytes=EVENTS_MAX_BYTES, discard=DiscardPolicy.OLD,
        ))
        try:
            await self.js.consumer_info(TASKS_STREAM, WORKER_CONSUMER)
        except NotFoundError:
            await self.js.add_consumer(TASKS_STREAM, self._consumer_config())

    async def _ensure_stream(self, config: StreamConfig) -> None:
        assert self.js is not None
        try:
            await self.js.stream_info(config.name)
        except NotFoundError:
            log.warning("creating JetStream stream %s", config.name)
            await self.js.add_stream(config)

    async def reset_consumer(self) -> None:
        """Start-up only: messages delivered to a dead daemon are redelivered now, not after ack_wait.

        Safe because one daemon owns the data directory (the lock) and so the consumer: every pending
        ack belongs to a process that no longer exists.
        """
        assert self.js is not None
        with contextlib.suppress(NotFoundError):
            await self.js.delete_consumer(TASKS_STREAM, WORKER_CONSUMER)
        await self.js.add_consumer(TASKS_STREAM, self._consumer_config())

    @property
    def pull_subject(self) -> str:
        """Where pull requests for the worker consumer go (the worker runs its own pull loop)."""
        return f"$JS.API.CONSUMER.MSG.NEXT.{TASKS_STREAM}.{WORKER_CONSUMER}"

    async def publish(self, subject: str, payload: bytes, msg_id: str, headers: dict[str, str] | None = None) -> Any:
        assert self.js is not None
        hdrs = {"Nats-Msg-Id": msg_id, **(headers or {})}
        return await self.js.publish(subject, payload, headers=hdrs)

    async def publish_batch(self, items: list[tuple[str, bytes, str, dict[str, str]]]) -> None:
        """Publish in order with one round trip: all but the last as plain publishes (the stream stores
        them all the same), the last as a JetStream publish whose ack says the server got this far.

        One connection keeps the order, so an ack for the last means the ones before it were received;
        any failure raises and the caller publishes the whole batch again (`Nats-Msg-Id` drops copies)."""
        assert self.nc is not None
        if not items:
            return
        for subject, payload, msg_id, headers in items[:-1]:
            await self.nc.publish(subject, payload, headers={"Nats-Msg-Id": msg_id, **headers})
        subject, payload, msg_id, headers = items[-1]
        await self.publish(subject, payload, msg_id, headers)

    async def task_is_live(self, subject: str) -> bool:
        """A work-queue message stays in the stream until acked, so its presence means a live task."""
        assert self.js is not None
        try:
            await self.js.get_last_msg(TASKS_STREAM, subject)
        except NotFoundError:
            return False
        return True

    async def consumer_lag(self) -> dict[str, int]:
        assert self.js is not None
        info = await self.js.consumer_info(TASKS_STREAM, WORKER_CONSUMER)
        return {"pending": info.num_pending or 0, "ackPending": info.num_ack_pending or 0}

    async def close(self) -> None:
        nc, self.nc = self.nc, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()
