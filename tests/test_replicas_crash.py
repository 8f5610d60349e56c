"""Crash safety across replicas: daemons on one Postgres database and one NATS, one of them kill -9ed.

The replica that dies holds a step mid agent call (found from the socket the agent server saw the call
on) or the singleton lease while a timer is pending; the runs finish on the others, and no step that
had succeeded is executed again (agent calls counted per step id at the agent server).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx

from tests.conftest import AgentCall, Daemon, NatsServer, replicas, wait_until

HELD = """
id: held
start: first
states:
  - { name: first, type: operation, action: agent.run, input: { agent: worker, task: "first {{ n }}" }, resultPath: a, next: held }
  - { name: held, type: operation, action: agent.run, input: { agent: slow, task: "held {{ n }}" }, resultPath: b, next: after }
  - { name: after, type: operation, action: agent.run, input: { agent: worker, task: "after {{ n }}" }, resultPath: c, end: true }
"""


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    return inodes


def _inodes_on_local_port(port: int) -> set[str]:
    """TCP sockets whose local end is `port` (the kernel's tables: local address is field 1, inode field 9)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if int(parts[1].rsplit(":", 1)[1], 16) == port:
                    found.add(parts[9])
    return found


def caller_of(call: AgentCall, daemons: list[Daemon]) -> Daemon:
    """The replica whose process owns the socket the call arrived on (ask while the call is still open)."""
    assert call.peer_port is not None
    mine = _inodes_on_local_port(call.peer_port)
    owners = [d for d in daemons if d.proc is not None and d.proc.poll() is None and mine & _socket_inodes(d.proc.pid)]
    assert len(owners) == 1, f"call from port {call.peer_port}: owners {[d.root.name for d in owners]}"
    return owners[0]


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _assert_history_sound(daemon: Daemon, run_id: str) -> list[dict]:
    events = daemon.events(run_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    succeeded = [(e["stepId"], e["payload"]["attempt"]) for e in events if e["type"] == "step.succeeded"]
    assert len(succeeded) == len(set(succeeded)), "a step attempt succeeded twice"
    assert [e["type"] for e in events].count("run.completed") == 1
    return events


def test_kill9_of_the_replica_mid_agent_call_finishes_on_another(
        daemon_factory: Callable[..., Daemon], postgres_db: str, nats_server: NatsServer) -> None:
    hold = threading.Event()
    ds = replicas(daemon_factory, 2, postgres_db, nats_server.url, {"held": HELD})
    agents = ds[0].agent_server
    assert agents is not None
    agents.behave("slow", hold=hold)
    runs = [ds[i % 2].start_run("held", {"n": i}) for i in range(4)]
    wait_until(lambda: len(agents.calls_for("slow")) == 4, timeout=30, what="four held calls")
    holders = {c.body["runId"]: caller_of(c, ds) for c in agents.calls_for("slow")}
    by_replica = Counter(d.root.name for d in holders.values())
    victim = max(ds, key=lambda d: by_replica[d.root.name])
    survivor = next(d for d in ds if d is not victim)
    orphaned = {rid for rid, d in holders.items() if d is victim}
    assert orphaned, "the victim holds at least one call"

    victim.kill()
    hold.set()  # the survivor's calls answer; the victim's answers go nowhere
    done = {r["id"]: survivor.wait_status(r["id"], timeout=60) for r in runs}

    for run_id, run in done.items():
        steps = {s["stateName"]: s for s in run["steps"]}
        assert {s["status"] for s in steps.values()} == {"SUCCEEDED"}
        calls = Counter(c.body["stepId"] for c in agents.calls if c.body["runId"] == run_id)
        # `first` had succeeded before the kill: never called again; `after` ran once, on the survivor.
        assert calls[steps["first"]["stepId"]] == 1 and calls[steps["after"]["stepId"]] == 1, calls
        # The held step: once more only when its replica died mid-call, with the same key, still attempt 1.
        assert calls[steps["held"]["stepId"]] == (2 if run_id in orphaned else 1), (run_id in orphaned, calls)
        assert {c.idempotency_key for c in agents.calls_for("slow", steps["held"]["stepId"])} == \
            {steps["held"]["idempotencyKey"]}
        assert steps["held"]["attempt"] == 1
        events = _assert_history_sound(survivor, run_id)
        started = [e["payload"].get("redelivered") for e in events
                   if e["type"] == "step.started" and e["stepId"] == steps["held"]["stepId"]]
        assert started == ([False, True] if run_id in orphaned else [False]), started
        assert run["context"]["b"]["task"] == f"held {run['input']['n']}"
    # The survivor's view is the deployment's: the other replica's API (gone) is not needed for any answer.
    listed = survivor.request("GET", "/api/v1/workflow-runs").json()["runs"]
    assert {r["id"] for r in listed} == set(done) and {r["status"] for r in listed} == {"COMPLETED"}


NAPS = """
id: naps
start: nap
states:
  - { name: nap, type: sleep, duration: 4s, next: call }
  - name: call
    type: operation
    action: agent.run
    input: { agent: flaky, task: "after the nap" }
    retry: { maxAttempts: 2, backoffSeconds: 4 }
    resultPath: out
    end: true
"""
LEASE = "singletons"


def _lease(daemon: Daemon) -> dict | None:
    """This replica's view of the singleton lease, None while it does not answer."""
    try:
        resp = daemon.request("GET", "/api/v1/leases")
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    return next((x for x in resp.json()["leases"] if x["name"] == LEASE), None)


def _holder(ds: list[Daemon]) -> Daemon | None:
    """The live replica that says it holds the lease (exactly one, or None)."""
    live = [d for d in ds if d.proc is not None and d.proc.poll() is None]
    holding = [d for d in live if (lease := _lease(d)) is not None and lease["heldHere"]]
    assert len(holding) <= 1, f"two replicas hold the lease: {[d.root.name for d in holding]}"
    return holding[0] if holding else None


def test_kill9_of_the_lease_holder_twice_mid_timers_the_next_holder_fires_them(
        daemon_factory: Callable[..., Daemon], postgres_db: str, nats_server: NatsServer) -> None:
    """Three replicas, a short lease. The holder dies with a sleep's timer pending, then the next holder
    dies with a retry back-off timer pending: the third replica fires it, and every timer fires once."""
    ds = replicas(daemon_factory, 3, postgres_db, nats_server.url, {"naps": NAPS}, agents=("flaky",),
                  env={"STATION_LEASE_TTL_SECONDS": "2"})
    agents = ds[0].agent_server
    assert agents is not None
    agents.behave("flaky", fail_first=1)
    first = wait_until(lambda: _holder(ds), 20, what="a lease holder")
    token = _lease(first)["token"]  # type: ignore[index]

    other = next(d for d in ds if d is not first)
    run = other.start_run("naps")
    wait_until(lambda: any(e["type"] == "step.started" for e in other.events(run["id"])), 15, what="the nap")
    first.kill()  # the sleep's timer is due in ~4 s; nobody fires it until the lease is taken over
    killed_first = time.time()
    second = wait_until(lambda: _holder(ds), 15, what="the lease taken over")
    assert second is not first and _lease(second)["token"] > token  # type: ignore[index]

    wait_until(lambda: agents.calls_for("flaky"), 30, what="the first (failing) call after the nap")
    wait_until(lambda: any(e["type"] == "step.scheduled" and e["payload"]["attempt"] == 2
                           for e in second.events(run["id"])), 15, what="the retry's back-off timer")
    second.kill()  # the back-off timer is due in ~4 s
    killed_second = time.time()
    third = next(d for d in ds if d is not first and d is not second)
    wait_until(lambda: _holder(ds) is third, 15, what="the third replica to take the lease")

    done = third.wait_status(run["id"], timeout=40)
    assert done["context"]["out"]["ok"] is True
    calls = agents.calls_for("flaky")
    assert [c.body["attempt"] for c in calls] == [1, 2], "each attempt called once: each timer fired once"
    events = _assert_history_sound(third, run["id"])
    by_step = {s["stateName"]: s for s in done["steps"] if s["status"] == "SUCCEEDED"}
    nap_done = next(e for e in events if e["type"] == "step.succeeded" and e["stepId"] == by_step["nap"]["stepId"])
    retried = next(e for e in events if e["type"] == "step.started" and e["payload"]["attempt"] == 2)
    # Fired after its holder died: by the replica that took over (the dead one fired nothing).
    assert _ts(nap_done["time"]) > killed_first and _ts(retried["time"]) > killed_second
    assert [e["type"] for e in events].count("step.succeeded") == 2
    lease = _lease(third)
    assert lease is not None and lease["holder"] == third.root.name and lease["token"] >= token + 2
