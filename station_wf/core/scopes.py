"""Scopes: where a step lives, what it reads, and whose object it writes. Pure functions of JSON.

A step's scope is named by its `branch_path`: "" is the top level; each frame adds `state:branch`
(a parallel branch), `state[i]` (a foreach iteration) or `state!section` (a try section), joined with
"/". This module is the one parser of that frame grammar. Imports only `core.model`.
"""

from __future__ import annotations

from typing import Any

from station_wf.core.model import RunState


def frames(path: str) -> list[str]:
    return path.split("/") if path else []


def join(path: str, frame: str) -> str:
    return f"{path}/{frame}" if path else frame


def parent(path: str) -> str:
    return path.rpartition("/")[0]


def parse_frame(frame: str) -> tuple[str, str, str | int]:
    """('parallel'|'foreach'|'try', state name, branch name | index | section)."""
    if frame.endswith("]") and "[" in frame:
        name, _, idx = frame[:-1].partition("[")
        return "foreach", name, int(idx)
    if "!" in frame:
        name, _, section = frame.partition("!")
        return "try", name, section
    name, _, branch = frame.partition(":")
    return "parallel", name, branch


def scope_states(defn: dict[str, Any], branch_path: str) -> dict[str, dict[str, Any]]:
    """The states visible from a scope: walk the frames down from the top level."""
    states = defn["states"]
    for frame in frames(branch_path):
        kind, name, key = parse_frame(frame)
        container = states[name]
        if kind == "parallel":
            states = next(b for b in container["branches"] if b["name"] == key)["states"]
        elif kind == "foreach":
            states = container["iterator"]["states"]
        else:
            states = container[key]["states"]
    return states


def scope_start(defn: dict[str, Any], container: dict[str, Any], kind: str, key: str | int) -> str:
    if kind == "parallel":
        return next(b for b in container["branches"] if b["name"] == key)["start"]
    if kind == "foreach":
        return container["iterator"]["start"]
    return container[key]["start"]


def innermost_index(path: str) -> int | None:
    for frame in reversed(frames(path)):
        kind, _, key = parse_frame(frame)
        if kind == "foreach":
            return int(key)
    return None


def owner(engine: dict[str, Any], path: str) -> str:
    """The scope whose object a step in `path` writes to: try sections are transparent."""
    while path and engine["scopes"][path]["kind"] == "try":
        path = parent(path)
    return path


def overlay(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Scope-local values over the outer ones; `steps`-like objects merge one level deep."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def view(run: RunState, engine: dict[str, Any], path: str) -> dict[str, Any]:
    """What a step in `path` reads: the context, overlaid with each enclosing scope's vars and writes."""
    names = run.context
    for depth in range(1, len(frames(path)) + 1):
        scope = engine["scopes"]["/".join(frames(path)[:depth])]
        if scope["kind"] == "try":
            if scope.get("vars"):
                names = overlay(names, scope["vars"])
            continue
        names = overlay(names, {**scope.get("vars", {}), **scope["data"]})
    return names


def names_for(run: RunState, engine: dict[str, Any], path: str) -> dict[str, Any]:
    names = dict(view(run, engine, path))
    names["ctx"] = run.context
    return names

