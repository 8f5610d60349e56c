"""SQL fragments built from the core's vocabulary, so no status or step-type list is written out by hand.

The fragments are rendered once at import from trusted constants (never from input), which keeps
every statement's text fixed (SQLite's statement cache) and its parameter count unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from station_wf.core import model

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def sql_list(values: Iterable[str]) -> str:
    """`('A', 'B')` in a fixed (sorted) order; only plain words, so quoting is never an issue."""
    words = sorted(set(values))
    if not words or not all(_WORD.fullmatch(w) for w in words):
        raise ValueError(f"not a list of plain words: {words!r}")
    return "(" + ", ".join(f"'{w}'" for w in words) + ")"


SLEEP = "sleep"
OPEN_STEPS = sql_list(model.OPEN_STEP_STATUSES)
ACTIVE_RUNS = sql_list(model.ACTIVE_RUN_STATUSES)
TERMINAL_RUNS = sql_list(model.TERMINAL_RUN_STATUSES)
CONTAINERS = sql_list(model.CONTAINER_TYPES)
# RUNNING on purpose with no task: containers whose children run, and sleeps (a timer ends them).
HELD_TYPES = sql_list(model.CONTAINER_TYPES | {SLEEP})
DISPATCHABLE_STEPS = sql_list({model.PENDING, model.RUNNING})
