"""How a plain document's dialect is decided (docs/dialects.md): first match wins.

1. an explicit top-level `dialect:`; 2. Station's API-payload form (`workflowId` + `definition`);
3. `specVersion` or any `action:` is the PRD; 4. any construct only Station writes is Station;
5. otherwise the PRD. The reason comes back in words, with the path of the construct that decided.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ACTION_MARKERS", "DIALECTS", "decide_dialect"]

DIALECTS = ("prd", "station")
ACTION_MARKERS = ("agent.run", "agent.hierarchy.run", "human.approval", "signal.wait", "await", "await.signal")
_STATION_TYPES = ("agent", "human_approval", "timer", "cron")
PathT = tuple[str | int, ...]


def decide_dialect(obj: dict[str, Any]) -> tuple[str, str]:
    """('prd' | 'station', the reason in words) for one plain document."""
    explicit = obj.get("dialect")
    if isinstance(explicit, str) and explicit in DIALECTS:
        return explicit, f"'dialect: {explicit}' at the top level"
    if isinstance(obj.get("definition"), dict) and "workflowId" in obj:
        return "station", "Station's API-payload form (workflowId + definition)"
    if "specVersion" in obj:
        return "prd", "'specVersion' at the top level"
    prd = _first_state_key(obj.get("states"), ("states",), lambda s: "action" in s and "operation" not in s)
    if prd is not None:
        return "prd", f"'action:' at {_fmt((*prd, 'action'))}"
    if "outputSchema" in obj:
        return "station", "'outputSchema' at the top level"
    found = _first_state_key(obj.get("states"), ("states",), _station_marker)
    if found is not None:
        return "station", f"{_station_marker_text(_lookup(obj, found))} at {_fmt(found)}"
    return "prd", "no Station-only construct"


def _station_marker(state: dict[str, Any]) -> bool:
    return _station_marker_text(state) is not None


def _station_marker_text(state: Any) -> str | None:
    if not isinstance(state, dict):
        return None
    if state.get("type") in _STATION_TYPES:
        return f"'type: {state['type']}'"
    for key in ("transition", "id", "output", "inputPath", "outputPath", "outputAggregation", "timeout",
                "approval_title", "agentTask", "operation", "itemVariable"):
        if key in state:
            return f"'{key}:'"
    payload = state.get("input")
    if isinstance(payload, dict) and payload.get("task") in ACTION_MARKERS:
        return f"'input.task: {payload['task']}'"
    retry = state.get("retry")
    if isinstance(retry, dict) and any(k in retry for k in ("max_attempts", "backoff", "retry_on")):
        return "Station's snake_case 'retry'"
    if state.get("type") == "foreach" and "agent" in state:
        return "a foreach with 'agent:'"
    for branch in state.get("branches") or []:
        if isinstance(branch, dict) and ("agent" in branch or "id" in branch):
            return "a parallel branch with 'agent:'/'id:'"
    return None


def _first_state_key(items: Any, path: PathT, test: Any) -> PathT | None:
    """The path of the first state (depth first, file order) for which `test` holds."""
    if not isinstance(items, list):
        return None
    for index, state in enumerate(items):
        if not isinstance(state, dict):
            continue
        here = (*path, index)
        if test(state):
            return here
        for sub, sub_path in _sub_scopes(state, here):
            found = _first_state_key(sub, sub_path, test)
            if found is not None:
                return found
    return None


def _sub_scopes(state: dict[str, Any], path: PathT) -> list[tuple[Any, PathT]]:
    out: list[tuple[Any, PathT]] = []
    for index, branch in enumerate(state.get("branches") or [] if isinstance(state.get("branches"), list) else []):
        if isinstance(branch, dict):
            out.append((branch.get("states"), (*path, "branches", index, "states")))
    for key in ("iterator", "try", "catch", "finally"):
        block = state.get(key)
        if isinstance(block, dict):
            out.append((block.get("states"), (*path, key, "states")))
        elif isinstance(block, list):
            out.append((block, (*path, key)))
    return out


def _lookup(obj: Any, path: PathT) -> Any:
    for part in path:
        obj = obj[part]
    return obj


def _fmt(path: PathT) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
