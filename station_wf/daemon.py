"""The daemon: wires store, bus, relays, worker, reconciler and API into one asyncio process.

Start-up order makes recovery automatic: migrate -> sync definitions -> NATS and topology -> reset
the consumer (redeliver what a dead predecessor held) -> relays flush the outbox -> worker ->
reconciler -> API. Shutdown reverses it and drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats.errors
import psycopg
import uvicorn
from nats.js.errors import NoStreamResponseError, ServerError, ServiceUnavailableError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from station_wf.agents.catalog import AgentCatalog
from station_wf.agents.executor import AgentRunExecutor
from station_wf.agents.providers import AgentLimits
from station_wf.api.app import ApiState, build_app
from station_wf.api.auth import TokenTable
from station_wf.api.door import LoopbackPolicy
from station_wf.bus.control import ControlChannel
from station_wf.bus.jetstream import Bus
from station_wf.bus.nats_server import EmbeddedNats
from station_wf.bus.relay import EventRelay, OutboxRelay, RelayPublishError
from station_wf.config import Settings
from station_wf.core import limits
from station_wf.engine import children
from station_wf.engine.lease import LeaseKeeper, default_replica_id
from station_wf.engine.reconciler import Reconciler
from station_wf.engine.retention import Retention
from station_wf.engine.schedules import ScheduleLoop
from station_wf.engine.timers import TimerLoop
from station_wf.engine.worker import TaskWorker
from station_wf.executors.base import ExecutorRegistry
from station_wf.expr import sandbox
from station_wf.governance import agents as governance_agents
from station_wf.governance import policies as governance_policies
from station_wf.governance import settings as governance_settings
from station_wf.loop import Loop, cancel
from station_wf.mcp.pool import McpPool
from station_wf.mcp.serve import WorkflowTools
from station_wf.protocol import Namespace
from station_wf.services.control import ControlService
from station_wf.services.definitions import DefinitionService, SyncReport, plan_sync
from station_wf.services.events import EventHub
from station_wf.services.idempotency import IdempotencyPurge
from station_wf.services.isolated import IsolatedPool
from station_wf.services.offload import Offloader
from station_wf.services.runs import RunService
from station_wf.store import leases, outbox, timers
from station_wf.store import runs as run_store
from station_wf.store.db import BOOT, open_readers, open_writer
from station_wf.store.definitions import DefinitionCache
from station_wf.store.pg import ChangeFeed
from station_wf.telemetry.metrics import (
    ACTIVE_RUNS,
    CONTENT_TYPE,
    JETSTREAM_NUM_ACK_PENDING,
    JETSTREAM_NUM_PENDING,
    OUTBOX_DEPTH,
    TIMER_BACKLOG,
    render_prometheus,
)
from station_wf.telemetry.tracing import setup_tracing, shutdown_tracing

log = logging.getLogger(__name__)


WRITER_FAILED_EXIT = 75  # EX_TEMPFAIL: the storage failed; a restart may cure it


def _without_credentials(url: str) -> str:
    """A NATS URL fit for a log line: the embedded server's token (or a user:password) left out."""
    return re.sub(r"//[^/@,]*@", "//", url)


START_RETRY_S = 60.0  # how long start-up waits for JetStream (a cluster electing its leaders) before giving up


NATS_NOT_READY = (TimeoutError, nats.errors.NoRespondersError, ServiceUnavailableError, ServerError, NoStreamResponseError)


async def _retry_at_start(what: str, step: Callable[[], Awaitable[None]],
                          transient: tuple[type[BaseException], ...] = NATS_NOT_READY) -> None:
    """A start-up step against a server that may not be ready yet (a NATS cluster electing leaders, a
    Postgres still starting), retried with back-off: the daemon is not ready meanwhile, and exits only
    if it stays unready for START_RETRY_S."""
    deadline = time.monotonic() + START_RETRY_S
    delay = 0.25
    for attempt in range(1, 1000):
        try:
            await step()
            return
        except transient as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: %s (attempt %d); retrying in %.2f s", what, exc or type(exc).__name__, attempt, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 4.0)


class DataDirLocked(RuntimeError):
    pass


class DataDirLock:
    """One daemon per data directory: a second one would break 'one writer' and share the consumer."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "station-wf.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirLocked(
                f"another station-wf daemon (pid {holder}) is using data directory {self.path.parent.resolve()}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class _ApiServer(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT and drains in order."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield


class Daemon:
    def __init__(self, settings: Settings) -> None:
        settings.validate()
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.lock = DataDirLock(self.data_dir)
        self.writer = open_writer(settings.database_target, max_bytes=settings.database_max_bytes,
                                  on_fatal=self._writer_fatal)
        self.exit_code = 0  # non-zero when a component or the writer failed: a supervisor restarts us
        self._loop: asyncio.AbstractEventLoop | None = None
        self.readers = open_readers(settings.database_target)
        self.definitions = DefinitionCache()
        self.agents = AgentCatalog(Path(settings.environments_dir), settings.environment)
        self.registry = ExecutorRegistry()
        self.mcp_pool = McpPool(settings.environments_dir, settings.mcp_start_timeout_seconds)  # issue 20
        self.agent_executor = AgentRunExecutor(self.agents, AgentLimits.from_settings(settings), self.mcp_pool,
                                               settings.agent_max_steps, settings.mcp_tool_timeout_seconds,
                                               settings.agent_tool_depth, settings.agent_conversation_max_bytes,
                                               settings.agent_max_tool_calls)
        self.registry.register(self.agent_executor)
        self.tokens = TokenTable.load(settings.api_token, settings.api_tokens_file)
        self.hub = EventHub(self.readers)
        self.offloader = Offloader(settings.max_concurrent_validations)
        self.isolated = IsolatedPool(settings.max_concurrent_validations, settings.validation_timeout_seconds,
                                     settings.validation_memory_mb)
        self.sandbox = sandbox.SandboxPool(settings.expression_workers, memory_mb=settings.expression_memory_mb,
                                           max_result_bytes=settings.expression_max_result_bytes)
        limits.configure(settings)
        governance_settings.configure(settings, governance_agents.limit_lookup(self.agents))  # issue 18
        self.policies = governance_policies.open_environment(settings.environments_dir, settings.environment)
        self.embedded: EmbeddedNats | None = None
        self.bus: Bus | None = None
        self.relay: OutboxRelay | None = None
        self.event_relay: EventRelay | None = None
        self.worker: TaskWorker | None = None
        self.control_channel: ControlChannel | None = None
        self.reconciler: Reconciler | None = None
        self.timers: TimerLoop | None = None
        self.keeper: LeaseKeeper | None = None  # the singleton loops run while this replica holds the lease
        self.server: _ApiServer | None = None
        self._tasks: dict[str, asyncio.Task] = {}
        self.loops: list[Loop] = []  # every background loop on the base (`station_wf/loop.py`), in start order
        self._stop = asyncio.Event()
        self.sync_report: SyncReport | None = None
        self.change_feed: ChangeFeed | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        self.lock.acquire()
        setup_tracing("station-wf")
        if self.writer.shared:  # a Postgres that is restarting or not up yet: wait for it, as for NATS
            await _retry_at_start("the database", lambda: asyncio.to_thread(self.writer.start), (psycopg.OperationalError,))
        else:
            self.writer.start()
        sandbox_ready = asyncio.create_task(self.sandbox.start())  # its processes start while NATS does
        await self.readers.open()
        self.sync_report = await self.sync()
        for err in self.sync_report.errors:
            log.error("sync: %s", err)
        for warning in self.sync_report.warnings:
            log.warning("sync: %s", warning)
        self.agents.reload()

        if s.nats_embedded:
            self.embedded = EmbeddedNats(self.data_dir / "nats", port=s.nats_port)
            url = await self.embedded.start()
        else:
            assert s.nats_url is not None
            url = s.nats_url
        self.bus = Bus(url, ack_wait=s.ack_wait_seconds, max_ack_pending=max(1024, s.worker_concurrency * 4),
                       namespace=Namespace(s.deployment), replicas=s.nats_replicas)
        await self.bus.connect()

        async def topology() -> None:
            await self.bus.ensure_topology(scale=True)
            # Reset (redeliver a dead predecessor's work now) only when this daemon is the store's one replica.
            await self.bus.claim_consumer(shared=self.writer.shared)

        await _retry_at_start("JetStream streams and consumer", topology)
        if self.writer.shared and s.nats_embedded:
            log.warning("the store is shared (several replicas possible) but NATS is embedded: other replicas cannot "
                        "see this one's tasks; give every replica the same STATION_NATS_URL")
        await sandbox_ready
        sandbox.install(self.sandbox)  # from here on no expression runs on the writer thread

        self.relay = OutboxRelay(self.writer, self.readers, self.bus)  # every replica: Nats-Msg-Id de-duplicates
        # The singleton loops write through `fenced`: a transaction of a replica that lost the lease rolls back.
        # SQLite is never shared (the data-dir lock): its first try takes the lease from a dead holder at once.
        self.keeper = LeaseKeeper(self.writer, s.replica_id or default_replica_id(), s.lease_ttl_seconds,
                                  lambda loop: self._spawn(loop.name, loop.run()),
                                  exclusive=not self.writer.shared)
        fenced = self.keeper.fenced
        # Nothing in the daemon reads WORKFLOW_EVENTS (the API and SSE read SQLite): the mirror is for
        # external subscribers, and STATION_EVENT_MIRROR=off spares its cost when there are none.
        self.event_relay = EventRelay(fenced, self.readers, self.bus) if s.event_mirror else None
        try:
            await self.relay.drain()  # whatever a crash left between commit and publish goes out first
        except RelayPublishError as exc:  # e.g. another replica publishing the same ids right now: the loop retries
            log.warning("start-up outbox flush incomplete (the relay retries): %s", exc)
        self.worker = TaskWorker(self.writer, self.bus, self.registry, self.definitions, self._kick_relays,
                                 concurrency=s.worker_concurrency, ack_wait=s.ack_wait_seconds)
        self.agent_executor.tool_call_sink = self.worker.log_tool_call  # issue 20: each tool call logged as it happens
        self.reconciler = Reconciler(self.readers, self.bus, self.worker.is_inflight, interval=s.reconcile_seconds)
        self.timers = TimerLoop(fenced, self.readers, self.definitions, self._kick_relays,
                                max_attempts=s.timer_max_attempts)

        async def on_reconnect() -> None:
            assert self.relay is not None
            self.relay.kick()

        self.bus.on_reconnect = on_reconnect
        self._start_loop(self.relay)
        if self.event_relay is not None:
            self._singleton(self.event_relay)
        self._spawn("worker", self.worker.run())
        self._singleton(self.reconciler)
        self._singleton(self.timers)
        self.schedules = ScheduleLoop(fenced, self.readers, self._kick_relays)
        self._singleton(self.schedules)
        self._start_webhooks()
        if s.retention_days > 0:
            self._singleton(Retention(fenced, s.retention_days, s.retention_interval_seconds))
        self._singleton(IdempotencyPurge(fenced, s.retention_interval_seconds))
        self._start_loop(self.keeper)  # its first try is now: no TTL wait when nobody holds the lease
        run_service = RunService(self.writer, self.readers, on_commit=self._kick_relays, definitions=self.definitions,
                                 offloader=self.offloader)
        self.control_channel = ControlChannel(self.bus, self.readers, self.worker.cancel_run)
        await self.control_channel.start()  # cancels committed by other replicas interrupt our executions
        loop, channel = asyncio.get_running_loop(), self.control_channel
        # Children cancelled with their parent (inside any transaction) are interrupted like a cancel by API.
        children.set_cancel_announcer(lambda run_id: loop.call_soon_threadsafe(channel.cancel, run_id))
        control = ControlService(self.writer, self.readers, self.definitions, run_service, self._kick_relays,
                                 self.control_channel.cancel)
        self._spawn("event-hub", self.hub.run())
        if self.writer.shared:  # other replicas commit too: their notices wake what a local commit wakes
            self.change_feed = ChangeFeed(s.database_target, BOOT, self._on_remote_commit)
            self._spawn("change-feed", self.change_feed.run())
        definitions = DefinitionService(self.readers, self.writer, self.agents, self.offloader, self.isolated)
        extra_routes = [Route("/metrics", self.metrics_endpoint, methods=["GET"]),
                        Route("/api/v1/leases", self.leases_endpoint, methods=["GET"])]
        if s.mcp_server_enabled:  # issue 20: workflows as MCP tools at /mcp, behind the API's door
            mcp_tools = WorkflowTools(definitions, run_service, control)
            extra_routes.append(mcp_tools.route())
            self._spawn("mcp", mcp_tools.run(self._stop))
        integrations = await self._start_integrations(run_service)
        state = ApiState(run_service, definitions, self.writer, self.readiness, self.tokens,
                         control, self.hub, sse_ping=s.sse_ping_seconds,
                         extra_routes=extra_routes, agents=self.agents,
                         offloader=self.offloader, max_sse=s.max_sse_connections, body_timeout=s.http_body_timeout_seconds,
                         loopback=None if self.tokens.enabled else
                         LoopbackPolicy(s.http_host, s.http_port, tuple(s.allowed_hosts.split(","))),
                         integrations=integrations)
        config = uvicorn.Config(build_app(state), host=s.http_host, port=s.http_port, log_level="warning",
                                access_log=False, lifespan="off", timeout_graceful_shutdown=5, log_config=None)
        self.server = _ApiServer(config)
        self._spawn("api", self.server.serve())
        for _ in range(200):
            if self.server.started:
                break
            if self._tasks["api"].done():
                self._tasks["api"].result()  # raises the bind error
            await asyncio.sleep(0.025)
        # The last start-up line: where a person goes next (issue 17). A wildcard bind is browsed on loopback.
        host = "127.0.0.1" if s.http_host in ("", "0.0.0.0", "::") else s.http_host
        log.info("station-wf ready on http://%s (nats %s, data %s); dashboard: http://%s:%s/", s.http_addr,
                 _without_credentials(url), self.data_dir.resolve(), f"[{host}]" if ":" in host else host, s.http_port)

    def _start_webhooks(self) -> None:
        """Approval webhooks (engine/approval_webhooks.py), only when URLs are configured."""
        from station_wf.engine.approval_webhooks import ApprovalWebhooks, WebhookConfig

        s = self.settings
        urls = tuple(u.strip() for u in s.approval_webhook_urls.split(",") if u.strip())
        if not urls:
            return
        assert self.keeper is not None
        self.webhooks = ApprovalWebhooks(self.keeper.fenced, WebhookConfig(
            urls, s.approval_webhook_secret, s.public_url or f"http://{s.http_addr}", s.approval_webhook_timeout_seconds,
            max(1, s.approval_webhook_attempts), s.approval_webhook_backoff_seconds))
        self._singleton(self.webhooks)

    async def _start_integrations(self, runs: RunService) -> Any:
        """Issue 19: webhook subscriptions (a singleton delivery loop), incoming hooks, bundles."""
        from station_wf.integrations.bundles import BundleService
        from station_wf.integrations.wiring import Integrations

        assert self.keeper is not None
        integrations = Integrations(self.settings, self.writer, self.readers, self.keeper.fenced, runs, self.tokens.enabled)
        integrations.bundles = BundleService(self.readers)
        await integrations.start()
        self._singleton(integrations.loop)
        return integrations

    def _kick_relays(self) -> None:
        """After every commit: publish new tasks and events now, and wake SSE subscribers."""
        if self.relay is not None:
            self.relay.kick()
        if self.event_relay is not None:
            self.event_relay.kick()
        self.hub.kick()

    async def _hand_over_singletons(self) -> None:
        """Shutdown: stop every singleton loop (webhooks and the event mirror included), publish the
        mirror's last events, then free the lease, each bounded, so a rolling restart does not pause
        timers and schedules for a TTL and no old loop runs beside the next holder's."""
        if self.keeper is None:
            return
        await self.keeper.stop_singletons()
        if self.keeper.held and self.event_relay is not None and self.bus is not None and self.bus.connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.event_relay.drain(), 5)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):  # a wedged database must not hold the shutdown (the TTL frees it)
                await self.keeper.release()

    def _on_remote_commit(self) -> None:
        """Another replica committed: its events reach our SSE subscribers (the hub reads nothing when
        none listen) and the event mirror. Its tasks are its own relay's (ours polls for any it left);
        the timers poll every 100 ms and are never kicked (`engine/timers.py`)."""
        self.hub.kick()
        if self.event_relay is not None:
            self.event_relay.kick()

    def _start_loop(self, loop: Loop) -> None:
        self.loops.append(loop)
        self._spawn(loop.name, loop.run())

    def _singleton(self, loop: Loop) -> None:
        """A loop that runs on one replica at a time: while this one holds the lease (engine/lease.py)."""
        assert self.keeper is not None
        self.loops.append(loop)
        self.keeper.add(loop)

    def _spawn(self, name: str, coro: Any) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks[name] = task

        def crashed(t: asyncio.Task) -> None:
            if not t.cancelled() and t.exception() is not None and not self._stop.is_set():
                log.error("component %s died: %r; shutting down", name, t.exception())
                self.exit_code = self.exit_code or 1
                self._stop.set()

        task.add_done_callback(crashed)
        return task

    async def sync(self) -> SyncReport:
        # Parsing every workflow file is CPU-bound: off the loop, like the API's validations.
        apply = await self.offloader.run(plan_sync, Path(self.settings.environments_dir), self.settings.environment, self.agents)
        return await self.writer.run(apply)

    async def metrics_endpoint(self, request: Request) -> Response:
        """Prometheus text: counters kept in process, gauges read from SQLite and JetStream at scrape time."""
        active = await run_store.count_unfinished_by_status(self.readers)
        gauges: dict[str, list] = {
            ACTIVE_RUNS: [({"status": status}, n) for status, n in active.items()],
            OUTBOX_DEPTH: [({}, await outbox.depth(self.readers))],
            TIMER_BACKLOG: [({}, await timers.backlog(self.readers, time.time()))],
        }
        if self.bus is not None and self.bus.connected:
            with contextlib.suppress(Exception):
                lag = await asyncio.wait_for(self.bus.consumer_lag(), 2)
                gauges[JETSTREAM_NUM_PENDING] = [({}, lag["pending"])]
                gauges[JETSTREAM_NUM_ACK_PENDING] = [({}, lag["ackPending"])]
        return Response(render_prometheus(gauges), media_type=CONTENT_TYPE)

    async def leases_endpoint(self, request: Request) -> Response:
        """Which replica holds each lease (and so runs the singleton loops), and who this replica is."""
        assert self.keeper is not None  # the API starts after the keeper
        return JSONResponse(self.keeper.status(await leases.all_leases(self.readers), time.time()))

    def _writer_fatal(self, cause: BaseException) -> None:
        """Called on the writer thread after repeated fatal storage errors: stop, exit non-zero."""
        log.critical("the database writer gave up (%s); stopping so a supervisor restarts the daemon", cause)
        self.exit_code = WRITER_FAILED_EXIT
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def readiness(self) -> dict[str, bool]:
        return {
            "sqlite": self.writer.health().ok,
            "nats": self.bus is not None and self.bus.connected,
            "consumer": self.worker is not None and self.worker.subscribed,
        }

    def request_stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Drain: API off, stop fetching, let in-flight steps finish (grace), flush relays, close NATS."""
        self._stop.set()
        if self.server is not None:
            self.server.should_exit = True
            self.hub.close()  # open streams end now, not after uvicorn's graceful timeout
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tasks["api"], 10)
        await cancel(self._tasks.get("lease"))  # no singleton loop starts again from here on
        await self._hand_over_singletons()  # before the worker's grace: the next replica takes them over now
        if self.worker is not None:
            await self.worker.stop(self.settings.shutdown_grace_seconds)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tasks["worker"], 5)
        for name in ("outbox-relay", "event-hub", "change-feed"):
            await cancel(self._tasks.get(name))
        if self.relay is not None and self.bus is not None and self.bus.connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.relay.drain(), 5)
        await self.agent_executor.close()
        sandbox.install(None)
        await self.sandbox.close()
        self.offloader.close()
        self.isolated.close()
        children.set_cancel_announcer(None)
        if self.control_channel is not None:
            await self.control_channel.close()
        if self.bus is not None:
            await self.bus.close()
        if self.embedded is not None:
            await self.embedded.stop()
        await self.readers.close()
        self.writer.close()
        self.lock.release()
        shutdown_tracing()
        log.info("station-wf stopped")


async def serve(settings: Settings) -> None:
    # The SQLite writer thread needs the GIL back after each sqlite call; with the default 5 ms switch
    # interval a busy event loop makes it wait up to 5 ms each time, which dominated step latency.
    sys.setswitchinterval(0.0005)
    daemon = Daemon(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_stop)
    try:
        await daemon.start()
        await daemon.wait()
    finally:
        await daemon.stop()
    if daemon.exit_code:
        raise SystemExit(daemon.exit_code)
