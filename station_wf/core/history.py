"""A run's history as data: the context a run starts with and how its events rebuild it.

`rebuild_context` is the audit guarantee (history alone explains the state), used by tests, the
chaos harness and the API. Imports only `expr/`.
"""

from __future__ import annotations

import copy
from typing import Any

from station_wf.expr.paths import set_path


def initial_context(defn: dict[str, Any], run_id: str, version: int, run_input: dict[str, Any], started_at: str) -> dict[str, Any]:
    """DESIGN 3: a copy of the input plus the reserved `workflow` and `steps` keys."""
    context = copy.deepcopy(run_input)
    context["workflow"] = {
        "id": defn["id"],
        "version": version,
        "runId": run_id,
        "input": copy.deepcopy(run_input),
        "startedAt": started_at,
    }
    context["steps"] = {}
    return context


def empty_engine() -> dict[str, Any]:
    return {"scopes": {"": {"kind": "top", "data": {}, "last": None}}, "containers": {}}


def started_payload(context: dict[str, Any]) -> dict[str, Any]:
    """`run.started` without the input (which `run.created` carries): only what the start added to it.

    The context is the input plus `workflow`, `steps` and extras; a key kept unchanged from the input
    is left out, and `workflow.input` too, so the event is not twice the size of the input."""
    workflow = context.get("workflow")
    run_input = workflow.get("input") if isinstance(workflow, dict) else None
    if not isinstance(run_input, dict):
        return {"context": context}
    added = {k: v for k, v in context.items() if k in ("workflow", "steps") or k not in run_input or run_input[k] != v}
    added["workflow"] = {k: v for k, v in workflow.items() if k != "input"}
    return {"context": added, "inputFrom": "run.created"}


def rebuild_context(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any] | None:
    """Replay a run's events into its context: the audit guarantee that history alone explains the state."""
    context: dict[str, Any] | None = None
    run_input: Any = None
    for kind, payload in events:
        if kind == "run.created":
            run_input = payload.get("input")
        elif kind == "run.started":
            context = copy.deepcopy(payload["context"])
            if payload.get("inputFrom") == "run.created" and isinstance(run_input, dict):
                context = {**copy.deepcopy(run_input), **context}
                context["workflow"] = {**context["workflow"], "input": copy.deepcopy(run_input)}
        elif kind == "step.succeeded" and context is not None and "write" in payload and payload["write"].get("scope", "") == "":
            value = payload["write"]["value"] if "value" in payload["write"] else payload.get("output")
            set_path(context, payload["write"]["path"], copy.deepcopy(value))
            for path, value in payload["write"].get("also", ()):
                set_path(context, path, copy.deepcopy(value))
    return context
