"""Replicas: the 10-inject-step throughput on (a) one daemon on SQLite, (b) one daemon on Postgres and (c) two
daemons on the same Postgres database with the load spread over both, measured in one invocation.

Every leg has its own nats-server (external to its daemons, so the legs are shaped alike) and the legs
take turns, repetition by repetition, so they see the same machine. Postgres is the tests' launcher
(`tests/pg_server.py`, initdb + pg_ctl on a temp dir), restarted durable (fsync and synchronous_commit
on, as SQLite's synchronous=FULL), one server per Postgres leg. Rates come from each leg's own rows;
CPU per step is given for every daemon, each nats-server, Postgres (the postmaster with every backend,
live or ended) and the load clients. On 2 cores every one of those processes competes for the same two
cores: a second replica adds demand, not capacity, and the output says so.

    python -m benchmarks.replicas [--runs 2000] [--repeats 3] [--profile-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.drive import DONE, finish, loadgen, medians, ts
from benchmarks.harness import BenchDaemon
from benchmarks.procstat import TICK, cpu_seconds
from benchmarks.throughput import WARMUP_RUNS, noop_workflow
from station_wf.bus.nats_server import EmbeddedNats

LEGS = ("sqlite_1", "postgres_1", "postgres_2")
THREADS = 16  # load client threads in all, split over a leg's daemons
BOUND = ("2 cores shared by every process measured here (daemons, Postgres, nats-servers, load clients): "
         "a second replica on the same machine adds CPU demand, not capacity; on separate machines each "
         "replica brings its own cores, and the single Postgres writer lock then bounds the deployment")
DURABLE = "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"


# -- Postgres: the tests' launcher, made durable -----------------------------------------------------------
def start_postgres() -> Any:
    """The tests' server (tests/pg_server.py), restarted with fsync on: the bench compares durable stores."""
    from tests import pg_server

    try:
        server = pg_server.start_server()
    except BaseException as exc:  # pytest.fail raises an OutcomeException (a BaseException)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise RuntimeError(f"no Postgres server for the bench: {exc}") from None
    opts = (f"-p {server.port} -k {server.root} -c listen_addresses=127.0.0.1 -c max_connections=300 {DURABLE}")
    server._run("pg_ctl", "-D", str(server.data), "-l", str(server.log_path), "-o", opts, "-w", "-t", "60", "restart")
    return server


def postgres_settings(url: str) -> dict[str, str]:
    """What the server really runs with (the output shows it: a bench on fsync=off would flatter Postgres)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return {name: conn.execute(f"SHOW {name}").fetchone()[0]
                for name in ("server_version", "fsync", "synchronous_commit", "full_page_writes", "shared_buffers")}


def postmaster_pid(server: Any) -> int:
    return int((server.data / "postmaster.pid").read_text().split()[0])


def tree_cpu_seconds(pid: int) -> float:
    """A postmaster's CPU with its children's: the live ones' utime+stime plus cutime+cstime of the reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    total = sum(int(f) for f in fields[11:15]) / TICK  # utime, stime, cutime, cstime
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    total += cpu_seconds(int(entry.name))
    return total


# -- a leg's rows, from SQLite or Postgres ----------------------------------------------------------------
class Rows:
    """The few reads a measurement needs, in SQL both stores run (`?` placeholders, translated for psycopg)."""

    def __init__(self, sqlite_path: str | None = None, url: str | None = None) -> None:
        self.sqlite_path, self.url = sqlite_path, url

    def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.url:
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as conn:
                return [tuple(r) for r in conn.execute(sql.replace("?", "%s"), params).fetchall()]
        conn = sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def last_run_id(self) -> int:
        return int(self.all("SELECT COALESCE(MAX(id), 0) FROM workflow_runs")[0][0])

    def done(self, after: int) -> int:
        marks = ",".join("?" * len(DONE))
        return int(self.all(f"SELECT COUNT(*) FROM workflow_runs WHERE id > ? AND status IN ({marks})",
                            (after, *DONE))[0][0])

    def summary(self, after: int) -> dict[str, Any]:
        statuses = {s: int(n) for s, n in self.all(
            "SELECT status, COUNT(*) FROM workflow_runs WHERE id > ? GROUP BY status", (after,))}
        first, last = self.all("SELECT MIN(created_at), MAX(COALESCE(completed_at, updated_at)) FROM workflow_runs"
                               " WHERE id > ?", (after,))[0]
        steps = int(self.all("SELECT COUNT(*) FROM workflow_run_events e JOIN workflow_runs r ON e.run_id = r.run_id"
                             " WHERE r.id > ? AND e.type = 'step.succeeded'", (after,))[0][0])
        return {"statuses": statuses, "steps": steps, "span_s": (ts(last) - ts(first)) if first and last else 0.0}


# -- a leg: its nats-server, its daemons, its store -------------------------------------------------------
@dataclass
class Leg:
    name: str
    nats: EmbeddedNats
    daemons: list[BenchDaemon]
    rows: Rows
    postgres_pid: int | None = None
    reps: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)

    def measure(self, runs: int, timeout: float = 900) -> dict[str, Any]:
        """`runs` runs split over the daemons (one load client each); the window's rate and CPU per step."""
        after = self.rows.last_run_id()
        pids = {f"daemon_{i + 1}": d.pid for i, d in enumerate(self.daemons)}
        assert self.nats.proc is not None
        pids["nats"] = self.nats.proc.pid
        before = {n: cpu_seconds(p) for n, p in pids.items()}
        pg_before = tree_cpu_seconds(self.postgres_pid) if self.postgres_pid else 0.0
        started = time.monotonic()
        shares = [runs // len(self.daemons) + (i < runs % len(self.daemons)) for i in range(len(self.daemons))]
        procs = [loadgen(d, "bench", n, threads=THREADS // len(self.daemons)) for d, n in zip(self.daemons, shares, strict=True)]
        got = [finish(p, timeout) for p in procs]
        created = sum(g["created"] for g in got)
        deadline = started + timeout
        while self.rows.done(after) < created and time.monotonic() < deadline:
            time.sleep(0.1)
        cpu = {n: cpu_seconds(p) - before[n] for n, p in pids.items()}
        if self.postgres_pid:
            cpu["postgres"] = tree_cpu_seconds(self.postgres_pid) - pg_before
        cpu["client"] = sum(g["client_cpu_s"] for g in got)
        rows = self.rows.summary(after)
        steps = rows["steps"] or 1
        rep: dict[str, Any] = {
            "runs": created, "statuses": rows["statuses"], "steps": rows["steps"], "db_span_s": round(rows["span_s"], 2),
            "steps_per_s": round(rows["steps"] / rows["span_s"], 1) if rows["span_s"] else None,
            "all_completed": set(rows["statuses"]) == {"COMPLETED"} and sum(rows["statuses"].values()) == created,
            "first_error": next((g["first_error"] for g in got if g["first_error"]), None),
        }
        daemons_cpu = sum(v for n, v in cpu.items() if n.startswith("daemon_"))
        rep["daemon_cpu_ms_per_step"] = round(daemons_cpu * 1000 / steps, 3)  # all the leg's daemons together
        for name, spent in cpu.items():
            rep[f"{name}_cpu_ms_per_step"] = round(spent * 1000 / steps, 3)
        rep["total_cpu_ms_per_step"] = round(sum(cpu.values()) * 1000 / steps, 3)
        return rep


def start_nats(root: Path) -> EmbeddedNats:
    server = EmbeddedNats(root, auth=False)  # an external server without auth, as in the compose file
    asyncio.run(server.start())
    return server


def start_leg(name: str, root: Path, replicas: int, database_url: str | None, postgres_pid: int | None) -> Leg:
    nats = start_nats(root / f"nats-{name}")
    env = {"STATION_NATS_EMBEDDED": "false", "STATION_NATS_URL": nats.public_url}
    if database_url:
        env["STATION_DATABASE_URL"] = database_url
    daemons: list[BenchDaemon] = []
    try:
        for i in range(replicas):
            daemon = BenchDaemon(env)
            daemon.add_workflow("bench", noop_workflow(10, agent=False))
            if i == 0:
                daemon.start()  # with the demo agent (unused by inject steps; kept for the harness's shape)
            else:
                daemon.start_daemon_only()
            daemons.append(daemon)
    except BaseException:
        for d in daemons:
            d.stop()
        asyncio.run(nats.stop())
        raise
    rows = Rows(url=database_url) if database_url else Rows(sqlite_path=daemons[0].db)
    return Leg(name, nats, daemons, rows, postgres_pid)


def stop_leg(leg: Leg) -> None:
    for d in leg.daemons:
        d.stop()
    asyncio.run(leg.nats.stop())


@contextlib.contextmanager
def legs(root: Path) -> Iterator[dict[str, Leg]]:
    """The three legs, started together (idle ones cost little), stopped at the end. Each Postgres leg has
    its own server, so the CPU measured as Postgres's is that leg's alone."""
    servers: list[Any] = []
    started: dict[str, Leg] = {}
    try:
        started["sqlite_1"] = start_leg("sqlite_1", root, 1, None, None)
        for name, replicas in (("postgres_1", 1), ("postgres_2", 2)):
            servers.append(start_postgres())
            url = servers[-1].create_database("bench")
            started[name] = start_leg(name, root, replicas, url, postmaster_pid(servers[-1]))
            started[name].settings = postgres_settings(url)
        yield started
    finally:
        for leg in started.values():
            with contextlib.suppress(Exception):
                stop_leg(leg)
        for server in servers:
            server.stop()
            shutil.rmtree(server.root, ignore_errors=True)


KEYS = ("steps_per_s", "daemon_cpu_ms_per_step", "daemon_1_cpu_ms_per_step", "daemon_2_cpu_ms_per_step",
        "postgres_cpu_ms_per_step", "nats_cpu_ms_per_step", "client_cpu_ms_per_step", "total_cpu_ms_per_step",
        "db_span_s")


def profile(leg: Leg, profile_dir: str) -> subprocess.Popen:
    """py-spy (the bench extra) on the leg's first daemon: raw stacks, active threads only."""
    out = Path(profile_dir) / f"replicas-{leg.name}.txt"
    return subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(leg.daemons[0].pid),
                             "-o", str(out), "-f", "raw", "-r", "100"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_spies(spies: list[subprocess.Popen]) -> None:
    """SIGINT makes py-spy write its file; each only once."""
    for spy in spies:
        if spy.poll() is None:
            spy.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(60)


def run(runs: int = 2000, repeats: int = 3, profile_dir: str | None = None) -> dict[str, Any]:
    """Warm every leg up, then `repeats` rounds in which each leg takes its turn; medians per leg.
    `profile_dir`: a py-spy raw profile of each leg's first daemon over the measured rounds."""
    root = Path(tempfile.mkdtemp(prefix="station-wf-replicas-"))
    load = os.getloadavg()
    spies: list[subprocess.Popen] = []
    try:
        with legs(root) as started:
            for leg in started.values():
                leg.measure(WARMUP_RUNS)
            if profile_dir:
                spies = [profile(leg, profile_dir) for leg in started.values()]
                time.sleep(1)
            for _ in range(repeats):
                for leg in started.values():
                    leg.reps.append(leg.measure(runs))
            stop_spies(spies)
            result: dict[str, Any] = {"scenario": "replicas", "runs": runs, "steps_per_run": 10, "repeats": repeats,
                                      "cpus": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in load],
                                      "bound": BOUND}
            for name, leg in started.items():
                result[name] = {"daemons": len(leg.daemons), **medians(leg.reps, KEYS)}
                if leg.settings:
                    result[name]["postgres"] = leg.settings
                bad = [r for r in leg.reps if not r["all_completed"]]
                if bad:
                    result[name]["incomplete"] = [{"statuses": r["statuses"], "error": r["first_error"]} for r in bad]
    finally:
        stop_spies(spies)
        shutil.rmtree(root, ignore_errors=True)
    one, two, lite = (result.get(k, {}).get("steps_per_s") for k in ("postgres_1", "postgres_2", "sqlite_1"))
    if one and two:
        result["ratio_2_to_1_replicas"] = round(two / one, 2)
    if one and lite:
        result["ratio_postgres_to_sqlite"] = round(one / lite, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replicas")
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile-dir", help="py-spy raw profiles of each leg's first daemon go here (bench extra)")
    args = parser.parse_args()
    if args.profile_dir:
        Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
    print(json.dumps(run(args.runs, args.repeats, args.profile_dir), indent=2))


if __name__ == "__main__":
    main()
