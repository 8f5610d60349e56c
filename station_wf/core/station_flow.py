"""Station's data flow, for definitions loaded in Station's dialect (`defn["dialect"] == "station"`).

Pure functions the interpreter calls at a few points; no I/O. What they implement is what Station's
docs and runtime (`internal/workflows/runtime/consumer.go`, `dataflow/resolver.go`) say:

* every step's output is stored at `steps.<id>.output` and at `<id>`, besides its `resultPath`
  (a resultPath `steps.<x>` is a step slot too, so `steps.<x>.output` reads it as well);
* `output:` maps copy parts of the output into the context: `log_analysis: "$.result"`, where `$`,
  `$.result`, `$.output`, `$.data`, `$.branches` and `$.iterations` mean the whole output;
* `input` is the previous step's output (the workflow input at the first step), over the workflow
  input so `input.service_name` keeps working; `inputPath` narrows it, `outputPath` narrows the output;
* an agent step without a task takes `input.task`, and the step input as its variables;
* `outputAggregation` shapes a parallel (merge | array | first) or foreach (array | merge) result;
* `outputSchema` is checked against the run's final output (the last step's output);
* `retry.retry_on` lists the error kinds that are retried (`timeout`, `agent_error`, or an error type).
"""

from __future__ import annotations

import copy
from typing import Any

from jsonschema.validators import validator_for

from station_wf.expr.paths import PathError, get_path, parse_path

_WHOLE = ("result", "output", "data", "branches", "iterations")
_RESERVED_TOP = ("workflow", "steps", "ctx")


def is_station(defn: dict[str, Any]) -> bool:
    return defn.get("dialect") == "station"


def declare(defn: dict[str, Any], names: dict[str, Any]) -> dict[str, Any]:
    """Names the file can write read as None until written (Station's flat context)."""
    for name in defn.get("stationNames") or ():
        names.setdefault(name, None)
    return names


def flow(state: dict[str, Any]) -> dict[str, Any]:
    return state.get("dataflow") or {}


def shape_output(state: dict[str, Any], output: Any) -> Any:
    """`outputPath` selects part of the output before it is stored anywhere."""
    path = flow(state).get("outputPath")
    if not path or path == "$":
        return output
    try:
        return get_path(output, path)
    except PathError:
        return None


def writes(state: dict[str, Any], output: Any, default_path: str) -> list[tuple[str, Any]]:
    """Every (path, value) a succeeded Station step writes in its scope, in order."""
    name = state["name"]
    out: list[tuple[str, Any]] = []
    result_path = state.get("resultPath")
    if state["type"] == "inject" and not result_path:
        result_path = default_path  # Station's inject merges into the context by default
    if result_path:
        out.append((result_path, output))
    if state["type"] not in ("switch",):
        out.append((f'steps["{name}"].output', output))
        if name not in _RESERVED_TOP:
            out.append((f'["{name}"]', output))
        slot = _step_slot(result_path)
        if slot is not None and slot != name and isinstance(output, dict):
            out.append((f'steps["{slot}"].output', output))
    for key, source in (flow(state).get("output") or {}).items():
        value = resolve_output(output, source)
        if value is not None and key not in _RESERVED_TOP:
            out.append((f'["{key}"]', value))
    return out


def _step_slot(result_path: str | None) -> str | None:
    if not result_path:
        return None
    try:
        segments = parse_path(result_path)
    except PathError:
        return None
    if len(segments) == 2 and segments[0] == "steps" and isinstance(segments[1], str):
        return segments[1]
    return None


def resolve_output(output: Any, source: str) -> Any:
    """An `output:` map entry against the step's output; None when it does not resolve (Station skips it)."""
    text = source.strip()
    if text in ("$", "$."):
        return output
    try:
        segments = parse_path(text)
    except PathError:
        return None
    if segments and segments[0] == "iterations" and isinstance(output, dict) and "results" in output:
        segments = ("results", *segments[1:])  # a foreach's iterations are its results list
    elif segments and segments[0] in _WHOLE and not (isinstance(output, dict) and segments[0] in output):
        segments = segments[1:]
    value = output
    for seg in segments:
        if isinstance(value, dict) and isinstance(seg, str) and seg in value:
            value = value[seg]
        elif isinstance(value, list) and isinstance(seg, int) and -len(value) <= seg < len(value):
            value = value[seg]
        else:
            return None
    return value


def step_input(context: dict[str, Any], last: Any, state: dict[str, Any]) -> Any:
    """`input`: the previous output over the workflow input; `inputPath` narrows it."""
    workflow_input = (context.get("workflow") or {}).get("input") or {}
    if last is None:
        value: Any = copy.deepcopy(workflow_input)
    elif isinstance(last, dict) and isinstance(workflow_input, dict):
        value = {**workflow_input, **last}
    else:
        value = last
    path = flow(state).get("inputPath")
    if path and path != "$":
        try:
            value = get_path(value, path)
        except PathError:
            value = None
    return value


def agent_call(state: dict[str, Any], rendered: dict[str, Any], value: Any) -> dict[str, Any]:
    """An agent step without a task takes `input.task`; without variables, the step input."""
    if state.get("action") != "agent.run":
        return rendered
    out = dict(rendered)
    if out.get("task") is None and isinstance(value, dict) and isinstance(value.get("task"), str):
        out["task"] = value["task"]
    if "variables" not in out and isinstance(value, dict):
        out["variables"] = {k: v for k, v in value.items() if isinstance(k, str) and not k.startswith("_")}
    return out


def aggregate_parallel(state: dict[str, Any], branches: list[tuple[str, Any]]) -> Any:
    """The branches' outputs (name, output) in definition order -> the parallel step's output."""
    mode = flow(state).get("aggregation") or "merge"
    if mode == "array":
        return {"results": [value for _, value in branches]}
    if mode == "first":
        return branches[0][1] if branches else {}
    return {name: value for name, value in branches}


def aggregate_foreach(state: dict[str, Any], items: list[Any], outputs: list[Any]) -> Any:
    """Iteration outputs in item order -> the foreach step's output (Station: `{results, count}`)."""
    if flow(state).get("aggregation") == "merge":
        merged: dict[str, Any] = {}
        for value in outputs:
            if isinstance(value, dict):
                merged.update(value)
        return merged
    return {"results": outputs, "count": len(outputs)}


def scope_output(scope: dict[str, Any]) -> Any:
    """What a branch or iteration produced: its steps' outputs merged (Station), else the last one."""
    merged = scope.get("outputs")
    if isinstance(merged, dict) and merged:
        return merged
    return scope.get("last") if scope.get("last") is not None else {}


def remember(scope: dict[str, Any], output: Any) -> None:
    """A branch or iteration's output merges its steps' outputs, as Station's executors do."""
    if isinstance(output, dict):
        scope["outputs"] = {**(scope.get("outputs") or {}), **output}  # a new dict: the old one may be shared


def output_schema_error(defn: dict[str, Any], final: Any) -> dict[str, Any] | None:
    """The run's final output against the workflow's `outputSchema`: None, or the run's error."""
    schema = defn.get("outputSchema")
    if not schema:
        return None
    validator = validator_for(schema)(schema)
    problems = sorted(validator.iter_errors(final), key=lambda e: list(e.path))
    if not problems:
        return None
    first = problems[0]
    where = "/".join(str(p) for p in first.absolute_path) or "(root)"
    return {"type": "output_schema",
            "message": f"the workflow's final output does not match its outputSchema at {where}: {first.message}",
            "details": {"errors": [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
                                   for e in problems[:10]], "output": final}}


def retryable(state: dict[str, Any], error: dict[str, Any]) -> bool:
    """`retry_on: [timeout, agent_error]`: only those kinds are retried; without it, every error is."""
    kinds = flow(state).get("retryOn")
    if not kinds:
        return True
    kind = error.get("type") or "agent_error"
    aliases = {kind, "timeout" if kind == "timeout" else "agent_error"}
    return bool(aliases & set(kinds))
