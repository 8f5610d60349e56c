"""Writer cost of a foreach as its item count grows: the real transaction functions on a real SQLite
file, the outbox drained in-process (no daemon, no broker), so the figure is the engine's own.

    python -m benchmarks.foreach_size [items ...]

Prints, per item count, the writer CPU per item and the stored engine state's largest size; linear
means the per-item figure stays flat as items grow.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from station_wf.dsl.loader import parse_definition
from station_wf.engine.runs import insert_new_run
from station_wf.engine.step_tx import StepTransactions
from station_wf.protocol import decode_task
from station_wf.store import definitions, run_cache
from station_wf.store.db import apply_migrations, connect

WORKFLOW = """
id: many
start: each
states:
  - name: each
    type: foreach
    itemsPath: xs
    maxConcurrency: 4
    iterator:
      states:
        - { name: mark, type: inject, data: { seen: true }, end: true }
    resultPath: steps.out
    end: true
"""


def main(items: int) -> dict:
    from station_wf.core.limits import LIMITS
    LIMITS.max_steps_per_run = LIMITS.max_events_per_run = 100 * items
    with tempfile.TemporaryDirectory() as tmp:
        conn = connect(Path(tmp) / "db.sqlite")
        apply_migrations(conn)
        defn = parse_definition(WORKFLOW)
        conn.execute("BEGIN IMMEDIATE")
        definitions.register(conn, defn, WORKFLOW, source="api")
        insert_new_run(conn, definitions.latest_row(conn, "many"), defn, "r", {"xs": [{"i": i} for i in range(items)]}, None)
        conn.execute("COMMIT")
        tx = StepTransactions(definitions.DefinitionCache())
        cpu, biggest, transactions = 0.0, 0, 0

        def one(fn) -> None:
            nonlocal cpu, transactions
            conn.execute("BEGIN IMMEDIATE")
            run_cache.begin_group()
            t0 = time.thread_time()
            fn()
            cpu += time.thread_time() - t0
            conn.execute("COMMIT")
            run_cache.publish()
            transactions += 1

        one(lambda: tx.start_run(conn, "r"))
        for _ in range(10 * items):  # bounded: each round handles the queued tasks
            rows = conn.execute("SELECT id, subject, msg_id, payload, headers FROM outbox ORDER BY id").fetchall()
            conn.execute("DELETE FROM outbox")
            if not rows:
                break
            for row in rows:
                task = decode_task(row["subject"], row["payload"], json.loads(row["headers"]))
                if task.kind == "step":
                    one(lambda task=task: tx.begin_step(conn, task.run_id, task.step_id, task.attempt))
            biggest = max(biggest, len(conn.execute("SELECT engine_state FROM workflow_runs").fetchone()[0]))
        status, out = conn.execute("SELECT status, json_array_length(context, '$.steps.out') FROM workflow_runs").fetchone()
        conn.close()
    return {"items": items, "status": status, "results": out, "transactions": transactions,
            "writer_cpu_ms_per_item": round(cpu * 1000 / items, 3), "largest_engine_state_bytes": biggest}


if __name__ == "__main__":
    for n in [int(a) for a in sys.argv[1:]] or [1000, 2000, 4000]:
        print(json.dumps(main(n)))
