"""The governance SQL on both dialects (SQLite and Postgres): slots and their queue order, rate
windows, agent slots, tags and the list filters, denials; and the concurrency key template."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from station_wf.dsl import concurrency
from station_wf.dsl.loader import parse_definition
from station_wf.dsl.problems import DefinitionError
from station_wf.errors import ServiceError
from station_wf.governance import rates
from station_wf.store import governance_agents, governance_denials, governance_runs, governance_slots
from station_wf.store.db import Writer, open_readers


@pytest.fixture
def writer(store_target: Path | str) -> Iterator[Writer]:
    w = Writer(store_target)
    w.start()
    yield w
    w.close()


def _seed(conn: sqlite3.Connection, runs: list[str]) -> None:
    conn.execute("INSERT INTO workflow_definitions (workflow_id, version, content_hash, source, definition, created_at)"
                 " VALUES ('w', 1, 'h', 'api', '{}', '2000-01-01')")
    for run_id in runs:
        conn.execute("INSERT INTO workflow_runs (run_id, workflow_id, workflow_version, content_hash, status, input,"
                     " context, created_at, updated_at) VALUES (?, 'w', 1, 'h', 'PENDING', '{}', '{}', ?, '2000')",
                     (run_id, f"2026-01-01T00:00:0{len(run_id) % 10}.000000Z"))


def test_slots_queue_in_order_and_release_promotes_the_oldest(writer: Writer) -> None:
    writer.run_sync(lambda c: _seed(c, ["a", "b", "c", "d"]))
    for run_id, queued in (("a", False), ("b", False), ("c", True), ("d", True)):
        writer.run_sync(lambda c, r=run_id, q=queued: governance_slots.hold(c, r, "w", "k", 2, q))
    assert writer.run_sync(lambda c: governance_slots.running_for_key(c, "w", "k")) == 2
    assert writer.run_sync(lambda c: governance_slots.waiting_for_key(c, "w", "k")) is True
    assert writer.run_sync(lambda c: governance_slots.release(c, "a", 0)) == ["c"]
    assert writer.run_sync(lambda c: governance_slots.is_queued(c, "d")) is True
    assert writer.run_sync(lambda c: governance_slots.release(c, "b", 10)) == ["d"]
    assert writer.run_sync(lambda c: governance_slots.release(c, "nope", 0)) == []
    tasks = writer.run_sync(lambda c: c.execute("SELECT subject FROM outbox ORDER BY id").fetchall())
    assert [t[0].rsplit(".", 1)[-1] for t in tasks] == ["c", "d"]


def test_rate_windows_count_and_refuse(writer: Writer) -> None:
    rate = rates.parse_rate("2/minute")
    assert rate is not None and rate.period_s == 60
    now = 1_800_000_010.0
    writer.run_sync(lambda c: rates.hit(c, "b", rate, "x", now))
    writer.run_sync(lambda c: rates.hit(c, "b", rate, "x", now + 1))
    with pytest.raises(ServiceError) as refused:
        writer.run_sync(lambda c: rates.hit(c, "b", rate, "x", now + 2))
    assert refused.value.status == 429 and refused.value.details["retryAfterSeconds"] == 48
    writer.run_sync(lambda c: rates.hit(c, "b", rate, "x", now + 60))  # the next window
    for bad in ("fast", "0/minute", "3/week"):
        with pytest.raises(ValueError, match="not a rate"):
            rates.parse_rate(bad)


def test_agent_slots_count_running_steps_only(writer: Writer) -> None:
    def seed(conn: sqlite3.Connection) -> list[int]:
        _seed(conn, ["r"])
        ids = []
        for i, status in enumerate(("RUNNING", "RUNNING", "SUCCEEDED")):
            conn.execute("INSERT INTO workflow_run_steps (run_id, step_id, state_name, state_type, attempt, status,"
                         " idempotency_key, created_at) VALUES ('r', ?, 's', 'operation', 1, ?, ?, '2000')",
                         (f"s{i}", status, f"k{i}"))
            ids.append(conn.execute("SELECT id FROM workflow_run_steps WHERE step_id = ?", (f"s{i}",)).fetchone()[0])
        for step_row in ids:
            governance_agents.hold(conn, step_row, "llm", "r")
        governance_agents.hold(conn, ids[0], "llm", "r")  # a redelivery holds no second slot
        return ids

    ids = writer.run_sync(seed)
    assert writer.run_sync(lambda c: governance_agents.running(c, "llm", -1)) == 2
    assert writer.run_sync(lambda c: governance_agents.running(c, "llm", ids[0])) == 1  # itself excluded
    left = writer.run_sync(lambda c: c.execute("SELECT COUNT(*) FROM governance_agent_slots").fetchone()[0])
    assert left == 2  # the finished step's slot was swept


def test_tags_filters_and_denials(writer: Writer, store_target: Path | str) -> None:
    def seed(conn: sqlite3.Connection) -> None:
        _seed(conn, ["x1", "x22", "x333"])
        governance_runs.set_meta(conn, "x1", "c-1", {"env": "prod", "team": "a"})
        governance_runs.set_meta(conn, "x22", "c-1", {"env": "dev"})
        governance_runs.set_meta(conn, "x333", None, {"env": "prod"})
        governance_denials.insert(conn, "signal", "bob", "w", "x1", "p.yaml:3 (signal)", "no")
        governance_denials.insert(conn, "run", "bob", "w", None, "p.yaml:1 (run)", "no")

    writer.run_sync(seed)

    async def read() -> tuple[list[list[str]], list[str]]:
        readers = open_readers(store_target)
        await readers.open()
        try:
            out = []
            for filters in (("c-1", {}, None, None), (None, {"env": "prod"}, None, None),
                            ("c-1", {"env": "prod", "team": "a"}, None, None),
                            (None, {}, "2026-01-01T00:00:02.000000Z", "2026-01-01T00:00:04.000000Z")):
                where, params = governance_runs.list_filters(*filters)
                rows = await readers.fetchall("SELECT run_id FROM workflow_runs WHERE " + " AND ".join(where)
                                              + " ORDER BY id", tuple(params))
                out.append([r["run_id"] for r in rows])
            denials = [r["policy"] for r in await governance_denials.recent(readers, 10, None)]
            return out, denials
        finally:
            await readers.close()

    found, denials = asyncio.run(read())
    assert found == [["x1", "x22"], ["x1", "x333"], ["x1"], ["x1", "x22"]]  # created at :02, :03, :04
    assert denials == ["p.yaml:1 (run)", "p.yaml:3 (signal)"]
    event = writer.run_sync(lambda c: c.execute("SELECT type, actor FROM workflow_run_events WHERE run_id = 'x1'").fetchone())
    assert (event[0], event[1]) == ("policy.denied", "bob")


def test_concurrency_in_the_definition_and_its_key() -> None:
    text = ('id: w\nconcurrency: { limit: 2, key: "{{ input.customer }}/{{ input.region.name }}" }\nstart: a\n'
            'states:\n  - { name: a, type: inject, data: {}, end: true }\n')
    limit = concurrency.of_definition(parse_definition(text))
    assert limit is not None and limit.limit == 2
    assert limit.render_key({"customer": "acme", "region": {"name": "eu"}}) == "acme/eu"
    assert limit.render_key({"customer": 7}) == "7/"  # a missing path renders empty
    assert concurrency.of_definition(parse_definition(text.replace("concurrency: { limit: 2, key: \"{{ input.customer }}/{{ input.region.name }}\" }\n", ""))) is None
    for bad, message in (("{ limit: 0 }", "concurrency.limit"), ("{ limit: 1, key: \"{{ input.a + 1 }}\" }", "concurrency.key"),
                         ("{ limit: 1, every: 2 }", "concurrency.every"), ("3", "concurrency")):
        broken = text.replace(text.splitlines()[1], f"concurrency: {bad}")
        with pytest.raises(DefinitionError, match=message) as caught:
            parse_definition(broken, "w.yaml")
        assert "w.yaml:2" in str(caught.value)
