"""The writer's hot path (issue 14): one unit of work per run and transaction, decoded run state
cached by (run, version) and never ahead of the database, and an interpreter that never writes into
the state it is handed (the cache hands the same objects to the next transition)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from benchmarks.throughput import noop_workflow
from station_wf.core import cow, history, model
from station_wf.core.limits import LIMITS
from station_wf.dsl.loader import parse_definition
from station_wf.engine.runs import insert_new_run
from station_wf.engine.step_tx import StepTransactions
from station_wf.expr.paths import PathError, set_path
from station_wf.store import definitions, run_cache
from station_wf.store.db import Writer, apply_migrations, connect
from tests.test_interpreter import FOREACH, PARALLEL, Replay


class FrozenCheck(Replay):
    """A Replay that checks, before applying each transition, that the state handed to the
    interpreter for it is unchanged (as JSON) since it was handed over."""

    def state(self) -> model.RunState:
        s = super().state()
        self.handed = (s.context, s.engine, json.dumps([s.context, s.engine], sort_keys=True))
        return s

    def apply(self, t: model.Transition) -> None:
        context, engine, text = self.handed
        assert json.dumps([context, engine], sort_keys=True) == text, "the interpreter wrote into its input"
        super().apply(t)


def test_the_interpreter_never_writes_into_the_state_it_is_handed() -> None:
    services = [{"name": f"s{i}", "tags": {"k": i}} for i in range(4)]
    r = FrozenCheck(parse_definition(FOREACH.replace("{conc}", "2")), {"services": services},
                    execute=lambda name, inp, attempt: {"task": inp["task"], "nested": {"a": [1, 2]}}).run()
    assert r.status == model.COMPLETED and len(r.context["steps"]["results"]) == 4
    p = FrozenCheck(parse_definition(PARALLEL), {}, execute=lambda name, inp, attempt: {"ok": True}).run()
    assert p.status == model.COMPLETED
    assert p.context["steps"]["diagnostics"]["pods"] == {"result": {"ok": True}, "verdict": "good"}


@pytest.mark.parametrize("path, value", [("a.b.c", 1), ("a.list.1", "x"), ("a.list.2", "appended"), ("", {"z": 1}),
                                          ("new.deep.key", [1]), ("a.b", {"replaced": True})])
def test_copy_on_write_set_path_matches_writing_into_a_deep_copy(path: str, value: Any) -> None:
    root = {"a": {"b": {"c": 0, "d": 2}, "list": [0, 1]}, "other": {"x": 1}}
    before = json.dumps(root, sort_keys=True)
    expected = json.loads(before)
    set_path(expected, path, value)
    out = cow.set_path(root, path, value)
    assert out == expected
    assert json.dumps(root, sort_keys=True) == before  # the input is untouched
    assert out["other"] is root["other"]  # what the write did not pass through is shared


def test_copy_on_write_set_path_refuses_what_set_path_refuses() -> None:
    root = {"a": {"s": "text"}}
    with pytest.raises(PathError):
        cow.set_path(root, "a.s.x", 1)
    with pytest.raises(PathError):
        cow.set_path(root, "", {"steps": 1})
    assert root == {"a": {"s": "text"}}


def _database(tmp_path: Path, steps: int = 10) -> tuple[sqlite3.Connection, sqlite3.Row, dict[str, Any]]:
    conn = connect(tmp_path / "db.sqlite")
    apply_migrations(conn)
    raw = noop_workflow(steps, False)
    defn = parse_definition(raw)
    conn.execute("BEGIN IMMEDIATE")
    definitions.register(conn, defn, raw, source="api")
    conn.execute("COMMIT")
    return conn, definitions.latest_row(conn, defn["id"]), defn


def test_an_inline_chain_is_one_unit_of_work(tmp_path: Path) -> None:
    """Ten inject steps decided in one transaction: one read of the run, no MAX(attempt) query, one
    UPDATE of the run row, gap-free seqs, and the context its events rebuild."""
    conn, row, defn = _database(tmp_path)
    conn.execute("BEGIN IMMEDIATE")
    insert_new_run(conn, row, defn, "r1", {"x": 1}, None)
    conn.execute("COMMIT")
    statements: list[str] = []
    conn.execute("BEGIN IMMEDIATE")
    run_cache.begin_group()  # as the writer does around a group
    conn.set_trace_callback(statements.append)
    StepTransactions(definitions.DefinitionCache()).start_run(conn, "r1")
    conn.set_trace_callback(None)
    conn.execute("COMMIT")
    run_cache.publish()
    run_updates = [s for s in statements if s.startswith("UPDATE workflow_runs")]
    assert len(run_updates) == 1, run_updates
    assert not [s for s in statements if "MAX(attempt)" in s]
    assert not [s for s in statements if s.startswith("UPDATE workflow_run_steps")]  # inserted closed
    assert len([s for s in statements if s.startswith("SELECT context")]) == 1
    run = conn.execute("SELECT status, event_seq, step_count, version, context FROM workflow_runs WHERE run_id = 'r1'").fetchone()
    assert run["status"] == model.COMPLETED and run["step_count"] == 10
    seqs = [r[0] for r in conn.execute("SELECT seq FROM workflow_run_events WHERE run_id = 'r1' ORDER BY id")]
    assert seqs == list(range(1, run["event_seq"] + 1))
    events = [(r[0], json.loads(r[1])) for r in conn.execute(
        "SELECT type, payload FROM workflow_run_events WHERE run_id = 'r1' ORDER BY seq")]
    assert history.rebuild_context(events) == json.loads(run["context"])
    steps = conn.execute("SELECT status, started_at, completed_at, output FROM workflow_run_steps WHERE run_id = 'r1'").fetchall()
    assert len(steps) == 10 and all(s["status"] == model.SUCCEEDED and s["completed_at"] and s["output"] for s in steps)
    conn.close()


def _entry(run_id: str) -> run_cache.Entry | None:
    return run_cache._entries.get(run_id)


def test_a_rolled_back_transaction_never_leaves_a_cache_entry_ahead_of_the_database(tmp_path: Path) -> None:
    conn, row, defn = _database(tmp_path, steps=3)
    conn.close()
    run_cache.clear()
    writer = Writer(tmp_path / "db.sqlite")
    writer.start()
    tx = StepTransactions(definitions.DefinitionCache())
    try:
        writer.run_sync(lambda c: insert_new_run(c, row, defn, "r2", {}, None))

        def start_then_fail(c: sqlite3.Connection) -> None:
            tx.start_run(c, "r2")
            raise RuntimeError("rolled back after the chain was applied")

        with pytest.raises(RuntimeError):
            writer.run_sync(start_then_fail)
        version = writer.run_sync(lambda c: c.execute("SELECT version FROM workflow_runs WHERE run_id = 'r2'").fetchone()[0])
        entry = _entry("r2")
        assert entry is None or entry.version <= version  # nothing of the rolled-back chain
        assert writer.run_sync(lambda c: tx.start_run(c, "r2")) == 0
        stored = writer.run_sync(lambda c: c.execute(
            "SELECT version, status, context, engine_state FROM workflow_runs WHERE run_id = 'r2'").fetchone())
        entry = _entry("r2")
        assert stored["status"] == model.COMPLETED
        assert entry is not None and entry.version == stored["version"]
        assert entry.context == json.loads(stored["context"]) and entry.engine == json.loads(stored["engine_state"])
    finally:
        writer.close()
        run_cache.clear()


def test_the_cache_is_bounded_by_bytes_least_recently_used_first(monkeypatch: pytest.MonkeyPatch) -> None:
    run_cache.clear()
    monkeypatch.setattr(LIMITS, "run_cache_bytes", 10_000)
    try:
        for i in range(50):
            run_cache.begin_group()
            run_cache.stage(f"r{i}", run_cache.Entry(1, {}, {}, None, 900, 100))
            run_cache.publish()
        entries, size = run_cache.stats()
        assert size <= 10_000 and entries == 10
        assert run_cache.get("r49", 1) is not None and run_cache.get("r0", 1) is None
        assert run_cache.get("r49", 2) is None  # another version is a miss
        run_cache.begin_group()
        run_cache.stage("huge", run_cache.Entry(1, {}, {}, None, 9_000, 0))
        run_cache.publish()
        assert run_cache.get("huge", 1) is None  # one run never flushes the others
    finally:
        run_cache.clear()


def test_the_cache_is_bounded_by_entries_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many small runs (parked ones) do not all stay decoded: the count bound evicts the oldest."""
    run_cache.clear()
    monkeypatch.setattr(run_cache, "MAX_ENTRIES", 20)
    try:
        for i in range(100):
            run_cache.begin_group()
            run_cache.stage(f"r{i}", run_cache.Entry(1, {}, {}, None, 10, 10))
            run_cache.publish()
        entries, _ = run_cache.stats()
        assert entries == 20
        assert run_cache.get("r99", 1) is not None and run_cache.get("r79", 1) is None
    finally:
        run_cache.clear()


def test_staged_state_is_dropped_with_its_savepoint_and_outside_a_group_nothing_is_kept() -> None:
    run_cache.clear()
    run_cache.discard()
    run_cache.stage("solo", run_cache.Entry(1, {}, {}, None, 1, 1))  # no writer group: not staged
    assert run_cache.get("solo", 1) is None
    run_cache.begin_group()
    mark = run_cache.checkpoint()
    run_cache.stage("a", run_cache.Entry(3, {"v": 3}, {}, None, 1, 1))
    assert run_cache.get("a", 3) is not None  # the group sees its own writes
    run_cache.rollback_to(mark)
    assert run_cache.get("a", 3) is None
    run_cache.publish()
    assert run_cache.stats() == (0, 0)


def test_a_transition_past_a_cap_is_still_replaced_by_the_cap_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conn, row, defn = _database(tmp_path, steps=10)
    monkeypatch.setattr(LIMITS, "max_steps_per_run", 4)
    conn.execute("BEGIN IMMEDIATE")
    insert_new_run(conn, row, defn, "r3", {}, None)
    StepTransactions(definitions.DefinitionCache()).start_run(conn, "r3")
    conn.execute("COMMIT")
    run = conn.execute("SELECT status, error, step_count FROM workflow_runs WHERE run_id = 'r3'").fetchone()
    assert run["status"] == model.FAILED and json.loads(run["error"])["limit"] == "max_steps_per_run"
    assert run["step_count"] == 4
    conn.close()
