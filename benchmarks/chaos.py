"""Chaos: a mixed workload while the daemon is `kill -9`ed and nats-server restarted, then invariant checks.

    python -m benchmarks.chaos --runs 300 --seconds 120 --seed 1
    python -m benchmarks.chaos --replicas 3 ...   # 3 daemons, Postgres, a 3-node NATS cluster: chaos_replicas.py

Parts, all real processes on 127.0.0.1: an external nats-server (its own port and store), the daemon as a
subprocess pointed at it, and an HTTP agent server (aiohttp, in a thread) that records every call and
answers deterministically from its input. A pool of client threads starts runs of seven workflows
(switch, parallel, foreach, retries, approvals, signals, and a nested mix) at random moments, answers
their approvals and signals over the REST API, and retries through restarts. The driver, on the main
thread (nats-server dies with the thread that spawned it), kills the daemon at random moments and
restarts nats-server, bounded in count and in time.

Afterwards every run must be terminal within a bounded wait, and:

1. it reached the status, branch, attempts and context values its input decides;
2. no closed step attempt's executor was called again: no agent call with the attempt's idempotency key
   after its `completedAt` (and no `step.started` after its closing event); more than one call before it
   is allowed only if a daemon kill or a nats-server restart happened while the attempt was in flight;
3. its event seqs are gap-free 1..n;
4. its context is what `rebuild_context` makes of its events.

Also: one run per Idempotency-Key (`duplicate_run`), every agent call belongs to a step attempt, and each
`(step, attempt)` has at most one `step.succeeded`. Clients never cause duplicates themselves: after an
ambiguous failure they only switch to a fresh Idempotency-Key once the daemon that held the old one is
dead and the action is not found committed.

Counts and violations are printed as a table and as JSON; the exit status is 1 on any violation. On a
violation the working directory (daemon logs, SQLite file, `violations.json` with the runs' events) is
kept and named in the output.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from benchmarks.harness import REPO
from station_wf.bus.nats_server import EmbeddedNats, free_port
from station_wf.core.history import rebuild_context

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
SLOW_START_S = 8.0  # a restart slower than this gets a py-spy stack dump in the working directory
TOLERANCE_S = 0.25  # clock slack between the daemon's completedAt and the agent server's arrival time
CLIENT_TIMEOUT_S = 30.0  # long: a timed-out request may still be running, which the clients must assume
VIOLATION_KINDS = (
    "not_terminal", "wrong_status", "wrong_branch", "wrong_context", "succeeded_step_recalled",
    "closed_attempt_recalled", "started_after_close", "duplicate_call_unexplained", "duplicate_succeeded_event",
    "call_for_unknown_attempt", "duplicate_run", "seq_gap", "context_not_rebuilt", "harness",
)

# -- workflows --------------------------------------------------------------------------------------
RETRY = "{ maxAttempts: 3, backoffSeconds: 0.2, backoffRate: 2 }"
WORKFLOWS: dict[str, str] = {
    "chaos-switch": """
id: chaos-switch
start: route
states:
  - name: route
    type: switch
    conditions:
      - { if: "level >= 7", next: high }
      - { if: "level >= 3", next: mid }
    defaultNext: low
  - { name: high, type: operation, action: agent.run, input: { agent: echo, task: "high {{ key }}" }, resultPath: steps.out, next: mark_high }
  - { name: mid, type: operation, action: agent.run, input: { agent: slow, task: "mid {{ key }}" }, resultPath: steps.out, next: mark_mid }
  - { name: low, type: operation, action: agent.run, input: { agent: echo, task: "low {{ key }}" }, resultPath: steps.out, next: mark_low }
  - { name: mark_high, type: inject, data: { branch: high }, end: true }
  - { name: mark_mid, type: inject, data: { branch: mid }, end: true }
  - { name: mark_low, type: inject, data: { branch: low }, end: true }
""",
    "chaos-parallel": f"""
id: chaos-parallel
start: fan
states:
  - name: fan
    type: parallel
    branches:
      - name: a
        states:
          - {{ name: a1, type: operation, action: agent.run, input: {{ agent: echo, task: "a {{{{ key }}}}" }}, resultPath: r, end: true }}
      - name: b
        states:
          - {{ name: b1, type: operation, action: agent.run, input: {{ agent: slow, task: "b {{{{ key }}}}" }}, resultPath: r, next: b2 }}
          - {{ name: b2, type: operation, action: agent.run, input: {{ agent: echo, task: "b2 {{{{ r.h }}}}" }}, resultPath: r2, end: true }}
      - name: c
        states:
          - name: c1
            type: operation
            action: agent.run
            input: {{ agent: flaky, task: "c {{{{ key }}}} fail={{{{ nfail }}}}" }}
            retry: {RETRY}
            resultPath: r
            end: true
    resultPath: steps.fan
    next: after
  - {{ name: after, type: operation, action: agent.run, input: {{ agent: echo, task: "after {{{{ steps.fan.a.r.h }}}}" }}, resultPath: steps.after, end: true }}
""",
    "chaos-foreach": """
id: chaos-foreach
start: each
states:
  - name: each
    type: foreach
    itemsPath: items
    maxConcurrency: 2
    iterator:
      states:
        - { name: work, type: operation, action: agent.run, input: { agent: slow, task: "item {{ item }}" }, resultPath: r, end: true }
    resultPath: steps.each
    next: count
  - { name: count, type: transform, expression: "len(steps.each)", resultPath: steps.count, end: true }
""",
    "chaos-retry": f"""
id: chaos-retry
start: call
states:
  - name: call
    type: operation
    action: agent.run
    input: {{ agent: flaky, task: "retry {{{{ key }}}} fail={{{{ nfail }}}}" }}
    retry: {RETRY}
    resultPath: steps.call
    next: done
  - {{ name: done, type: inject, data: {{ finished: true }}, end: true }}
""",
    "chaos-approval": """
id: chaos-approval
start: prep
states:
  - { name: prep, type: operation, action: agent.run, input: { agent: echo, task: "prep {{ key }}" }, resultPath: steps.prep, next: policy }
  - name: policy
    type: switch
    conditions: [ { if: "policy == 'continue'", next: ask_continue } ]
    defaultNext: ask_fail
  - name: ask_fail
    type: operation
    action: human.approval
    input: { message: "Go on with {{ key }}?", onReject: fail }
    resultPath: decision
    next: gate
  - name: ask_continue
    type: operation
    action: human.approval
    input: { message: "Go on with {{ key }}?", onReject: continue }
    resultPath: decision
    next: gate
  - name: gate
    type: switch
    conditions: [ { if: "decision.approved", next: act } ]
    defaultNext: skip
  - { name: act, type: operation, action: agent.run, input: { agent: slow, task: "act {{ key }}" }, resultPath: steps.act, end: true }
  - { name: skip, type: inject, data: { skipped: true }, end: true }
""",
    "chaos-signal": """
id: chaos-signal
start: wait
states:
  - { name: wait, type: operation, action: signal.wait, input: { signal: go }, resultPath: got, next: use }
  - { name: use, type: operation, action: agent.run, input: { agent: echo, task: "sig {{ got.v }}" }, resultPath: steps.use, end: true }
""",
    "chaos-mixed": f"""
id: chaos-mixed
start: route
states:
  - name: route
    type: switch
    conditions: [ {{ if: "len(items) > 3", next: big }} ]
    defaultNext: small
  - name: big
    type: parallel
    branches:
      - name: loop
        states:
          - name: each
            type: foreach
            itemsPath: items
            maxConcurrency: 3
            iterator:
              states:
                - {{ name: w, type: operation, action: agent.run, input: {{ agent: slow, task: "m {{{{ item }}}}" }}, resultPath: r, end: true }}
            resultPath: out
            end: true
      - name: retry
        states:
          - name: fl
            type: operation
            action: agent.run
            input: {{ agent: flaky, task: "mf {{{{ key }}}} fail={{{{ nfail }}}}" }}
            retry: {RETRY}
            resultPath: out
            end: true
      - name: plain
        states:
          - {{ name: p, type: inject, data: {{ out: plain }}, end: true }}
    resultPath: steps.big
    next: finish
  - {{ name: small, type: operation, action: agent.run, input: {{ agent: echo, task: "small {{{{ key }}}}" }}, resultPath: steps.small, next: finish }}
  - {{ name: finish, type: inject, data: {{ finished: true }}, end: true }}
""",
}
AGENTS = ("echo", "slow", "flaky")
AGENT_TEMPLATE = "---\nmetadata:\n  name: {name}\nendpoint: {url}\n---\nDo the task.\n"
FAIL_RE = re.compile(r"fail=(\d+)")


def reply(agent: str, task: str) -> dict[str, Any]:
    """What the agent server answers: a pure function of the agent and the task."""
    return {"agent": agent, "task": task, "h": hashlib.sha1(f"{agent}|{task}".encode()).hexdigest()[:12]}


def _ts(text: str | None) -> float | None:
    return None if not text else datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- plans and expectations -------------------------------------------------------------------------
@dataclass
class Expect:
    """The outcome a run's input decides."""

    status: str
    values: dict[str, Any] = field(default_factory=dict)    # dotted context path -> value
    succeeded: set[str] = field(default_factory=set)         # states that must have a SUCCEEDED step
    not_succeeded: set[str] = field(default_factory=set)     # states that must not
    exact: bool = False                                      # `succeeded` is the whole set
    counts: dict[str, int] = field(default_factory=dict)     # state -> number of SUCCEEDED steps
    attempts: dict[str, int] = field(default_factory=dict)   # state -> highest attempt
    error_state: str | None = None


@dataclass
class Plan:
    """One run: its workflow, input, what the script does to it, and what it must end as."""

    key: str
    workflow: str
    input: dict[str, Any]
    start_at: float
    approve: bool | None = None
    signal_payload: dict[str, Any] | None = None
    run_id: str | None = None
    notes: list[str] = field(default_factory=list)

    def expect(self) -> Expect:
        key, inp = self.key, self.input
        if self.workflow == "chaos-switch":
            branch = "high" if inp["level"] >= 7 else "mid" if inp["level"] >= 3 else "low"
            agent = "slow" if branch == "mid" else "echo"
            return Expect("COMPLETED", {"branch": branch, "steps.out": reply(agent, f"{branch} {key}")},
                          {"route", branch, f"mark_{branch}"}, exact=True)
        if self.workflow == "chaos-parallel":
            fail = inp["nfail"]
            if fail >= 3:
                return Expect("FAILED", not_succeeded={"fan", "c1", "after"}, attempts={"c1": 3}, error_state="fan")
            a, b = reply("echo", f"a {key}"), reply("slow", f"b {key}")
            fan = {"a": {"r": a}, "b": {"r": b, "r2": reply("echo", f"b2 {b['h']}")},
                   "c": {"r": reply("flaky", f"c {key} fail={fail}")}}
            return Expect("COMPLETED", {"steps.fan": fan, "steps.after": reply("echo", f"after {a['h']}")},
                          {"fan", "a1", "b1", "b2", "c1", "after"}, exact=True, attempts={"c1": fail + 1})
        if self.workflow == "chaos-foreach":
            items = inp["items"]
            each = [{"r": reply("slow", f"item {it}")} for it in items]
            names = {"each", "count"} | ({"work"} if items else set())
            return Expect("COMPLETED", {"steps.each": each, "steps.count": len(items)}, names, exact=True,
                          counts={"work": len(items)})
        if self.workflow == "chaos-retry":
            fail = inp["nfail"]
            if fail >= 3:
                return Expect("FAILED", not_succeeded={"call", "done"}, attempts={"call": 3}, error_state="call")
            return Expect("COMPLETED", {"steps.call": reply("flaky", f"retry {key} fail={fail}"), "finished": True},
                          {"call", "done"}, exact=True, attempts={"call": fail + 1})
        if self.workflow == "chaos-approval":
            prep = {"steps.prep": reply("echo", f"prep {key}")}
            ask = f"ask_{inp['policy']}"
            if self.approve:
                return Expect("COMPLETED", {**prep, "decision.approved": True, "decision.decision": "approved",
                                            "decision.comment": f"ok {key}", "steps.act": reply("slow", f"act {key}")},
                              {"prep", "policy", ask, "gate", "act"}, exact=True)
            if inp["policy"] == "fail":
                return Expect("FAILED", prep, {"prep", "policy"}, {ask, "gate", "act", "skip"}, exact=True, error_state=ask)
            return Expect("COMPLETED", {**prep, "decision.approved": False, "decision.decision": "rejected",
                                        "decision.comment": f"no {key}", "skipped": True},
                          {"prep", "policy", ask, "gate", "skip"}, exact=True)
        if self.workflow == "chaos-signal":
            assert self.signal_payload is not None
            return Expect("COMPLETED", {"got": self.signal_payload,
                                        "steps.use": reply("echo", f"sig {self.signal_payload['v']}")},
                          {"wait", "use"}, exact=True)
        assert self.workflow == "chaos-mixed"
        items, fail = inp["items"], inp["nfail"]
        if len(items) <= 3:
            return Expect("COMPLETED", {"steps.small": reply("echo", f"small {key}"), "finished": True},
                          {"route", "small", "finish"}, {"big"}, exact=True)
        if fail >= 3:
            return Expect("FAILED", not_succeeded={"big", "fl", "finish", "small"}, attempts={"fl": 3}, error_state="big")
        big = {"loop": {"out": [{"r": reply("slow", f"m {it}")} for it in items]},
               "retry": {"out": reply("flaky", f"mf {key} fail={fail}")}, "plain": {"out": "plain"}}
        return Expect("COMPLETED", {"steps.big": big, "finished": True},
                      {"route", "big", "each", "w", "fl", "p", "finish"}, exact=True,
                      counts={"w": len(items)}, attempts={"fl": fail + 1})


def make_plans(runs: int, seconds: float, rng: random.Random, tag: str) -> list[Plan]:
    """A mixed workload, start times spread over the first 85 % of the chaos window."""
    names = list(WORKFLOWS)
    plans: list[Plan] = []
    for i in range(runs):
        key = f"{tag}-{i:04d}"
        wf = names[i % len(names)] if i < len(names) else rng.choice(names)
        items = [f"{key}.{j}" for j in range(rng.randint(0, 6))]
        inp: dict[str, Any] = {"key": key}
        plan = Plan(key, wf, inp, rng.uniform(0, 0.85 * seconds))
        if wf == "chaos-switch":
            inp["level"] = rng.randint(0, 9)
        elif wf == "chaos-parallel":
            inp["nfail"] = rng.choice([0, 0, 1, 3])
        elif wf == "chaos-foreach":
            inp["items"] = items
        elif wf == "chaos-retry":
            inp["nfail"] = rng.choice([0, 1, 2, 3])
        elif wf == "chaos-approval":
            inp["policy"] = rng.choice(["fail", "continue"])
            plan.approve = rng.random() < 0.6
        elif wf == "chaos-signal":
            plan.signal_payload = {"v": f"{key}/{rng.randint(0, 10**6)}"}
        else:
            inp["items"] = items
            inp["nfail"] = rng.choice([0, 1, 1, 3])
        plans.append(plan)
    return plans


# -- the agent server -------------------------------------------------------------------------------
@dataclass
class Call:
    agent: str
    key: str | None
    body: dict[str, Any]
    at: float  # time.time() on arrival
    via: str | None = None  # the replica that made the call (its agent URLs carry ?via=NAME)


class AgentServer:
    """POST /agents/<name>: records the call, sleeps a little, answers `reply()`; `flaky` fails while attempt <= fail=N."""

    def __init__(self, seed: int) -> None:
        self.port = free_port()
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True, name="chaos-agents")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/agents/{name}"

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("agent server did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.json()
        with self.lock:
            self.calls.append(Call(name, request.headers.get("Idempotency-Key"), body, time.time(), request.query.get("via")))
            delay = self.rng.uniform(0.05, 0.4) if name == "slow" else self.rng.uniform(0, 0.05)
        await asyncio.sleep(delay)
        task = str(body.get("task"))
        if name == "flaky":
            match = FAIL_RE.search(task)
            if match and int(body.get("attempt", 1)) <= int(match.group(1)):
                return web.json_response({"error": "injected failure", "attempt": body.get("attempt")}, status=500)
        return web.json_response(reply(name, task))

    async def _main(self) -> None:
        app = web.Application()
        app.router.add_post("/agents/{name}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()


# -- nats-server and the daemon ---------------------------------------------------------------------
class Nats:
    """An external nats-server; stop/start keep the port and the store. Call only from the main thread."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.port = free_port()
        self.server: EmbeddedNats | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server = EmbeddedNats(self.store, port=self.port, auth=False)
        asyncio.run(self.server.start())

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run(self.server.stop())
            self.server = None


class Daemon:
    """`station-wf serve` as a subprocess with its own data and environment; `kill()` is SIGKILL."""

    def __init__(self, root: Path, nats_url: str, agents: AgentServer, via: str | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.spawned = 0.0
        env_dir = root / "environments" / "default"
        (env_dir / "workflows").mkdir(parents=True, exist_ok=True)
        (env_dir / "agents").mkdir(parents=True, exist_ok=True)
        for name, text in WORKFLOWS.items():
            (env_dir / "workflows" / f"{name}.workflow.yaml").write_text(text.lstrip())
        for name in AGENTS:
            url = agents.url(name) + (f"?via={via}" if via else "")
            (env_dir / "agents" / f"{name}.prompt").write_text(AGENT_TEMPLATE.format(name=name, url=url))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("STATION_")}
        self.env.update({
            "STATION_DATA_DIR": str(root / "data"),
            "STATION_ENVIRONMENTS_DIR": str(root / "environments"),
            "STATION_HTTP_ADDR": f"127.0.0.1:{self.port}",
            "STATION_NATS_EMBEDDED": "false",
            "STATION_NATS_URL": nats_url,
            "STATION_RECONCILE_SECONDS": "0.5",
            "STATION_ACK_WAIT_SECONDS": "5",
            "STATION_SHUTDOWN_GRACE_SECONDS": "3",
            "STATION_LOG_LEVEL": "INFO",
        })
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), self.env.get("PYTHONPATH")) if p)

    def spawn(self) -> None:
        """Start the process without waiting for it."""
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        self.starts += 1
        with open(self.root / f"daemon-{self.starts:03d}.log", "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "station_wf.cli", "serve"], env=self.env, cwd=self.root,
                                         stdout=log, stderr=subprocess.STDOUT)
        self.spawned = time.monotonic()

    def wait_ready(self, timeout: float = 90.0) -> float:
        """Wait for /readyz; returns the seconds since the spawn."""
        assert self.proc is not None
        deadline = self.spawned + timeout
        with httpx.Client(timeout=1) as client:
            return self._poll_ready(client, deadline)

    def _poll_ready(self, client: httpx.Client, deadline: float) -> float:
        assert self.proc is not None
        dumped = False
        while time.monotonic() < deadline:
            if not dumped and time.monotonic() - self.spawned > SLOW_START_S:
                dumped = True
                self.dump_stack(f"not ready after {SLOW_START_S:.0f} s")
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}; see {self.root}/daemon-{self.starts:03d}.log")
            try:
                if client.get(self.base + "/readyz").status_code == 200:
                    return time.monotonic() - self.spawned
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"daemon not ready in time; see {self.root}")

    def start(self) -> float:
        """Spawn and wait until ready; returns the seconds it took."""
        self.spawn()
        return self.wait_ready()

    def dump_stack(self, why: str) -> None:
        """A slow start is a finding too: record /readyz and where the daemon is (py-spy, when installed)."""
        if self.proc is None:
            return
        try:
            ready = httpx.get(self.base + "/readyz", timeout=2)
            readyz = f"/readyz {ready.status_code} {ready.text[:500]}"
        except httpx.HTTPError as exc:
            readyz = f"/readyz: {type(exc).__name__}"
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        stack = "(py-spy not installed)"
        if os.access(spy, os.X_OK):
            out = subprocess.run([spy, "dump", "--pid", str(self.proc.pid)], capture_output=True, text=True, timeout=30)
            stack = out.stdout + out.stderr
        with open(self.root / f"slow-start-{self.starts:03d}.txt", "a") as f:
            f.write(f"{why}\n{readyz}\n{stack}\n")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# -- the clients ------------------------------------------------------------------------------------
class Api:
    """REST calls that ride out restarts: transport errors and 5xx are retried until the deadline.

    `generation()` is the number of daemon processes started so far: an attempt that reached process g
    can only still be in progress while g is the current one, which is what lets a client tell an
    orphaned Idempotency-Key reservation (its daemon died) from its own request still being answered."""

    def __init__(self, base: str, deadline: float, generation: Callable[[], int] = lambda: 0) -> None:
        self.base = base
        self.deadline = deadline
        self.generation = generation
        self._local = threading.local()
        self._clients: list[httpx.Client] = []

    def client(self) -> httpx.Client:
        """One keep-alive client per thread (a fresh httpx client per request costs an SSL context)."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(base_url=self.base, timeout=CLIENT_TIMEOUT_S)
            self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()

    def once(self, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response | None, bool]:
        """One attempt: (response or None, whether the request may have reached a daemon)."""
        try:
            return self.client().request(method, path, **kwargs), True
        except (httpx.ConnectError, httpx.ConnectTimeout):
            return None, False
        except httpx.HTTPError:
            return None, True

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        while True:
            resp, _ = self.once(method, path, **kwargs)
            if resp is not None and resp.status_code < 500:
                return resp
            if time.monotonic() > self.deadline:
                raise TimeoutError(f"{method} {path}: no answer before the deadline")
            time.sleep(random.uniform(0.1, 0.3))

    def idempotent_post(self, path: str, body: dict[str, Any], key: str, found: Callable[[], bool],
                        notes: list[str]) -> httpx.Response | None:
        """POST with an Idempotency-Key until it answers below 500 and not 409 `idempotency_key_in_progress`.

        A 409 while one of our attempts may still be running on a live daemon: wait for it. A 409
        whose reservation belongs to a dead daemon: `found()` says whether the action committed anyway
        (then None is returned), else the POST is retried under a fresh key."""
        witness: Any = None  # who may still be answering one of our attempts (see `witness`)
        for n in range(10_000):
            resp, delivered = self.once("POST", path, json=body, headers={"Idempotency-Key": key})
            now = self.witness()
            if resp is not None and resp.status_code < 500 and not (
                    resp.status_code == 409 and _code(resp) == "idempotency_key_in_progress"):
                return resp
            if time.monotonic() > self.deadline:
                raise TimeoutError(f"POST {path}: no answer before the deadline")
            if resp is None or resp.status_code >= 500:
                if delivered:
                    witness = now
            elif witness is None or self.gone(witness):
                if found():
                    notes.append("idempotency: reservation orphaned by a kill; the action had committed")
                    return None
                key = f"{key.split('~')[0]}~{n}"
                witness = None
                notes.append("idempotency: reservation orphaned by a kill; retried under a new key")
            time.sleep(random.uniform(0.1, 0.3))
        raise RuntimeError(f"POST {path}: gave up")

    def witness(self) -> Any:
        """After an attempt: what identifies the process that may still be answering it (the generation)."""
        return self.generation()

    def gone(self, witness: Any) -> bool:
        """That process is dead: the attempt it held is no longer in progress."""
        return witness < self.generation()

    def events(self, run_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after = 0
        while True:
            page = self.call("GET", f"/api/v1/workflow-runs/{run_id}/events", params={"afterSeq": after, "limit": 1000}).json()
            out.extend(page["events"])
            if page["nextAfterSeq"] is None:
                return out
            after = page["nextAfterSeq"]

    def all_runs(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
            page = self.call("GET", "/api/v1/workflow-runs", params=params).json()
            out.extend(page["runs"])
            cursor = page.get("nextCursor")
            if not cursor:
                return out


def _code(resp: httpx.Response) -> str | None:
    try:
        return resp.json().get("error", {}).get("code")
    except ValueError:
        return None


def start_run(api: Api, plan: Plan) -> None:
    """POST with an Idempotency-Key; a reservation orphaned by a kill is resolved by looking the run up."""

    def found() -> bool:
        runs = [r for r in api.all_runs() if (r.get("input") or {}).get("key") == plan.key]
        if runs:
            plan.run_id = runs[-1]["id"]
        return bool(runs)

    resp = api.idempotent_post("/api/v1/workflow-runs", {"workflowId": plan.workflow, "input": plan.input},
                               f"start-{plan.key}", found, plan.notes)
    if resp is None:
        return
    if resp.status_code != 201:
        raise RuntimeError(f"start {plan.key}: {resp.status_code} {resp.text[:300]}")
    plan.run_id = resp.json()["run"]["id"]


def answer_approval(api: Api, plan: Plan, rng: random.Random) -> None:
    """Wait for the pending approval, think a little, decide; a 409 is fine if our decision is the one recorded."""
    assert plan.run_id is not None
    base = f"/api/v1/workflow-runs/{plan.run_id}"
    approval: dict[str, Any] | None = None
    while approval is None:
        found = api.call("GET", base + "/approvals").json()["approvals"]
        approval = next((a for a in found if a["status"] == "pending"), None)
        if approval is None:
            if api.call("GET", base).json()["status"] in TERMINAL:
                raise RuntimeError(f"{plan.key}: run ended before its approval was requested")
            if time.monotonic() > api.deadline:
                raise TimeoutError(f"{plan.key}: no approval requested")
            time.sleep(0.2)
    time.sleep(rng.uniform(0, 1.5))
    assert approval is not None
    verb, body = ("approve", {"comment": f"ok {plan.key}"}) if plan.approve else ("reject", {"reason": f"no {plan.key}"})
    want = "approved" if plan.approve else "rejected"
    resp = api.call("POST", f"{base}/approvals/{approval['id']}/{verb}", json=body)
    if resp.status_code == 200:
        return
    if resp.status_code == 409:
        now = next(a for a in api.call("GET", base + "/approvals").json()["approvals"] if a["id"] == approval["id"])
        if now["status"] == want:
            plan.notes.append("approval: 409 after a lost answer; our decision is recorded")
            return
    raise RuntimeError(f"{plan.key}: {verb} answered {resp.status_code} {resp.text[:300]}")


def send_signal(api: Api, plan: Plan, rng: random.Random) -> None:
    """Send `go` after a random delay (before or during the wait); an orphaned reservation is settled from the events."""
    assert plan.run_id is not None and plan.signal_payload is not None
    time.sleep(rng.uniform(0, 2.0))
    run_id = plan.run_id

    def found() -> bool:
        return any(e["type"] == "signal.received" and e["payload"].get("payload") == plan.signal_payload
                   for e in api.events(run_id))

    resp = api.idempotent_post(f"/api/v1/workflow-runs/{run_id}/signals", {"name": "go", "payload": plan.signal_payload},
                               f"sig-{plan.key}", found, plan.notes)
    if resp is not None and resp.status_code != 202:
        raise RuntimeError(f"{plan.key}: signal answered {resp.status_code} {resp.text[:300]}")


def drive(api: Api, plan: Plan, t0: float, seed: int) -> None:
    """One run's client: start it at its moment, then answer what it waits for."""
    rng = random.Random(f"{seed}:{plan.key}")
    time.sleep(max(0.0, t0 + plan.start_at - time.monotonic()))
    start_run(api, plan)
    if plan.approve is not None:
        answer_approval(api, plan, rng)
    if plan.signal_payload is not None:
        send_signal(api, plan, rng)


# -- the driver -------------------------------------------------------------------------------------
@dataclass
class Chaos:
    """What the driver did, with wall-clock windows (time.time()) for explaining duplicate calls."""

    kills: int = 0
    kills_in_start: int = 0  # of `kills`: a daemon killed while it was still starting up
    nats_restarts: int = 0
    daemon_down: list[tuple[float, float]] = field(default_factory=list)  # kill -> ready again
    nats_down: list[tuple[float, float]] = field(default_factory=list)    # stop -> ready again
    restart_seconds: list[float] = field(default_factory=list)


def schedule(seconds: float, kills: int, nats_restarts: int, rng: random.Random) -> list[tuple[float, str]]:
    """Planned (offset, action) pairs inside the window.

    Actions: `kill` (kill -9 a running daemon), `kill-in-start` (kill it, then kill the new one again
    while it is still recovering: two kills), `nats-live` (restart nats-server under a running daemon),
    `nats-with-kill` (kill the daemon, restart nats-server, start the daemon). One nats-server restart
    comes among the first two actions, so a loaded machine that only gets through a few still has one.
    """
    actions = ["kill-in-start" if rng.random() < 0.25 else "kill" for _ in range(kills)]
    actions += [rng.choice(["nats-live", "nats-with-kill"]) for _ in range(nats_restarts)]
    rng.shuffle(actions)
    first_nats = next((i for i, a in enumerate(actions) if a.startswith("nats")), None)
    if first_nats is not None and first_nats > 1:
        swap = rng.randrange(2)
        actions[swap], actions[first_nats] = actions[first_nats], actions[swap]
    times = sorted(rng.uniform(0.1 * seconds, 0.9 * seconds) for _ in actions)
    return list(zip(times, actions, strict=True))


def _restart_nats(nats: Nats, rng: random.Random, chaos: Chaos, down_for: tuple[float, float]) -> None:
    began = time.time()
    nats.stop()
    time.sleep(rng.uniform(*down_for))
    nats.start()
    chaos.nats_restarts += 1
    chaos.nats_down.append((began, time.time()))


def paced(plan: list[tuple[float, str]], t0: float, seconds: float, min_gap: float) -> Iterator[str]:
    """The schedule's actions, each at its time but never sooner than `min_gap` after the previous one
    ended (the caller's loop body is the action: healthy again when it hands control back).

    Slow restarts (a loaded machine) push actions past the window; they still run up to a hard cap of
    half the window again (at least 10 s), so the counts asked for are kept where time allows. Returns
    at the window's end."""
    end = t0 + seconds
    hard = end + max(10.0, seconds / 2)
    healthy_since = time.monotonic()
    for offset, action in plan:
        at = max(t0 + offset, healthy_since + min_gap)
        if at >= hard:
            break
        time.sleep(max(0.0, at - time.monotonic()))
        yield action
        healthy_since = time.monotonic()
    time.sleep(max(0.0, end - time.monotonic()))


def run_driver(daemon: Daemon, nats: Nats, plan: list[tuple[float, str]], t0: float, seconds: float,
               rng: random.Random, min_gap: float, chaos: Chaos) -> None:
    """Execute the schedule on the main thread (`paced`): kills, kills mid-recovery, NATS restarts."""
    for action in paced(plan, t0, seconds, min_gap):
        if action == "nats-live":
            _restart_nats(nats, rng, chaos, (0.2, 1.5))
            continue
        down = time.time()
        daemon.kill()
        chaos.kills += 1
        time.sleep(rng.uniform(0, 0.5))
        if action == "nats-with-kill":
            _restart_nats(nats, rng, chaos, (0.1, 1.0))
        if action == "kill-in-start":
            daemon.spawn()
            time.sleep(rng.uniform(0.3, 3.0))  # mid-recovery: imports, sync, consumer reset, outbox drain ...
            daemon.kill()
            chaos.kills += 1
            chaos.kills_in_start += 1
        daemon.spawn()
        chaos.restart_seconds.append(daemon.wait_ready())
        chaos.daemon_down.append((down, time.time()))


# -- the checks -------------------------------------------------------------------------------------
def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return "<missing>"
        obj = obj[part]
    return obj


def diff_paths(a: Any, b: Any, path: str = "", limit: int = 20) -> list[str]:
    """Dotted paths where two JSON values differ ("+p": only in b, "-p": only in a, "~p": both, unequal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{k}" if path else str(k)
            if k not in b:
                out.append(f"-{sub}")
            elif k not in a:
                out.append(f"+{sub}")
            else:
                out.extend(diff_paths(a[k], b[k], sub, limit))
        return out[:limit]
    return [] if a == b else [f"~{path}"]


@dataclass
class Checker:
    """Collects violations by kind, each with the run and enough detail to reproduce it."""

    chaos: Chaos
    calls_by_key: dict[str, list[Call]]
    violations: list[dict[str, Any]] = field(default_factory=list)
    info: Counter = field(default_factory=Counter)

    def flag(self, kind: str, plan: Plan | None, **detail: Any) -> None:
        self.violations.append({"kind": kind, "key": plan.key if plan else None, "runId": plan.run_id if plan else None,
                                "workflow": plan.workflow if plan else None, **detail})

    def _disturbed(self, start: float, end: float, calls: list[Call]) -> str | None:
        """Did a kill or a nats-server restart overlap [start, end]? (`calls`: the attempt's, by arrival)"""
        if any(a - TOLERANCE_S <= end and b + TOLERANCE_S >= start for a, b in self.chaos.daemon_down):
            return "kill"
        if any(a - TOLERANCE_S <= end and b + TOLERANCE_S >= start for a, b in self.chaos.nats_down):
            return "nats"
        return None

    def check_run(self, plan: Plan, run: dict[str, Any], events: list[dict[str, Any]]) -> None:
        """All four checks for a run the script started and drove."""
        if run["status"] not in TERMINAL:
            self.flag("not_terminal", plan, status=run["status"])
        self._check_outcome(plan, run)
        self.check_history(plan, run, events)

    def check_history(self, plan: Plan, run: dict[str, Any], events: list[dict[str, Any]]) -> None:
        """Checks 2-4 (they hold for any run, also one the script did not mean to start)."""
        self._check_calls(plan, run, events)
        seqs = [e["seq"] for e in events]
        if seqs != list(range(1, len(events) + 1)) or run["lastEventSeq"] != len(events):
            self.flag("seq_gap", plan, seqs=seqs, lastEventSeq=run["lastEventSeq"])
        rebuilt = rebuild_context([(e["type"], e["payload"]) for e in events])
        if rebuilt != run["context"]:
            self.flag("context_not_rebuilt", plan, diff=diff_paths(rebuilt, run["context"]), rebuilt=rebuilt,
                      context=run["context"])

    def _check_outcome(self, plan: Plan, run: dict[str, Any]) -> None:
        want = plan.expect()
        error_state = (run.get("error") or {}).get("stateName")
        if run["status"] != want.status or (want.error_state and error_state != want.error_state):
            self.flag("wrong_status", plan, want=want.status, got=run["status"], wantErrorState=want.error_state,
                      gotErrorState=error_state, error=run.get("error"))
            return
        steps = run["steps"]
        done = Counter(s["stateName"] for s in steps if s["status"] == "SUCCEEDED")
        attempts: dict[str, int] = {}
        for s in steps:
            attempts[s["stateName"]] = max(attempts.get(s["stateName"], 0), s["attempt"])
        problems = []
        if want.exact and set(done) != want.succeeded:
            problems.append(f"succeeded states {sorted(done)} != {sorted(want.succeeded)}")
        if not want.exact and not want.succeeded <= set(done):
            problems.append(f"missing succeeded states {sorted(want.succeeded - set(done))}")
        if set(done) & want.not_succeeded:
            problems.append(f"succeeded states that must not: {sorted(set(done) & want.not_succeeded)}")
        for name, n in want.counts.items():
            if done[name] != n:
                problems.append(f"{name}: {done[name]} SUCCEEDED steps, want {n}")
        for name, n in want.attempts.items():
            if attempts.get(name) != n:
                problems.append(f"{name}: attempt {attempts.get(name)}, want {n}")
        if problems:
            self.flag("wrong_branch", plan, problems=problems)
        wrong = {p: {"want": v, "got": _get(run["context"], p)} for p, v in want.values.items() if _get(run["context"], p) != v}
        if wrong:
            self.flag("wrong_context", plan, values=wrong)

    def _check_calls(self, plan: Plan, run: dict[str, Any], events: list[dict[str, Any]]) -> None:
        closing: dict[tuple[str, int], int] = {}
        succeeded: Counter = Counter()
        for e in events:
            if e["type"] in ("step.succeeded", "step.failed", "step.cancelled"):
                ident = (e["stepId"], e["payload"].get("attempt"))
                closing.setdefault(ident, e["seq"])
                if e["type"] == "step.succeeded":
                    succeeded[ident] += 1
        for ident, n in succeeded.items():
            if n > 1:
                self.flag("duplicate_succeeded_event", plan, stepId=ident[0], attempt=ident[1], count=n)
        for e in events:
            ident = (e["stepId"], e["payload"].get("attempt"))
            if e["type"] == "step.started" and ident in closing and e["seq"] > closing[ident]:
                self.flag("started_after_close", plan, stepId=ident[0], attempt=ident[1], startedSeq=e["seq"],
                          closedSeq=closing[ident])
        for step in run["steps"]:
            calls = self.calls_by_key.pop(step["idempotencyKey"], [])
            if not calls:
                continue
            self.info["agent_attempts"] += 1
            completed = _ts(step["completedAt"])
            if completed is None:
                continue  # still open: not_terminal says so
            late = [c for c in calls if c.at > completed + TOLERANCE_S]
            if late:
                kind = "succeeded_step_recalled" if step["status"] == "SUCCEEDED" else "closed_attempt_recalled"
                self.flag(kind, plan, stepId=step["stepId"], state=step["stateName"], attempt=step["attempt"],
                          status=step["status"], completedAt=step["completedAt"],
                          callsAt=[datetime.fromtimestamp(c.at).astimezone().isoformat() for c in calls],
                          lateBySeconds=[round(c.at - completed, 3) for c in late])
            early = [c for c in calls if c.at <= completed + TOLERANCE_S]
            if step["status"] == "SUCCEEDED" and len(early) > 1:
                cause = self._disturbed(early[0].at, completed, early)
                if cause is None:
                    self.flag("duplicate_call_unexplained", plan, stepId=step["stepId"], state=step["stateName"],
                              attempt=step["attempt"], calls=len(early), completedAt=step["completedAt"])
                else:
                    self.info[f"re_executions_after_{cause}"] += len(early) - 1


# -- putting it together ----------------------------------------------------------------------------
def _drive_all(plans: list[Plan], api: Api, t0: float, seed: int, driver: Callable[[], None]) -> list[dict[str, Any]]:
    """The chaos window: clients in a thread pool, `driver` (kills and restarts) on this, the main, thread.
    Returns harness errors."""
    errors: list[dict[str, Any]] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(max(len(plans), 1), 128), thread_name_prefix="chaos-client") as pool:
        futures = {pool.submit(drive, api, p, t0, seed): p for p in plans}
        driver()
        for fut in concurrent.futures.as_completed(futures):
            exc = fut.exception()
            if exc is not None:
                plan = futures[fut]
                errors.append({"kind": "harness", "key": plan.key, "runId": plan.run_id, "workflow": plan.workflow,
                               "error": f"{type(exc).__name__}: {exc}", "notes": plan.notes})
    return errors


def _dump(plan: Plan, run: dict[str, Any], events: list[dict[str, Any]], calls: list[Call]) -> dict[str, Any]:
    return {"plan": {"workflow": plan.workflow, "input": plan.input, "approve": plan.approve, "signal": plan.signal_payload,
                     "notes": plan.notes},
            "run": run, "events": events,
            "calls": [{"agent": c.agent, "key": c.key, "at": c.at, "attempt": c.body.get("attempt"), "via": c.via}
                      for c in calls if c.body.get("runId") == run["id"]]}


def _check_all(api: Api, plans: list[Plan], checker: Checker, calls: list[Call]) -> tuple[Counter, dict[str, Any]]:
    """Every run the script started, then any run it did not mean to start (a second run for one key)."""
    dumps: dict[str, Any] = {}
    statuses: Counter = Counter()
    for plan in plans:
        if plan.run_id is None:
            continue
        run = api.call("GET", f"/api/v1/workflow-runs/{plan.run_id}").json()
        events = api.events(plan.run_id)
        statuses[run["status"]] += 1
        checker.info["redelivered_starts"] += sum(1 for e in events if e["type"] == "step.started" and e["payload"].get("redelivered"))
        before = len(checker.violations)
        checker.check_run(plan, run, events)
        if len(checker.violations) > before:
            dumps[run["id"]] = _dump(plan, run, events, calls)
    by_key = {p.key: p for p in plans}
    ours = {p.run_id for p in plans}
    for listed in api.all_runs():
        plan = by_key.get((listed.get("input") or {}).get("key"))
        if plan is None or listed["id"] in ours:
            continue
        run = api.call("GET", f"/api/v1/workflow-runs/{listed['id']}").json()
        events = api.events(listed["id"])
        first = api.call("GET", f"/api/v1/workflow-runs/{plan.run_id}").json() if plan.run_id else {}
        checker.flag("duplicate_run", plan, otherRunId=run["id"], otherCreatedAt=run["createdAt"], otherStatus=run["status"],
                     createdAt=first.get("createdAt"), status=first.get("status"),
                     note="the same Idempotency-Key and body started a second run")
        extra = Plan(plan.key, plan.workflow, plan.input, 0, run_id=run["id"], notes=["not started by the script's intent"])
        checker.check_history(extra, run, events)
        dumps[run["id"]] = _dump(extra, run, events, calls)
        if plan.run_id:
            dumps[plan.run_id] = _dump(plan, first, api.events(plan.run_id), calls)
    for key, left in checker.calls_by_key.items():
        checker.flag("call_for_unknown_attempt", None, idempotencyKey=key, calls=len(left))
    return statuses, dumps


def run_chaos(runs: int = 300, seconds: float = 120.0, seed: int = 1, kills: int | None = None,
              nats_restarts: int | None = None, settle: float = 120.0, min_gap: float = 1.0,
              root: Path | None = None, keep: bool = False, log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Run the whole scenario; returns the report (counts, violations by kind, examples, all violations)."""
    rng = random.Random(seed)
    kills = kills if kills is not None else max(1, int(seconds / 4.5))
    nats_restarts = nats_restarts if nats_restarts is not None else max(1, kills // 5)
    own_root = root is None
    root = Path(tempfile.mkdtemp(prefix="station-wf-chaos-")) if root is None else root
    root.mkdir(parents=True, exist_ok=True)
    agents = AgentServer(seed)
    nats = Nats(root / "nats")
    daemon = Daemon(root, nats.url, agents)
    plans = make_plans(runs, seconds, rng, f"c{seed}")
    chaos = Chaos()
    began = time.monotonic()
    agents.start()
    nats.start()
    try:
        daemon.start()
        log(f"chaos: {runs} runs, {seconds:.0f} s, seed {seed}, up to {kills} kill and {nats_restarts} nats actions; dir {root}")
        t0 = time.monotonic()
        api = Api(daemon.base, t0 + seconds + max(10.0, seconds / 2) + settle, lambda: daemon.starts)
        harness_errors = _drive_all(plans, api, t0, seed, lambda: run_driver(
            daemon, nats, schedule(seconds, kills, nats_restarts, rng), t0, seconds, rng, min_gap, chaos))
        outcome = settle_and_check(api, plans, agents, Checker(chaos, {}), harness_errors, settle)
        api.close()
    finally:
        daemon.stop()
        nats.stop()
        agents.stop()
    report = build_report(outcome, plans, chaos, seconds, seed, t0, began)
    return keep_if_violations(report, outcome, root, keep, own_root)


@dataclass
class Outcome:
    """What the checks found once the window closed and the runs settled."""

    checker: Checker
    statuses: Counter
    dumps: dict[str, Any]
    calls: list[Call]
    chaos_done: float  # time.monotonic() when the chaos window (clients and driver) ended
    settled: float     # ... and when every run was terminal (or the settle bound passed)


def settle_and_check(api: Api, plans: list[Plan], agents: AgentServer, checker: Checker,
                     harness_errors: list[dict[str, Any]], settle: float) -> Outcome:
    """Wait (bounded) for every run to be terminal, then check every run against the agent calls."""
    chaos_done = time.monotonic()
    wanted = {p.run_id for p in plans if p.run_id}
    while time.monotonic() < chaos_done + settle:
        listed = {r["id"]: r["status"] for r in api.all_runs()}
        if all(listed.get(rid) in TERMINAL for rid in wanted):
            break
        time.sleep(0.25)
    settled = time.monotonic()
    with agents.lock:
        calls = list(agents.calls)
    for c in calls:
        checker.calls_by_key.setdefault(c.key or "", []).append(c)
    checker.violations.extend(harness_errors)
    statuses, dumps = _check_all(api, plans, checker, calls)
    return Outcome(checker, statuses, dumps, calls, chaos_done, settled)


def build_report(outcome: Outcome, plans: list[Plan], chaos: Chaos, seconds: float, seed: int, t0: float,
                 began: float) -> dict[str, Any]:
    checker = outcome.checker
    kinds = Counter(v["kind"] for v in checker.violations)
    restarts = sorted(chaos.restart_seconds)
    return {
        "runs": len(plans),
        "runs_started": sum(1 for p in plans if p.run_id),
        "by_workflow": dict(sorted(Counter(p.workflow for p in plans).items())),
        "by_status": dict(sorted(outcome.statuses.items())),
        "seconds": seconds,
        "seed": seed,
        "kills": chaos.kills,
        "kills_during_startup": chaos.kills_in_start,
        "nats_restarts": chaos.nats_restarts,
        "daemon_restart_p50_s": round(restarts[len(restarts) // 2], 2) if restarts else None,
        "daemon_restart_max_s": round(restarts[-1], 2) if restarts else None,
        "agent_calls": len(outcome.calls),
        "agent_attempts": checker.info["agent_attempts"],
        "re_executions_after_kill": checker.info["re_executions_after_kill"],
        "re_executions_after_nats": checker.info["re_executions_after_nats"],
        "redelivered_step_starts": checker.info["redelivered_starts"],
        "client_notes": dict(Counter(n for p in plans for n in p.notes)),
        "chaos_seconds": round(outcome.chaos_done - t0, 1),
        "settle_seconds": round(outcome.settled - outcome.chaos_done, 1),
        "total_seconds": round(time.monotonic() - began, 1),
        "violations": {k: kinds.get(k, 0) for k in VIOLATION_KINDS},
        "violations_total": len(checker.violations),
        "examples": checker.violations[:20],
        "all_violations": checker.violations,  # not printed: main() drops it from the JSON
        "dir": None,
    }


def keep_if_violations(report: dict[str, Any], outcome: Outcome, root: Path, keep: bool, own_root: bool) -> dict[str, Any]:
    """On a violation (or --keep) the working directory stays, with violations.json; else it goes."""
    if outcome.checker.violations or keep:
        (root / "violations.json").write_text(json.dumps({"violations": outcome.checker.violations, "runs": outcome.dumps},
                                                         indent=1, default=str))
        report["dir"] = str(root)
    elif own_root:
        shutil.rmtree(root, ignore_errors=True)
    return report


def table(report: dict[str, Any]) -> str:
    """The counts as a two-column text table."""
    rows: list[tuple[str, Any]] = [
        ("runs (started)", f"{report['runs']} ({report['runs_started']})"),
        ("chaos window s / settle s / total s", f"{report['chaos_seconds']} / {report['settle_seconds']} / {report['total_seconds']}"),
        ("daemon kills (kill -9) / of them during start-up", f"{report['kills']} / {report['kills_during_startup']}"),
        ("nats-server restarts", report["nats_restarts"]),
        ("daemon restart to ready p50 / max s", f"{report['daemon_restart_p50_s']} / {report['daemon_restart_max_s']}"),
        ("agent calls / step attempts calling", f"{report['agent_calls']} / {report['agent_attempts']}"),
        ("redelivered step starts", report["redelivered_step_starts"]),
        ("re-executions explained by kill / nats", f"{report['re_executions_after_kill']} / {report['re_executions_after_nats']}"),
    ]
    from benchmarks.chaos_replicas import replica_rows

    rows += replica_rows(report)
    rows += [(f"status {k}", v) for k, v in report["by_status"].items()]
    rows += [(f"violations: {k}", v) for k, v in report["violations"].items()]
    rows.append(("violations total", report["violations_total"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the chaos window")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kills", type=int, default=None, help="kill actions to schedule (default: one per 4.5 s)")
    parser.add_argument("--nats-restarts", type=int, default=None, help="nats-server restart actions (default: kill actions / 5)")
    parser.add_argument("--settle", type=float, default=120.0, help="bound on the wait for every run to finish")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--replicas", type=int, default=1,
                        help="daemons; 2 or more share one Postgres database and a NATS cluster (benchmarks/chaos_replicas.py)")
    parser.add_argument("--nats-nodes", type=int, default=3, help="NATS cluster nodes in the replica mode (1: one nats-server)")
    args = parser.parse_args(argv)
    if args.replicas > 1:
        from benchmarks.chaos_replicas import run_replica_chaos

        report = run_replica_chaos(args.runs, args.seconds, args.seed, args.replicas, args.nats_nodes, args.kills,
                                   args.nats_restarts, args.settle, keep=args.keep)
    else:
        report = run_chaos(args.runs, args.seconds, args.seed, args.kills, args.nats_restarts, args.settle, keep=args.keep)
    printed = {k: v for k, v in report.items() if k != "all_violations"}
    print(table(report))
    print(json.dumps(printed, indent=2, default=str))
    if args.json is not None:
        args.json.write_text(json.dumps(printed, indent=2, default=str))
    if report["violations_total"]:
        print(f"VIOLATIONS: {report['violations_total']}; runs, events and logs in {report['dir']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
