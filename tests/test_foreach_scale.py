"""A foreach over 10,000 items through the real daemon (issue 14): it completes with one result per
item in order, its items are never copied into the engine state, each iteration's scope is pruned
when it closes (only the live ones are kept while it runs), and once it is done the stored engine
state is small again."""

from __future__ import annotations

import json
import sqlite3
import time

from tests.conftest import Daemon

N = 10_000
CONCURRENCY = 4
FOREACH = f"""
id: many
start: each
states:
  - name: each
    type: foreach
    itemsPath: xs
    maxConcurrency: {CONCURRENCY}
    iterator:
      states:
        - {{ name: mark, type: inject, data: {{ seen: true }}, end: true }}
    resultPath: steps.out
    next: after
  - {{ name: after, type: inject, data: {{ finished: true }}, end: true }}
"""


def test_a_foreach_over_ten_thousand_items_completes_and_its_engine_state_stays_small(daemon: Daemon) -> None:
    daemon.add_workflow("many", FOREACH)
    daemon.env.update({"STATION_MAX_STEPS_PER_RUN": str(3 * N), "STATION_MAX_EVENTS_PER_RUN": str(10 * N)})
    daemon.start()
    items = [{"i": i, "pad": "p" * 8} for i in range(N)]
    run = daemon.start_run("many", {"xs": items})
    db = sqlite3.connect(f"file:{daemon.data_dir / 'station-wf.db'}?mode=ro", uri=True)
    most_scopes = 0
    deadline = time.monotonic() + 240
    status = "PENDING"
    for _ in range(100_000):  # bounded in count and in time
        row = db.execute("SELECT status, engine_state FROM workflow_runs WHERE run_id = ?", (run["id"],)).fetchone()
        status, engine = row[0], json.loads(row[1])
        assert row[1].count('"pad"') <= CONCURRENCY  # only the live iterations' own item, never the list
        most_scopes = max(most_scopes, len(engine.get("scopes", {})))
        if status not in ("PENDING", "RUNNING") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == "COMPLETED", daemon.log()[-3000:]
    assert most_scopes <= CONCURRENCY + 1  # the top scope and the live iterations, never the closed ones
    final = daemon.run(run["id"])
    assert final["context"]["steps"]["out"] == [{"seen": True}] * N and final["context"]["finished"] is True
    engine_text = db.execute("SELECT engine_state FROM workflow_runs WHERE run_id = ?", (run["id"],)).fetchone()[0]
    assert len(engine_text) < 64 * 1024, len(engine_text)
    indexes = {r[0] for r in db.execute(
        "SELECT foreach_index FROM workflow_run_steps WHERE run_id = ? AND state_name = 'mark' AND status = 'SUCCEEDED'",
        (run["id"],))}
    assert indexes == set(range(N))
    db.close()
