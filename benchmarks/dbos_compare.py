"""Side by side with DBOS Transact: the same 10-step no-op workflow, run by DBOS on SQLite.

    python -m benchmarks.dbos_compare --runs 200 --concurrency 50

Needs the `bench` extra (`pip install -e .[bench]`, which brings in the `dbos` package). DBOS runs
in this process, fully offline: its system database is a SQLite file in a temporary directory that
is removed afterwards; no Conductor, no OTLP export (both are off unless configured, and the
environment variables that would switch them on are dropped before `dbos` is imported).

Two modes, each measured `--repeats` times (median reported), each repetition lasting at least
`--seconds` and at least `--runs` workflows, after a short warm-up:
- sequential: one workflow at a time, each started when the last returned;
- concurrent: `--concurrency` workflows kept in flight (a new one starts as soon as one ends).

Styles (`--style`): `async` (`async def` workflow and steps, one event loop, C tasks; DBOS does its
SQLite work in its own thread pool), `threads` (plain `def` workflow and steps, C threads each
calling the workflow), or `both` (the default): both are idiomatic DBOS, and the top-level
`sequential` and `concurrent` entries are each the faster style for that mode (named in `style`),
with every style's numbers under `styles`.

Durability (`--journal`): station-wf runs SQLite in WAL mode with synchronous=FULL. DBOS's SQLite
engine sets neither, so by default it runs in SQLite's rollback-journal mode (DELETE) with the
library default synchronous=FULL (more fsyncs per commit than WAL). `--journal wal` (the default
here, for a like-for-like comparison) switches the file to WAL before DBOS opens it (journal_mode
is persistent in the file) and leaves synchronous at FULL; `--journal delete` measures DBOS as it
ships.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
from typing import Any

STEPS = 10
WARMUP_RUNS = 20

# Environment variables that would make DBOS reach the network (DBOS Cloud / Conductor / OTLP).
_NETWORK_ENV = (
    "DBOS__CLOUD",
    "DBOS__CONDUCTOR_KEY",
    "DBOS__CONDUCTOR_URL",
    "DBOS__CONDUCTOR_APP_NAME",
    "DBOS__OTLP_TRACES_ENDPOINT",
    "DBOS__OTLP_LOGS_ENDPOINT",
    "DBOS_DOMAIN",
)

_registered: dict[str, Any] | None = None


def _dbos() -> dict[str, Any]:
    """Import dbos (offline) and register the benchmark workflows once per process."""
    global _registered
    if _registered is not None:
        return _registered
    for name in _NETWORK_ENV:
        os.environ.pop(name, None)  # GlobalParams.dbos_cloud is read at import time
    import dbos
    from dbos import DBOS

    @DBOS.step()
    def noop_step() -> None:
        return None

    @DBOS.workflow()
    def noop_workflow() -> int:
        for _ in range(STEPS):
            noop_step()
        return STEPS

    @DBOS.step()
    async def noop_step_async() -> None:
        return None

    @DBOS.workflow()
    async def noop_workflow_async() -> int:
        for _ in range(STEPS):
            await noop_step_async()
        return STEPS

    from importlib.metadata import version

    _registered = {
        "DBOS": DBOS,
        "module": dbos,
        "version": version("dbos"),
        "threads": noop_workflow,
        "async": noop_workflow_async,
    }
    return _registered


def _prepare_db(path: str, journal: str) -> None:
    conn = sqlite3.connect(path)
    try:
        mode = conn.execute(f"PRAGMA journal_mode={journal}").fetchone()[0]
        if mode.lower() != journal:
            raise RuntimeError(f"could not set journal_mode={journal} (got {mode})")
    finally:
        conn.close()


def _db_facts(path: str) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        sync = conn.execute("PRAGMA synchronous").fetchone()[0]
        return {
            "sqlite_version": sqlite3.sqlite_version,
            "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0],
            # A fresh connection's default; DBOS's SQLAlchemy/pysqlite connections use the same
            # library and never set it.
            "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(sync, sync),
        }
    finally:
        conn.close()


# ---- drivers: each returns (completed runs, wall seconds); _timed adds process CPU seconds ------


def _timed(fn: Any, *args: Any) -> tuple[int, float, float]:
    cpu = time.process_time()
    done, wall = fn(*args)
    return done, wall, time.process_time() - cpu


async def _timed_async(fn: Any, *args: Any) -> tuple[int, float, float]:
    cpu = time.process_time()
    done, wall = await fn(*args)
    return done, wall, time.process_time() - cpu


def _seq_threads(wf: Any, runs: int, seconds: float) -> tuple[int, float]:
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while done < runs or time.perf_counter() < deadline:
        assert wf() == STEPS
        done += 1
    return done, time.perf_counter() - start


def _conc_threads(wf: Any, runs: int, seconds: float, concurrency: int) -> tuple[int, float]:
    lock = threading.Lock()
    state = {"started": 0, "done": 0}
    errors: list[BaseException] = []
    start = time.perf_counter()
    deadline = start + seconds

    def worker() -> None:
        try:
            while True:
                with lock:
                    if state["started"] >= runs and time.perf_counter() >= deadline:
                        return
                    state["started"] += 1
                assert wf() == STEPS
                with lock:
                    state["done"] += 1
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, name=f"bench-{i}") for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return state["done"], time.perf_counter() - start


async def _seq_async(wf: Any, runs: int, seconds: float) -> tuple[int, float]:
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while done < runs or time.perf_counter() < deadline:
        assert await wf() == STEPS
        done += 1
    return done, time.perf_counter() - start


async def _conc_async(wf: Any, runs: int, seconds: float, concurrency: int) -> tuple[int, float]:
    state = {"started": 0, "done": 0}
    start = time.perf_counter()
    deadline = start + seconds

    async def worker() -> None:
        while not (state["started"] >= runs and time.perf_counter() >= deadline):
            state["started"] += 1
            assert await wf() == STEPS
            state["done"] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return state["done"], time.perf_counter() - start


def _summary(samples: list[tuple[int, float, float]]) -> dict[str, Any]:
    runs_per_s = [n / wall for n, wall, _ in samples]
    med = statistics.median(runs_per_s)
    return {
        "runs_per_s": round(med, 1),
        "steps_per_s": round(med * STEPS, 1),
        # Process CPU (all threads) per run: less sensitive to a noisy shared machine than wall rates.
        "cpu_ms_per_run": round(statistics.median(cpu / n * 1000 for n, _, cpu in samples), 2),
        "repetitions": [
            {
                "runs": n,
                "seconds": round(wall, 2),
                "runs_per_s": round(n / wall, 1),
                "cpu_seconds": round(cpu, 2),
            }
            for n, wall, cpu in samples
        ],
    }


def _measure_style(
    reg: dict[str, Any], style: str, runs: int, concurrency: int, seconds: float, repeats: int
) -> dict[str, Any]:
    DBOS = reg["DBOS"]
    wf = reg[style]
    seq: list[tuple[int, float, float]] = []
    conc: list[tuple[int, float, float]] = []
    if style == "threads":
        _seq_threads(wf, WARMUP_RUNS, 0)
        _conc_threads(wf, WARMUP_RUNS, 0, concurrency)
        for _ in range(repeats):
            seq.append(_timed(_seq_threads, wf, runs, seconds))
            conc.append(_timed(_conc_threads, wf, runs, seconds, concurrency))
    else:

        async def go() -> None:
            await _seq_async(wf, WARMUP_RUNS, 0)
            await _conc_async(wf, WARMUP_RUNS, 0, concurrency)
            for _ in range(repeats):
                seq.append(await _timed_async(_seq_async, wf, runs, seconds))
                conc.append(await _timed_async(_conc_async, wf, runs, seconds, concurrency))

        asyncio.run(go())
    # Sanity: the last workflow really recorded STEPS steps in the system database.
    last = DBOS.list_workflows(limit=1, sort_desc=True)[0]
    recorded = len(DBOS.list_workflow_steps(last.workflow_id))
    if recorded != STEPS:
        raise RuntimeError(f"expected {STEPS} recorded steps, found {recorded}")
    return {"sequential": _summary(seq), "concurrent": _summary(conc)}


def measure_dbos(
    runs: int,
    concurrency: int,
    *,
    seconds: float = 10.0,
    repeats: int = 3,
    style: str = "both",
    journal: str = "wal",
) -> dict[str, Any]:
    """Run the 10-step no-op workflow in DBOS on a temporary SQLite file; return the numbers.

    Each of `repeats` repetitions of each mode lasts at least `seconds` and `runs` workflows;
    rates are medians over repetitions. `style` is "async", "threads" or "both"; `journal` is
    "wal" (like station-wf) or "delete" (DBOS's own SQLite default).
    """
    if journal not in ("wal", "delete"):
        raise ValueError("journal must be 'wal' or 'delete'")
    styles = ["async", "threads"] if style == "both" else [style]
    for s in styles:
        if s not in ("async", "threads"):
            raise ValueError("style must be 'async', 'threads' or 'both'")
    reg = _dbos()
    DBOS = reg["DBOS"]
    tmp = tempfile.mkdtemp(prefix="station-wf-dbos-bench-")
    db_path = os.path.join(tmp, "dbos_sys.sqlite")
    try:
        _prepare_db(db_path, journal)
        config = {
            "name": "station-wf-dbos-bench",
            "system_database_url": f"sqlite:///{db_path}",
            "log_level": "WARNING",
            "enable_otlp": False,
        }
        DBOS(config=config)  # type: ignore[arg-type]
        DBOS.launch()
        by_style = {s: _measure_style(reg, s, runs, concurrency, seconds, repeats) for s in styles}
        facts = _db_facts(db_path)
    finally:
        DBOS.destroy()  # a no-op when DBOS(...) itself failed
        shutil.rmtree(tmp, ignore_errors=True)
    result: dict[str, Any] = {
        "engine": "dbos",
        "dbos_version": reg["version"],
        **facts,
        "steps_per_run": STEPS,
        "concurrency": concurrency,
        "min_runs": runs,
        "min_seconds_per_repetition": seconds,
        "repeats": repeats,
        "style": style,
    }
    for mode in ("sequential", "concurrent"):
        best = max(styles, key=lambda st: by_style[st][mode]["runs_per_s"])
        result[mode] = {"style": best, **by_style[best][mode]}
    result["styles"] = by_style
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="minimum workflows per repetition")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0, help="minimum seconds per repetition")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--style", choices=["async", "threads", "both"], default="both")
    parser.add_argument("--journal", choices=["wal", "delete"], default="wal")
    args = parser.parse_args()
    print(
        json.dumps(
            measure_dbos(
                args.runs,
                args.concurrency,
                seconds=args.seconds,
                repeats=args.repeats,
                style=args.style,
                journal=args.journal,
            ),
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
