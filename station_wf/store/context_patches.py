"""A run's context as its blob plus the patches written since the blob was last compacted.

Why: a transition used to rewrite the whole `workflow_runs.context` blob, so a step over a 1 MB
context cost ~20x one over 1 KB. The interpreter copies on write (core/cow.py): what a transition
did not change is the *same object* in the new context, so `diff` finds the changed paths by
identity, walking only the changed branches, and the writer stores them as rows of
`workflow_run_context_patches` in the transition's transaction. `fold` is the one way back from
blob + patches to the context, for the writer (a cache miss) and the readers alike; it gives the
same JSON text the whole-blob write gave, key order included.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from station_wf.store.dialect import Dialect
from station_wf.store.jsontext import dumps, loads

COMPACT_ROWS = 64  # a run's patches are folded into its blob past this many rows ...
COMPACT_FRACTION = 0.5  # ... or past this fraction of the blob's bytes (and always when it ends)

# Selects a run's patches as one JSON text, for reading them in the same statement as the blob
# (one statement, one snapshot: a compaction committed in between cannot split them).
def patches_of_run(d: Dialect) -> str:
    return f"(SELECT {d.patches_agg} FROM workflow_run_context_patches p WHERE p.run_id = workflow_runs.run_id)"

_INSERT = "INSERT INTO workflow_run_context_patches (run_id, seq, path, value) VALUES (?, ?, ?, ?)"
_DELETE = "DELETE FROM workflow_run_context_patches WHERE run_id = ?"

GONE = object()  # `diff`'s mark of a removed key


def diff(old: Any, new: Any) -> list[tuple[list[str], Any]]:
    """The (path, value) writes that turn `old` into `new` (value `GONE`: remove the key). Subtrees
    that are the same object are not looked into; a dict whose keys changed order is written whole."""
    out: list[tuple[list[str], Any]] = []
    _diff(old, new, [], out)
    return out


def _diff(old: Any, new: Any, path: list[str], out: list[tuple[list[str], Any]]) -> None:
    if new is old:
        return
    if type(old) is not dict or type(new) is not dict or not _same_order(old, new):
        out.append((path, new))
        return
    for key, value in new.items():
        was = old.get(key, GONE)
        if value is was:
            continue
        if type(value) is dict and type(was) is dict:
            _diff(was, value, [*path, key], out)
        else:
            out.append(([*path, key], value))
    out.extend(([*path, key], GONE) for key in old if key not in new)


def _same_order(old: dict, new: dict) -> bool:
    """Does folding keep `new`'s key order? It does when the kept keys are in `old`'s order and the
    added ones come after them (a fold appends a new key at the end)."""
    kept, added = [], False
    for key in new:
        if key in old:
            if added:
                return False
            kept.append(key)
        else:
            added = True
    return kept == [key for key in old if key in new]


def rows(run_id: str, first_seq: int, changes: list[tuple[list[str], Any]]) -> list[tuple[str, int, str, str | None]]:
    """The rows of `changes`, numbered from `first_seq`."""
    return [(run_id, first_seq + i, dumps(path), None if value is GONE else dumps(value))
            for i, (path, value) in enumerate(changes)]


def append(conn: sqlite3.Connection, patch_rows: list[tuple[str, int, str, str | None]]) -> None:
    conn.executemany(_INSERT, patch_rows)


def drop(conn: sqlite3.Connection, run_id: str) -> None:
    """The blob now holds every patch (compacted in the same transaction)."""
    conn.execute(_DELETE, (run_id,))


def parse(patches_json: str | None) -> list[tuple[int, str, str | None]]:
    """The rows selected by `patches_of_run`, in seq order."""
    if not patches_json or patches_json == "[]":
        return []
    return sorted((seq, path, value) for seq, path, value in loads(patches_json))


def fold(context: Any, patches: list[tuple[int, str, str | None]]) -> Any:
    """`context` (decoded, owned by the caller: written into) with `patches` applied in order."""
    for _, path_text, value_text in patches:
        path = loads(path_text)
        if not path:
            context = None if value_text is None else loads(value_text)
            continue
        node = context
        for key in path[:-1]:
            node = node[key]
        if value_text is None:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = loads(value_text)
    return context


def fold_text(blob: str, patches_json: str | None) -> str:
    """The context's JSON text as the whole-blob write would have stored it."""
    patches = parse(patches_json)
    return blob if not patches else dumps(fold(loads(blob), patches))


def fold_row(row: sqlite3.Row | None) -> sqlite3.Row | dict[str, Any] | None:
    """A `workflow_runs` row selected with `patches_of_run(d) AS context_patches`: its `context` with the
    patches folded in (the row itself when there are none)."""
    if row is None or not row["context_patches"] or row["context_patches"] == "[]":
        return row
    out = dict(zip(row.keys(), row, strict=True))
    out["context"] = fold_text(out["context"], out.pop("context_patches"))
    return out
