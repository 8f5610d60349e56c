"""Copy-on-write for the run state: a transition never mutates the state it was handed.

Why: the shell caches decoded run state across transactions (store/run_cache.py) and hands the same
objects to the next transition, so the interpreter must treat its input as immutable. Deep copies of
the whole context and engine state on every transition made a step's cost grow with the run; here
only what a transition writes is copied: the dicts and lists along a written path (`set_path`), and
the engine's scope and container records, one level deep (`fork_engine`). Values below them (scope
data, outputs, foreach items) are shared, never written in place. Imports only `expr/`.
"""

from __future__ import annotations

from typing import Any

from station_wf.expr.paths import parse_path
from station_wf.expr.paths import set_path as _set_path_in_place


def set_path(root: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """`expr.paths.set_path` without touching `root`: returns a new root sharing every part the write
    does not pass through (the same errors, the same result as writing into a deep copy)."""
    top = dict(root)
    cur: Any = top
    for seg in parse_path(path)[:-1]:
        key = _key(cur, seg)
        if key is None:
            break  # set_path creates (or refuses) from here on: nothing shared below
        child = cur[key]
        if isinstance(child, dict):
            child = dict(child)
        elif isinstance(child, list):
            child = list(child)
        else:
            break
        cur[key] = child
        cur = child
    _set_path_in_place(top, path, value)
    return top


def _key(obj: Any, seg: str | int) -> Any:
    """The key or index `expr.paths` would step through for `seg`, or None when it is absent."""
    if isinstance(obj, dict):
        if isinstance(seg, int):
            return str(seg) if str(seg) in obj else (seg if seg in obj else None)
        return seg if seg in obj else None
    if isinstance(obj, list) and isinstance(seg, int) and -len(obj) <= seg < len(obj):
        return seg % len(obj)
    return None


def fork_engine(engine: dict[str, Any]) -> dict[str, Any]:
    """A writable engine state: its own scope and container records (and their lists); the values
    inside them are shared and are only ever replaced, never written in place."""
    out = dict(engine)
    if "scopes" in engine:
        out["scopes"] = {path: dict(scope) for path, scope in engine["scopes"].items()}
    if "containers" in engine:
        out["containers"] = {sid: _fork_record(record) for sid, record in engine["containers"].items()}
    return out


def _fork_record(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    for key in ("children", "done", "failed"):
        if isinstance(out.get(key), list):
            out[key] = list(out[key])
    return out
