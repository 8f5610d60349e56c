"""A run's context stored as its blob plus patches (issue 14): every reader sees exactly the context
the whole-blob write stored, the blob is compacted when the run ends, and a kill -9 between the steps
of a run with a large context leaves a context that folds to what its events rebuild."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from station_wf.core import cow, history
from station_wf.dsl.loader import parse_definition
from station_wf.engine.runs import insert_new_run
from station_wf.engine.step_tx import StepTransactions
from station_wf.store import context_patches, definitions, dialect, run_cache, run_reads
from station_wf.store.db import apply_migrations, connect
from station_wf.store.jsontext import dumps
from station_wf.store.run_unit import load_state
from tests.conftest import Daemon, wait_until


def _stored(old: Any, new: Any) -> str:
    """`new` as blob(old) + the patch rows of diff(old, new), read back through the readers' fold."""
    rows = context_patches.rows("r", 1, context_patches.diff(old, new))
    as_selected = json.dumps([[seq, path, value] for _, seq, path, value in reversed(rows)])  # any order in
    return context_patches.fold_text(dumps(old), as_selected)


def test_patches_fold_to_the_text_the_whole_context_had() -> None:
    base = {"input": {"pad": "x" * 100}, "steps": {"a": {"output": [1, 2]}}, "n": None, "gone": {"deep": 1}}
    new = cow.set_path(base, "steps.b.output", {"k": "v"})
    new = cow.set_path(new, "steps.a.output", None)
    new = cow.set_path(new, "flag", False)
    new = {k: v for k, v in new.items() if k != "gone"}  # a key removed
    assert _stored(base, new) == dumps(new)
    assert len(context_patches.diff(base, new)) == 4  # only the changed paths, not the untouched input
    reordered = {"steps": base["steps"], "input": base["input"], "n": None, "gone": base["gone"]}
    assert _stored(base, reordered) == dumps(reordered)  # key order kept too (the dict written whole)
    assert _stored(base, {"input": 1}) == dumps({"input": 1}) and _stored(base, base) == dumps(base)
    assert _stored({"a": {"b": 1}}, {"a": {"b": None}}) == '{"a":{"b":null}}'  # null is a value, not a removal


HALF_WAY = """
id: half
start: s1
states:
  - { name: s1, type: inject, data: { a: 1 }, next: s2 }
  - { name: s2, type: inject, data: { b: 2 }, next: call }
  - name: call
    type: operation
    action: agent.run
    input: { agent: nobody, task: "t" }
    end: true
"""


def _open(tmp_path: Path, yaml_text: str) -> tuple[sqlite3.Connection, sqlite3.Row, dict]:
    conn = connect(tmp_path / "t.db")
    apply_migrations(conn)
    defn = parse_definition(yaml_text)
    conn.execute("BEGIN IMMEDIATE")
    definitions.register(conn, defn, yaml_text, source="api")
    conn.execute("COMMIT")
    return conn, definitions.latest_row(conn, defn["id"]), defn


def test_a_run_mid_way_is_read_from_its_blob_and_patches(tmp_path: Path) -> None:
    conn, row, defn = _open(tmp_path, HALF_WAY)
    conn.execute("BEGIN IMMEDIATE")
    insert_new_run(conn, row, defn, "r1", {"pad": "x" * 10_000}, None)
    conn.execute("COMMIT")
    blob_before = conn.execute("SELECT context FROM workflow_runs WHERE run_id = 'r1'").fetchone()[0]
    conn.execute("BEGIN IMMEDIATE")
    run_cache.begin_group()
    StepTransactions(definitions.DefinitionCache()).start_run(conn, "r1")  # s1, s2 inline; stops at the call
    conn.execute("COMMIT")
    run_cache.publish()
    patches = conn.execute("SELECT count(*) FROM workflow_run_context_patches WHERE run_id = 'r1'").fetchone()[0]
    blob = conn.execute("SELECT context FROM workflow_runs WHERE run_id = 'r1'").fetchone()[0]
    assert patches > 0 and blob == blob_before  # the 10 KB blob was not rewritten
    events = [(r[0], json.loads(r[1])) for r in conn.execute(
        "SELECT type, payload FROM workflow_run_events WHERE run_id = 'r1' ORDER BY seq")]
    read = context_patches.fold_row(conn.execute(run_reads._RUN[dialect.of(conn)], ("r1",)).fetchone())
    assert json.loads(read["context"]) == history.rebuild_context(events)
    assert json.loads(read["context"])["b"] == 2  # an inject writes into the root
    run_cache.clear()  # the writer's cache miss folds the same
    version = conn.execute("SELECT version FROM workflow_runs WHERE run_id = 'r1'").fetchone()[0]
    assert dumps(load_state(conn, "r1", version).context) == read["context"]
    conn.close()


def test_retention_deletes_a_runs_patches_with_it(tmp_path: Path) -> None:
    from station_wf.store.retention_rows import prune_some
    conn, row, defn = _open(tmp_path, HALF_WAY)
    conn.execute("BEGIN IMMEDIATE")
    insert_new_run(conn, row, defn, "r1", {"pad": "x" * 10_000}, None)
    StepTransactions(definitions.DefinitionCache()).start_run(conn, "r1")
    conn.execute("UPDATE workflow_runs SET status = 'CANCELLED', completed_at = '2000-01-01T00:00:00Z' WHERE run_id = 'r1'")
    conn.execute("COMMIT")
    assert conn.execute("SELECT count(*) FROM workflow_run_context_patches").fetchone()[0] > 0
    for _ in range(10):
        if prune_some(conn, "2001-01-01T00:00:00Z", 10, 1000) == (0, 0):
            break
    assert conn.execute("SELECT count(*) FROM workflow_run_context_patches").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM workflow_runs").fetchone()[0] == 0
    conn.close()


LARGE = """
id: large
start: prep
states:
  - { name: prep, type: inject, data: { n: 1 }, next: first }
  - name: first
    type: operation
    action: agent.run
    input: { agent: worker, task: "first" }
    next: mid
  - { name: mid, type: inject, data: { m: 2 }, next: second }
  - name: second
    type: operation
    action: agent.run
    input: { agent: worker, task: "second" }
    next: third
  - name: third
    type: operation
    action: agent.run
    input: { agent: slow, task: "third" }
    end: true
"""


def _patch_rows(daemon: Daemon, run_id: str) -> int:
    with sqlite3.connect(daemon.data_dir / "station-wf.db") as conn:
        return conn.execute("SELECT count(*) FROM workflow_run_context_patches WHERE run_id = ?", (run_id,)).fetchone()[0]


def _rebuilt(daemon: Daemon, run_id: str) -> dict:
    return history.rebuild_context([(e["type"], e["payload"]) for e in daemon.events(run_id)])


def test_kill9_between_steps_of_a_large_context_folds_to_its_events(daemon: Daemon) -> None:
    daemon.add_agent("slow")
    daemon.add_workflow("large", LARGE)
    hold = threading.Event()
    daemon.agent_server.behave("slow", hold=hold)
    # Decision 1 (after `first`) commits its patches; decision 2 (after `second`'s result) dies.
    daemon.start(extra_env={"STATION_FAULTS": "worker.decide:2"})
    run = daemon.start_run("large", {"pad": "y" * 300_000})
    assert daemon.proc is not None
    assert daemon.proc.wait(60) == 137, daemon.log()
    assert _patch_rows(daemon, run["id"]) > 0  # the crash left a blob and patches

    daemon.start()
    wait_until(lambda: daemon.agent_server.calls_for("slow"), timeout=60, what="the slow agent to be called")
    mid = daemon.run(run["id"])
    assert mid["status"] == "RUNNING" and _patch_rows(daemon, run["id"]) > 0
    assert mid["context"] == _rebuilt(daemon, run["id"])
    assert mid["context"]["m"] == 2 and len(mid["context"]["pad"]) == 300_000
    hold.set()
    done = daemon.wait_status(run["id"], timeout=60)
    assert done["context"] == _rebuilt(daemon, run["id"])
    assert _patch_rows(daemon, run["id"]) == 0  # compacted when the run ended
    with sqlite3.connect(daemon.data_dir / "station-wf.db") as conn:
        blob = conn.execute("SELECT context FROM workflow_runs WHERE run_id = ?", (run["id"],)).fetchone()[0]
    assert json.loads(blob) == done["context"]
