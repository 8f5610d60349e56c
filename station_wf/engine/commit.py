"""Committing a transition, and deciding at once the steps it creates that need no executor.

A chain of inject/switch/transform/container/wait steps is decided inside the transaction that caused
it: each still gets its own row, events and deterministic id, but not a JetStream round trip. The
chain is bounded; what is left over gets tasks like any step. A crash before the commit loses the
whole chain together with its cause, which is then redelivered and decided the same way.

`decide_and_commit` is the shell's one recipe for everything that moves a run (worker, timers,
approvals, signals, cancel): the run's definition and state are read inside the writer's
transaction, handed to a pure interpreter function, and what it returns is committed with its chain.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from station_wf.core import interpreter as ip
from station_wf.core import model
from station_wf.store import runs as rs
from station_wf.store.definitions import DefinitionCache
from station_wf.store.run_unit import RunUnit

MAX_INLINE_STEPS = 64

Decision = Callable[[dict[str, Any], model.RunState], model.Transition | None]


def decide_and_commit(conn: sqlite3.Connection, defs: DefinitionCache, run: rs.RunRow, decision: Decision,
                      step: model.StepView | None = None) -> int:
    """Load the run's definition and state, let `decision(definition, state)` (a pure interpreter call)
    say what happens, and commit it with its inline chain; returns the tasks enqueued (0: no change)."""
    defn = defs.get(conn, run.workflow_id, run.workflow_version)
    unit = RunUnit.load(conn, run)
    if unit is None:
        return 0
    t = decision(defn, unit.state(conn, defn))
    return 0 if t is None else commit_transition(conn, defs, run, t, step, unit=unit)


def commit_transition(conn: sqlite3.Connection, defs: DefinitionCache, run: rs.RunRow, t: model.Transition,
                      step: model.StepView | None = None, *, unit: RunUnit | None = None, checked: bool = True) -> int:
    """apply_transition plus the inline chain, on one unit of work (one load of the run, one flush),
    then what it means for the run's parent and children (engine/children.py); returns the number of
    tasks enqueued. `checked=False` skips the per-run caps (a transition that fails the run for one)."""
    unit = unit if unit is not None else RunUnit.load(conn, run)
    if unit is None:
        return 0
    defn = defs.get(conn, run.workflow_id, run.workflow_version)
    was = unit.status
    waits = children.closing_waits(defn, unit)
    pending: list[tuple[str, int]] = []
    tasks = unit.apply(conn, t, step, inline=pending, checked=checked)
    budget = MAX_INLINE_STEPS
    while pending:
        sid, attempt = pending.pop(0)
        view = unit.step(sid, attempt)
        if view is None or view.status != model.PENDING:
            continue
        if unit.status not in model.ACTIVE_RUN_STATUSES or budget <= 0:
            if unit.status in model.ACTIVE_RUN_STATUSES:  # over budget: an ordinary task
                unit.enqueue(conn, sid, attempt)
                tasks += 1
            continue  # paused: resume dispatches it; finished: nothing to do
        budget -= 1
        decided = ip.begin_step(defn, unit.state(conn, defn), view)
        if isinstance(decided, model.Transition):
            tasks += unit.apply(conn, decided, view, inline=pending)
        elif decided is not None:  # needs an executor after all
            unit.enqueue(conn, sid, attempt)
            tasks += 1
    unit.flush(conn)
    children.after_commit_of(conn, defs, defn, unit, was, waits)
    return tasks


# Last: children.py uses this module's functions (and those of the modules that import it).
from station_wf.engine import children  # noqa: E402
