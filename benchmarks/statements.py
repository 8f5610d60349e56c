"""SQL statements the writer runs per step: a run of N inject steps (started, its whole inline chain
decided in one transaction), counted with sqlite3's trace callback on a real database file.

    python -m benchmarks.statements [steps] [context_bytes]

Each row of an executemany is one execution to the trace callback (it is counted so here, though
it is one call and one prepared statement). Prints statements per transaction and per step, and the writer-thread CPU per step for that run
(no daemon, no broker: the cost of the transaction functions alone).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.throughput import noop_workflow
from station_wf.dsl.loader import parse_definition
from station_wf.engine.runs import insert_new_run
from station_wf.engine.step_tx import StepTransactions
from station_wf.store import definitions, run_cache
from station_wf.store.db import apply_migrations, connect


def main(steps: int = 10, context_bytes: int = 0, runs: int = 200) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        conn = connect(Path(tmp) / "db.sqlite")
        apply_migrations(conn)
        raw = noop_workflow(steps, False)
        defn = parse_definition(raw)
        conn.execute("BEGIN IMMEDIATE")
        definitions.register(conn, defn, raw, source="api")
        conn.execute("COMMIT")
        row = definitions.latest_row(conn, defn["id"])
        cache = definitions.DefinitionCache()
        tx = StepTransactions(cache)
        run_input = {"blob": "x" * context_bytes} if context_bytes else {}
        statements: list[str] = []
        cpu = 0.0
        for i in range(runs):
            conn.execute("BEGIN IMMEDIATE")
            insert_new_run(conn, row, defn, f"run-{i}", run_input, None)
            conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            run_cache.begin_group()  # as the writer thread does around its group
            if i == runs - 1:
                conn.set_trace_callback(statements.append)
            t0 = time.thread_time()
            tx.start_run(conn, f"run-{i}")
            cpu += time.thread_time() - t0
            conn.set_trace_callback(None)
            conn.execute("COMMIT")
            run_cache.publish()
        status = conn.execute("SELECT status FROM workflow_runs WHERE run_id = ?", (f"run-{runs - 1}",)).fetchone()[0]
        conn.close()
    if "-v" in sys.argv:
        for s in statements:
            print(" ".join(s.split())[:150])
    return {"steps": steps, "context_bytes": context_bytes, "status": status, "statements_per_run": len(statements),
            "statements_per_step": round(len(statements) / steps, 2),
            "writer_cpu_ms_per_step": round(cpu * 1000 / (runs * steps), 4)}


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:] if a != "-v"]
    print(json.dumps(main(*args)))
