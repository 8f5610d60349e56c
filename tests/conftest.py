"""Real parts for tests: a nats-server, the daemon as a subprocess, and an HTTP agent that counts calls."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from station_wf.bus.nats_server import EmbeddedNats, free_port
from tests.nats_cluster import nats_cluster  # noqa: F401 - the 3-node JetStream cluster fixture
from tests.pg_server import postgres_db, postgres_server  # noqa: F401 - fixtures: a real Postgres, lazily

REPO = Path(__file__).resolve().parents[1]


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll `predicate` until it returns a truthy value; bounded in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# -- the HTTP agent ------------------------------------------------------------------------------
@dataclass
class AgentCall:
    agent: str
    idempotency_key: str | None
    body: dict[str, Any]
    peer_port: int | None = None  # the caller's TCP port: which process made the call (replica tests)


@dataclass
class AgentBehaviour:
    status: int = 200
    reply: Any = None                 # None: echo a small object
    hold: threading.Event | None = None  # when set, calls wait for it (to kill the daemon mid-call)
    delay: float = 0.0
    fail_first: int = 0               # answer 500 to this many calls first
    reply_fn: Callable[[dict[str, Any]], Any] | None = None  # reply computed from the request body
    active: int = 0
    max_active: int = 0
    disconnects: int = 0              # held calls whose client hung up (cancellation closes the connection)


@dataclass
class AgentServer:
    """An OpenAI-free HTTP agent on 127.0.0.1: POST /agents/<name>; records every call."""

    port: int
    calls: list[AgentCall] = field(default_factory=list)
    behaviours: dict[str, AgentBehaviour] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/agents/{name}"

    def calls_for(self, agent: str | None = None, step_id: str | None = None) -> list[AgentCall]:
        with self.lock:
            return [c for c in self.calls if (agent is None or c.agent == agent)
                    and (step_id is None or c.body.get("stepId") == step_id)]

    def behave(self, name: str, **kwargs: Any) -> AgentBehaviour:
        self.behaviours[name] = AgentBehaviour(**kwargs)
        return self.behaviours[name]


@pytest.fixture
def agent_server() -> Iterator[AgentServer]:
    server = AgentServer(port=free_port())
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def handle(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.json()
        with server.lock:
            peer = request.transport.get_extra_info("peername") if request.transport else None
            server.calls.append(AgentCall(name, request.headers.get("Idempotency-Key"), body, peer[1] if peer else None))
        beh = server.behaviours.setdefault(name, AgentBehaviour())
        with server.lock:
            beh.active += 1
            beh.max_active = max(beh.max_active, beh.active)
            failing = beh.fail_first > 0
            if failing:
                beh.fail_first -= 1
        try:
            return await respond(request, beh, name, body, failing)
        finally:
            with server.lock:
                beh.active -= 1

    async def respond(request: web.Request, beh: AgentBehaviour, name: str, body: dict[str, Any], failing: bool) -> web.Response:
        if failing:
            return web.json_response({"error": "injected failure"}, status=500)
        if beh.hold is not None:
            deadline = time.monotonic() + 60
            while not beh.hold.is_set() and time.monotonic() < deadline:
                if request.transport is None or request.transport.is_closing():
                    with server.lock:
                        beh.disconnects += 1
                    return web.json_response({"error": "client went away"}, status=499)
                await asyncio.sleep(0.02)
        if beh.delay:
            await asyncio.sleep(beh.delay)
        if beh.reply_fn is not None:
            reply = beh.reply_fn(body)
        else:
            reply = beh.reply if beh.reply is not None else {"agent": name, "task": body.get("task"), "ok": True}
        return web.json_response(reply, status=beh.status)

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/agents/{name}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", server.port).start()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await runner.cleanup()

    stop = threading.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert ready.wait(10), "agent server did not start"
    yield server
    for beh in server.behaviours.values():
        if beh.hold is not None:
            beh.hold.set()
    stop.set()
    thread.join(10)


# -- nats-server (for tests that restart or tamper with the broker) -------------------------------
@dataclass
class NatsServer:
    store_dir: Path
    port: int
    server: EmbeddedNats | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server = EmbeddedNats(self.store_dir, port=self.port, auth=False)
        asyncio.run(self.server.start())

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run(self.server.stop())

    def run(self, coro_fn: Callable[[Any], Any]) -> Any:
        """Run `coro_fn(js)` against this server with a short-lived client."""
        import nats

        async def go() -> Any:
            nc = await nats.connect(self.url)
            try:
                return await coro_fn(nc.jetstream())
            finally:
                await nc.close()

        return asyncio.run(go())


@pytest.fixture(params=["sqlite", "postgres"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """What a store test opens its `Writer` on: an SQLite file, then a fresh Postgres database (the
    store tests run against both dialects)."""
    if request.param == "sqlite":
        return tmp_path / "db.sqlite"
    return request.getfixturevalue("postgres_db")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    srv = NatsServer(tmp_path / "external-nats", free_port())
    srv.start()
    yield srv
    srv.stop()


# -- the daemon -----------------------------------------------------------------------------------
# Two small workflows many daemon tests share: one parked on a signal, one inject step.
WAITS = """
id: waits
start: first
states:
  - { name: first, type: operation, action: signal.wait, input: { signal: go }, resultPath: got, end: true }
"""

PLAIN = """
id: plain
start: a
states:
  - { name: a, type: inject, data: { ok: true }, end: true }
"""

AGENT_TEMPLATE = """---
metadata:
  name: {name}
endpoint: {url}
---
Do the task.
"""


@dataclass
class Daemon:
    """`station-wf serve` as a real subprocess, with its own data and environments directories."""

    root: Path
    agent_server: AgentServer | None
    env: dict[str, str]
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def workflows_dir(self) -> Path:
        return self.root / "environments" / "default" / "workflows"

    @property
    def agents_dir(self) -> Path:
        return self.root / "environments" / "default" / "agents"

    @property
    def log_path(self) -> Path:
        return self.root / f"daemon-{self.starts}.log"

    def add_workflow(self, name: str, text: str) -> Path:
        self.workflows_dir.mkdir(parents=True, exist_ok=True)
        path = self.workflows_dir / f"{name}.workflow.yaml"
        path.write_text(text)
        return path

    def add_agent(self, name: str, url: str | None = None) -> None:
        self.agents_dir.mkdir(parents=True, exist_ok=True)
        if url is None:
            assert self.agent_server is not None
            url = self.agent_server.url(name)
        (self.agents_dir / f"{name}.prompt").write_text(AGENT_TEMPLATE.format(name=name, url=url))

    def process_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STATION_")}
        env.update({
            "STATION_DATA_DIR": str(self.data_dir),
            "STATION_ENVIRONMENTS_DIR": str(self.root / "environments"),
            "STATION_HTTP_ADDR": f"127.0.0.1:{self.http_port}",
            "STATION_RECONCILE_SECONDS": "0.5",
            "STATION_ACK_WAIT_SECONDS": "6",
            "STATION_SHUTDOWN_GRACE_SECONDS": "5",
            "STATION_LOG_LEVEL": "INFO",
        })
        env.update(self.env)
        env.update(extra or {})
        if os.environ.get("STATION_TEST_PG_SERVER") and "STATION_DATABASE_URL" not in env:
            env["STATION_DATABASE_URL"] = self._postgres_database(os.environ["STATION_TEST_PG_SERVER"])
        return env

    def _postgres_database(self, server: str) -> str:
        """STATION_TEST_PG_SERVER=postgresql://USER@HOST:PORT runs every daemon test on Postgres: each
        daemon gets a database of its own (kept across its restarts)."""
        import hashlib

        import psycopg

        name = "t_" + hashlib.sha1(str(self.root).encode()).hexdigest()[:16]
        with psycopg.connect(server.rstrip("/") + "/postgres", autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return server.rstrip("/") + "/" + name

    def start(self, extra_env: dict[str, str] | None = None, wait: bool = True) -> None:
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        self.starts += 1
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "station_wf.cli", "serve"], env=self.process_env(extra_env),
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
        )
        log.close()
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return httpx.get(self.base + "/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, what="daemon /readyz")

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(self.root.glob("daemon-*.log")))

    def kill(self) -> None:
        """kill -9: no drain, no cleanup."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError("daemon did not stop on SIGTERM") from None

    # -- API helpers --
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.base + path, timeout=15, **kwargs)

    def start_run(self, workflow_id: str, run_input: dict[str, Any] | None = None, **body: Any) -> dict[str, Any]:
        resp = self.request("POST", "/api/v1/workflow-runs", json={"workflowId": workflow_id, "input": run_input or {}, **body})
        assert resp.status_code == 201, resp.text
        return resp.json()["run"]

    def run(self, run_id: str) -> dict[str, Any]:
        resp = self.request("GET", f"/api/v1/workflow-runs/{run_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def events(self, run_id: str, max_pages: int = 1000) -> list[dict[str, Any]]:
        """Every event of the run through `GET /events`, a keyset page of 1,000 at a time."""
        out: list[dict[str, Any]] = []
        after = 0
        for _ in range(max_pages):
            page = self.request("GET", f"/api/v1/workflow-runs/{run_id}/events", params={"afterSeq": after, "limit": 1000}).json()
            out.extend(page["events"])
            if page["nextAfterSeq"] is None:
                return out
            after = page["nextAfterSeq"]
        raise AssertionError("too many event pages")

    def wait_status(self, run_id: str, statuses: str | tuple[str, ...] = "COMPLETED", timeout: float = 30.0) -> dict[str, Any]:
        wanted = (statuses,) if isinstance(statuses, str) else statuses
        holder: dict[str, Any] = {}

        def done() -> bool:
            holder["run"] = self.run(run_id)
            return holder["run"]["status"] in wanted

        try:
            wait_until(done, timeout, interval=0.1, what=f"run {run_id} to reach {wanted}")
        except AssertionError:
            raise AssertionError(f"run {run_id} is {holder.get('run', {}).get('status')}, wanted {wanted}\n"
                                 f"{json.dumps(holder.get('run'), indent=1)[:3000]}\n{self.log()}") from None
        return holder["run"]


def replicas(daemon_factory: Callable[..., Daemon], n: int, database_url: str, nats_url: str,
             workflows: dict[str, str], agents: tuple[str, ...] = ("worker", "slow"),
             env: dict[str, str] | None = None, start: bool = True) -> list[Daemon]:
    """`n` daemons forming one deployment: same database and NATS, own data dirs and HTTP ports, replica
    ids r0, r1, ...; started together (or not: `start=False`, for a test that orders the starts)."""
    shared = {"STATION_DATABASE_URL": database_url, "STATION_NATS_EMBEDDED": "false", "STATION_NATS_URL": nats_url,
              **(env or {})}
    out = []
    for i in range(n):
        d = daemon_factory(f"r{i}", {**shared, "STATION_REPLICA_ID": f"r{i}"})
        for name, text in workflows.items():
            d.add_workflow(name, text)
        for agent in agents:
            d.add_agent(agent)
        out.append(d)
    if not start:
        return out
    for d in out:
        d.start(wait=False)
    for d in out:
        d.wait_ready(60)
    return out



@pytest.fixture
def daemon_factory(tmp_path: Path, agent_server: AgentServer) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def make(name: str = "d", env: dict[str, str] | None = None) -> Daemon:
        root = tmp_path / name
        (root / "environments" / "default" / "workflows").mkdir(parents=True)
        (root / "environments" / "default" / "agents").mkdir(parents=True)
        d = Daemon(root, agent_server, env or {})
        made.append(d)
        return d

    yield make
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)


@pytest.fixture
def daemon(daemon_factory: Callable[..., Daemon]) -> Daemon:
    """A daemon (not yet started) with the `worker` agent defined."""
    d = daemon_factory()
    d.add_agent("worker")
    return d


def copy_example_env(dest: Path) -> None:
    shutil.copytree(REPO / "environments", dest, dirs_exist_ok=True)
