"""Which workflows a definition starts (`workflow.run` with a literal `workflow`), and the cycles they
make: a workflow may not start itself, directly or through others, unless a step of the cycle says
`allowRecursion: true` (then the run-time depth bound, STATION_MAX_CHILD_DEPTH, still holds).

Pure: the caller hands in the graph of every stored workflow's references (services/definitions.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from station_wf.dsl.spec import RUN_CHILD, is_template


def child_references(defn: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(workflow id, state path) of each `workflow.run` step naming its workflow literally and not
    allowing recursion, at every nesting level."""
    return [(workflow, path) for workflow, path, allowed in _walk(defn.get("states") or {}, "states") if not allowed]


def _walk(states: Any, path: str) -> Iterator[tuple[str, str, bool]]:
    items = states.items() if isinstance(states, Mapping) else enumerate(states or [])
    for key, state in items:
        if not isinstance(state, Mapping):
            continue
        here = f"{path}.{state.get('name', key)}"
        payload = state.get("input")
        if state.get("action") == RUN_CHILD and isinstance(payload, Mapping):
            workflow = payload.get("workflow")
            if isinstance(workflow, str) and not is_template(workflow):
                yield workflow, here, payload.get("allowRecursion") is True
        for branch in state.get("branches") or []:
            if isinstance(branch, Mapping):
                yield from _walk(branch.get("states"), f"{here}.{branch.get('name')}")
        for section in ("iterator", "try", "catch", "finally"):
            if isinstance(state.get(section), Mapping):
                yield from _walk(state[section].get("states"), f"{here}.{section}")


def find_cycle(graph: Mapping[str, list[tuple[str, str]]], start: str) -> list[tuple[str, str]] | None:
    """A path of (workflow, state path) edges from `start` back to it, or None. Depth-first without
    recursion (a long chain of workflows cannot overflow the stack); each workflow is entered once."""
    seen = {start}
    trail: list[tuple[str, str]] = []
    stack: list[Iterator[tuple[str, str]]] = [iter(graph.get(start, ()))]
    nodes = [start]
    while stack:
        edge = next(stack[-1], None)
        if edge is None:
            stack.pop()
            nodes.pop()
            if trail:
                trail.pop()
            continue
        target, where = edge
        if target == start:
            return [*trail, (nodes[-1], where)]
        if target in seen:
            continue
        seen.add(target)
        trail.append((nodes[-1], where))
        nodes.append(target)
        stack.append(iter(graph.get(target, ())))
    return None


def cycle_message(cycle: list[tuple[str, str]]) -> str:
    names = " -> ".join([*(w for w, _ in cycle), cycle[0][0]])
    steps = ", ".join(f"{w} {where}" for w, where in cycle)
    return (f"workflow {cycle[0][0]!r} would start itself through workflow.run ({names}; at {steps}): "
            "say `allowRecursion: true` in one of these steps' input if it is meant")
