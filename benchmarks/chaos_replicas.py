"""Chaos across replicas: the chaos harness's workload on several daemons sharing one Postgres database and
a NATS JetStream cluster, while random daemons are `kill -9`ed and random NATS nodes killed and restarted.

    python -m benchmarks.chaos --replicas 3 --runs 300 --seconds 120 --seed 1

Parts, all real processes on 127.0.0.1: a Postgres server (the tests' launcher, `tests/pg_server.py`) with
one database, a 3-node NATS cluster (the tests' launcher, `tests/nats_cluster.py`; R3 streams), N daemons
(`STATION_DATABASE_URL` and `STATION_NATS_URL` shared, data dirs and HTTP ports their own) and the
harness's agent server. Every client request goes to a random live replica. The driver kills one replica
(sometimes two at once, sometimes again while it recovers), or a NATS node (sometimes with a replica),
restarts what it killed, and waits for it; the other replicas serve throughout.

The checks are the single-node harness's (`benchmarks/chaos.py`), with one tightening: a succeeded step
attempt called more than once is explained only if, for every call but the last, the replica that made
it (each replica's agent URLs carry `?via=<replica>`) died or a NATS node was down meanwhile. A kill of
some other replica explains nothing.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.chaos import (
    TOLERANCE_S,
    AgentServer,
    Api,
    Call,
    Chaos,
    Checker,
    Daemon,
    Nats,
    _drive_all,
    build_report,
    keep_if_violations,
    make_plans,
    paced,
    schedule,
    settle_and_check,
)

LEASE_TTL_S = 3.0  # short, so the singleton lease changes hands inside the window (production default: 10 s)


@dataclass
class ReplicaChaos(Chaos):
    """Chaos's record, plus each replica's down windows and kill counts."""

    down_by_replica: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    kills_by_replica: Counter = field(default_factory=Counter)
    double_kills: int = 0       # kill actions that took two replicas down at once
    nats_nodes_killed: Counter = field(default_factory=Counter)
    start_failures: list[dict[str, Any]] = field(default_factory=list)  # a daemon that exited while starting


class Fleet:
    """The replicas, and which of them the clients may use (spawned and answered /readyz)."""

    def __init__(self, daemons: list[Daemon]) -> None:
        self.daemons = daemons
        self._ready: frozenset[int] = frozenset()
        self._lock = threading.Lock()

    def name(self, i: int) -> str:
        return f"r{i}"

    def ready(self) -> list[int]:
        return sorted(self._ready)

    def mark(self, i: int, ready: bool) -> None:
        with self._lock:
            self._ready = self._ready | {i} if ready else self._ready - {i}

    def alive(self, i: int) -> bool:
        proc = self.daemons[i].proc
        return proc is not None and proc.poll() is None


class ReplicaApi(Api):
    """Each request to a random ready replica. The witness of an attempt is (replica, its process count)
    when it was sent: the attempt is gone once that replica's process died, whatever the others do."""

    def __init__(self, fleet: Fleet, deadline: float) -> None:
        super().__init__(fleet.daemons[0].base, deadline)
        self.fleet = fleet

    def once(self, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response | None, bool]:
        ready = self.fleet.ready()
        if not ready:
            return None, False
        i = random.choice(ready)
        daemon = self.fleet.daemons[i]
        self._local.sent = (i, daemon.starts)
        try:
            return self.client().request(method, daemon.base + path, **kwargs), True
        except (httpx.ConnectError, httpx.ConnectTimeout):
            return None, False
        except httpx.HTTPError:
            return None, True

    def witness(self) -> Any:
        return getattr(self._local, "sent", None)

    def gone(self, witness: Any) -> bool:
        i, starts = witness
        return self.fleet.daemons[i].starts != starts or not self.fleet.alive(i)


class ReplicaChecker(Checker):
    """Duplicate calls are explained only by the death of the replica that made them (or a NATS outage)."""

    chaos: ReplicaChaos

    def _disturbed(self, start: float, end: float, calls: list[Call]) -> str | None:
        def overlaps(windows: list[tuple[float, float]], a: float) -> bool:
            return any(lo - TOLERANCE_S <= end and hi + TOLERANCE_S >= a for lo, hi in windows)

        causes = []
        for c in calls[:-1]:
            if overlaps(self.chaos.down_by_replica.get(c.via or "", []), c.at):
                causes.append("kill")
            elif overlaps(self.chaos.nats_down, c.at):
                causes.append("nats")
            else:
                return None
        return causes[0] if causes else None


class ClusterNats:
    """The tests' 3-node cluster: a disruption kills one random node -9 and restarts it (quorum stays)."""

    def __init__(self, root: Path, nodes: int) -> None:
        from tests.nats_cluster import NatsCluster

        self.cluster = NatsCluster(root, nodes)

    @property
    def url(self) -> str:
        return self.cluster.url

    def start(self) -> None:
        self.cluster.start()

    def stop(self) -> None:
        self.cluster.stop()

    def disrupt(self, rng: random.Random, down_for: tuple[float, float]) -> str:
        i = rng.randrange(len(self.cluster.nodes))
        self.cluster.kill(i)
        time.sleep(rng.uniform(*down_for))
        self.cluster.restart(i, timeout=60)
        return self.cluster.nodes[i].name


class SingleNats:
    """One nats-server (`--nats-nodes 1`): a disruption restarts it, as in the single-node harness."""

    def __init__(self, root: Path) -> None:
        self.nats = Nats(root / "n0")

    @property
    def url(self) -> str:
        return self.nats.url

    def start(self) -> None:
        self.nats.start()

    def stop(self) -> None:
        self.nats.stop()

    def disrupt(self, rng: random.Random, down_for: tuple[float, float]) -> str:
        self.nats.stop()
        time.sleep(rng.uniform(*down_for))
        self.nats.start()
        return "n0"


def _disrupt_nats(nats: ClusterNats | SingleNats, rng: random.Random, chaos: ReplicaChaos, down_for: tuple[float, float]) -> None:
    began = time.time()
    chaos.nats_nodes_killed[nats.disrupt(rng, down_for)] += 1
    chaos.nats_restarts += 1
    chaos.nats_down.append((began, time.time()))


def run_replica_driver(fleet: Fleet, nats: ClusterNats | SingleNats, plan: list[tuple[float, str]], t0: float,
                       seconds: float, rng: random.Random, min_gap: float, chaos: ReplicaChaos) -> None:
    """The schedule's actions on replicas: `kill` takes one random replica down (a quarter of the time two,
    when three or more run), `kill-in-start` kills its fresh process again mid-recovery, `nats-live`
    disrupts NATS under running replicas, `nats-with-kill` while one is down. Paced like `run_driver`."""
    n = len(fleet.daemons)
    for action in paced(plan, t0, seconds, min_gap):
        if action == "nats-live":
            _disrupt_nats(nats, rng, chaos, (0.5, 3.0))
            continue
        victims = rng.sample(range(n), 2 if n >= 3 and rng.random() < 0.25 else 1)
        chaos.double_kills += len(victims) > 1
        down = time.time()
        for i in victims:
            fleet.mark(i, False)
            fleet.daemons[i].kill()
            chaos.kills += 1
            chaos.kills_by_replica[fleet.name(i)] += 1
        time.sleep(rng.uniform(0, 0.5))
        if action == "nats-with-kill":
            _disrupt_nats(nats, rng, chaos, (0.2, 2.0))
        if action == "kill-in-start":
            first = fleet.daemons[victims[0]]
            first.spawn()
            time.sleep(rng.uniform(0.3, 3.0))  # mid-recovery: imports, migrations lock, consumer bind ...
            first.kill()
            chaos.kills += 1
            chaos.kills_in_start += 1
            chaos.kills_by_replica[fleet.name(victims[0])] += 1
        for i in victims:
            fleet.daemons[i].spawn()
        for i in victims:
            chaos.restart_seconds.append(_ready(fleet.daemons[i], fleet.name(i), chaos))
            fleet.mark(i, True)
            chaos.down_by_replica.setdefault(fleet.name(i), []).append((down, time.time()))
        chaos.daemon_down.append((down, time.time()))


def _ready(daemon: Daemon, name: str, chaos: ReplicaChaos, tries: int = 5) -> float:
    """Wait for /readyz; a daemon that exits on its own while starting (e.g. a JetStream API timeout while
    the cluster elects a leader) is recorded as a start failure and spawned again, up to `tries` times.
    Returns the seconds from the first spawn to ready."""
    began = daemon.spawned
    for attempt in range(tries):
        try:
            daemon.wait_ready()
            return time.monotonic() - began
        except RuntimeError:
            if daemon.proc is None or daemon.proc.poll() is None or attempt == tries - 1:
                raise  # not ready in time, or exits every time: the harness cannot go on
            log_path = daemon.root / f"daemon-{daemon.starts:03d}.log"
            lines = log_path.read_text(errors="replace").strip().splitlines() if log_path.exists() else []
            chaos.start_failures.append({"replica": name, "exitCode": daemon.proc.returncode, "at": time.time(),
                                         "error": lines[-1][:300] if lines else "", "log": str(log_path)})
            daemon.spawn()
    raise AssertionError("unreachable")


def _stop_all(daemons: list[Daemon]) -> None:
    """SIGTERM every replica at once (each may take its grace period)."""
    threads = [threading.Thread(target=d.stop) for d in daemons]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def run_replica_chaos(runs: int = 300, seconds: float = 120.0, seed: int = 1, replicas: int = 3, nats_nodes: int = 3,
                      kills: int | None = None, nats_restarts: int | None = None, settle: float = 120.0,
                      min_gap: float = 1.0, root: Path | None = None, keep: bool = False,
                      log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Run the replica scenario; the report is the single-node one plus the replica counts."""
    from tests import pg_server

    assert replicas >= 2, "one replica is the single-node harness"
    rng = random.Random(seed)
    kills = kills if kills is not None else max(1, int(seconds / 4.5))
    nats_restarts = nats_restarts if nats_restarts is not None else max(1, kills // 4)
    own_root = root is None
    root = Path(tempfile.mkdtemp(prefix="station-wf-chaos-replicas-")) if root is None else root
    root.mkdir(parents=True, exist_ok=True)
    agents = AgentServer(seed)
    nats: ClusterNats | SingleNats = ClusterNats(root / "nats", nats_nodes) if nats_nodes > 1 else SingleNats(root / "nats")
    plans = make_plans(runs, seconds, rng, f"r{seed}")
    chaos = ReplicaChaos()
    began = time.monotonic()
    pg = pg_server.start_server()
    daemons: list[Daemon] = []
    agents.start()
    try:
        database = pg.create_database("chaos")
        nats.start()
        for i in range(replicas):
            d = Daemon(root / f"r{i}", nats.url, agents, via=f"r{i}")
            d.env["STATION_DATABASE_URL"] = database
            d.env["STATION_LEASE_TTL_SECONDS"] = str(LEASE_TTL_S)
            d.env["STATION_REPLICA_ID"] = f"r{i}"
            if nats_nodes > 1:
                d.env["STATION_NATS_REPLICAS"] = str(min(nats_nodes, 3))  # R3 streams: a node may die
            daemons.append(d)
        fleet = Fleet(daemons)
        for d in daemons:
            d.spawn()
        for i, d in enumerate(daemons):
            _ready(d, fleet.name(i), chaos)
            fleet.mark(i, True)
        log(f"chaos: {replicas} replicas, {nats_nodes} NATS nodes, Postgres; {runs} runs, {seconds:.0f} s, seed {seed}, "
            f"up to {kills} kill and {nats_restarts} nats actions; dir {root}")
        t0 = time.monotonic()
        api = ReplicaApi(fleet, t0 + seconds + max(10.0, seconds / 2) + settle)
        harness_errors = _drive_all(plans, api, t0, seed, lambda: run_replica_driver(
            fleet, nats, schedule(seconds, kills, nats_restarts, rng), t0, seconds, rng, min_gap, chaos))
        outcome = settle_and_check(api, plans, agents, ReplicaChecker(chaos, {}), harness_errors, settle)
        by_replica = Counter(c.via for c in outcome.calls)
        lease = next((x for x in api.call("GET", "/api/v1/leases").json()["leases"] if x["name"] == "singletons"), {})
        api.close()
    finally:
        _stop_all(daemons)
        nats.stop()
        agents.stop()
        pg.stop()
        shutil.rmtree(pg.root, ignore_errors=True)
    report = build_report(outcome, plans, chaos, seconds, seed, t0, began)
    report.update({
        "replicas": replicas,
        "nats_nodes": nats_nodes,
        "kills_by_replica": dict(sorted(chaos.kills_by_replica.items())),
        "double_kills": chaos.double_kills,
        "nats_nodes_killed": dict(sorted(chaos.nats_nodes_killed.items())),
        "agent_calls_by_replica": dict(sorted((k or "?", v) for k, v in by_replica.items())),
        "lease_tokens": lease.get("token"),  # the singleton lease changed hands this many times, less one
        "lease_holder_at_end": lease.get("holder"),
        "start_failures": chaos.start_failures,  # not an invariant: the daemon gave up starting; respawned
    })
    return keep_if_violations(report, outcome, root, keep, own_root)


def replica_rows(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """The replica mode's extra table rows."""
    if "replicas" not in report:
        return []
    return [
        ("replicas / NATS nodes", f"{report['replicas']} / {report['nats_nodes']}"),
        ("kills by replica / of them two at once", f"{report['kills_by_replica']} / {report['double_kills']}"),
        ("NATS node kills by node", report["nats_nodes_killed"]),
        ("agent calls by replica", report["agent_calls_by_replica"]),
        ("singleton lease tokens issued / holder at the end", f"{report['lease_tokens']} / {report['lease_holder_at_end']}"),
        ("daemons that exited while starting (respawned)", len(report["start_failures"])),
    ]
