"""Definition-load checks of a workflow's agents (PRD 3.4), over a NORMALIZED definition.

What is checked, for every `agent.run` state (any depth: parallel branches, foreach iterators, try
blocks):

Errors (the workflow cannot work):
  * the agent (`name` or `name@env`) does not exist, or its file does not load.

Warnings (the workflow will fail at run time, or very probably):
  * a property the agent's input schema requires is not set in the step's `variables`;
  * a literal (template-free) variable value that its input schema rejects;
  * static wiring between agents: a variable that is exactly one template of a dotted path,
    `{{ steps.a.x }}`, that reads the result of an earlier agent state A (its `resultPath`, default
    `steps.<A>`, in the same scope or an enclosing one). The part of A's output schema at that path is
    compared with the property of B's input schema: a property A's schema does not declare, types
    that cannot meet, enum values B does not accept, required nested properties A does not produce
    (or produces only optionally), array items likewise. Each warning names both agent files and the
    schema paths.

Anything dynamic (an agent name or a variable built by an expression) is skipped, never guessed.
Schema keywords we do not understand count as compatible, so a warning points at a real mismatch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from station_wf.agents.catalog import AgentCatalog, AgentFileError, AgentSpec, split_agent_ref
from station_wf.agents.schemas import incompatibilities, sub_schema, validation_errors
from station_wf.dsl.loader import iter_states
from station_wf.expr.paths import PathError, parse_path

_STATIC_REF = re.compile(r"^\s*\{\{\s*([A-Za-z_$][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+|\[\d+\])*)\s*\}\}\s*$")


@dataclass(frozen=True)
class _AgentStep:
    label: str
    scope: str
    state: dict[str, Any]
    spec: AgentSpec

    @property
    def variables(self) -> dict[str, Any]:
        value = (self.state.get("input") or {}).get("variables")
        return value if isinstance(value, dict) else {}

    @property
    def result_path(self) -> list[str]:
        raw = self.state.get("resultPath")
        return _path_segments(raw) if isinstance(raw, str) else ["steps", self.state["name"]]


def _path_segments(path: str) -> list[str]:
    """A DESIGN 3 path as string keys (`a[0]` = `a.0`), parsed by the one path parser (`expr.paths`)."""
    try:
        return [str(segment) for segment in parse_path(path)]
    except PathError:  # the loader refuses such paths; nothing to wire
        return []


def _label(scope: str, name: str) -> str:
    return f"state '{scope}.{name}'" if scope else f"state '{name}'"


def _has_template(value: Any) -> bool:
    if isinstance(value, str):
        return "{{" in value
    if isinstance(value, dict):
        return any(_has_template(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_template(v) for v in value)
    return False


def _pointer(trail: list[str]) -> str:
    return "".join(f".{seg}" for seg in trail)


def check_definition_agents(defn: dict[str, Any], catalog: AgentCatalog) -> tuple[list[str], list[str]]:
    """(errors, warnings) about the agents a normalized definition uses; see the module docstring."""
    errors: list[str] = []
    warnings: list[str] = []
    steps: list[_AgentStep] = []
    for scope, state in iter_states(defn):
        if state.get("type") != "operation" or state.get("action") != "agent.run":
            continue
        ref = (state.get("input") or {}).get("agent")
        label = _label(scope, state["name"])
        if not isinstance(ref, str) or not ref.strip() or "{{" in ref:
            continue  # missing/ill-typed is the loader's error; a templated name is only known at run time
        try:
            spec, found_in = catalog.resolve(ref.strip())
        except AgentFileError as exc:
            errors.append(f"{label}: agent {ref!r}: {exc}")
            continue
        if spec is None:
            name = split_agent_ref(ref)[0]
            why = found_in.broken.get(name)
            errors.append(f"{label}: agent {ref!r} " + (f"does not load: {why}" if why
                                                        else f"not found in {found_in.directory}"))
            continue
        steps.append(_AgentStep(label, scope, state, spec))
    for step in steps:
        warnings += _check_variables(step)
        warnings += _check_wiring(step, steps)
    return errors, warnings


def _input_property(spec: AgentSpec, key: str) -> dict[str, Any] | None:
    props = (spec.input_schema or {}).get("properties")
    found = props.get(key) if isinstance(props, dict) else None
    return found if isinstance(found, dict) else None


def _check_variables(step: _AgentStep) -> list[str]:
    schema = step.spec.input_schema
    if schema is None:
        return []
    out: list[str] = []
    variables = step.variables
    where = f"agent '{step.spec.name}' ({step.spec.source_file})"
    for key in schema.get("required") or []:
        if key not in variables:
            out.append(f"{step.label}: {where} requires input.schema.properties.{key}, "
                       f"but the step's variables do not set '{key}'")
    for key, value in variables.items():
        prop = _input_property(step.spec, key)
        if prop is None or _has_template(value):
            continue
        # A sub-schema with a $ref to the root cannot be checked alone: skip what cannot be evaluated.
        problems = [p for p in validation_errors(value, prop) if not p.startswith("(schema)")]
        if problems:
            out.append(f"{step.label}: variables.{key} = {value!r} does not match {where} "
                       f"input.schema.properties.{key}: {problems[0]}")
    return out


def _source(step: _AgentStep, other: _AgentStep) -> bool:
    """Can `step` read what `other` wrote? Same scope, or `other` in an enclosing scope."""
    if other is step:
        return False
    return other.scope == "" or step.scope == other.scope or step.scope.startswith(other.scope + ".")


def _check_wiring(step: _AgentStep, steps: list[_AgentStep]) -> list[str]:
    out: list[str] = []
    if step.spec.input_schema is None:
        return out
    for key, value in step.variables.items():
        accepted = _input_property(step.spec, key)
        match = _STATIC_REF.match(value) if isinstance(value, str) else None
        if accepted is None or match is None:
            continue
        ref = _path_segments(match.group(1))
        source, remainder = _find_source(step, steps, ref)
        if source is None or source.spec.output_schema is None:
            continue
        produced, trail, issues = sub_schema(source.spec.output_schema, remainder)
        if produced is not None:
            issues += incompatibilities(produced, accepted, key)
        for issue in issues:
            out.append(
                f"{step.label}: variables.{key} = '{value.strip()}' reads {source.label}'s result: "
                f"agent '{source.spec.name}' ({source.spec.source_file}, output.schema{_pointer(trail)}) "
                f"cannot satisfy agent '{step.spec.name}' ({step.spec.source_file}, "
                f"input.schema.properties.{key}): {issue}"
            )
    return out


def _find_source(step: _AgentStep, steps: list[_AgentStep], ref: list[str]) -> tuple[_AgentStep | None, list[str]]:
    """The agent state whose result the path reads (the longest matching resultPath wins)."""
    best: _AgentStep | None = None
    best_len = -1
    for other in steps:
        if not _source(step, other):
            continue
        prefix = other.result_path
        if ref[: len(prefix)] != prefix or len(prefix) <= best_len:
            continue
        if not prefix:  # resultPath: ctx merges into the root: only claim names its schema declares
            props = (other.spec.output_schema or {}).get("properties")
            if not ref or not isinstance(props, dict) or ref[0] not in props:
                continue
        best, best_len = other, len(prefix)
    return best, (ref[best_len:] if best is not None else [])
