"""Workflow definitions: YAML/JSON text -> one validated, normalized plain dict (the dsl's entry points).

Two dialects are accepted (DESIGN 4): the PRD's canonical syntax and the files written for Station
itself. Both normalize to the canonical shape, so the engine and every validator see one form only.
Validation is strict (unknown keys are errors), and every problem names the file, line and path of the
offending key, because users fix files, not stack traces.

The room: `spec` (grammar tables), `problems` (reporting), `yaml_marks` (YAML with marks), `checker`
(definition, scopes, reachability, routing), `states` (one check per state type), `fields` (field,
expression and template checks), `diagnostics` (Starlark/template error positions). The dsl imports
`expr/` (the language's kernel) and nothing above it.
"""

from __future__ import annotations

from station_wf import strict_json

__all__ = ["iter_states", "load_definition_file", "normalize_definition", "parse_definition"]

import json
import math
import os
from collections.abc import Iterator
from typing import Any

from station_wf.dsl import limits
from station_wf.dsl.checker import Checker
from station_wf.dsl.problems import DefinitionError, PathT, Problem, Report
from station_wf.dsl.spec import MISSING, kind_of
from station_wf.dsl.yaml_marks import Builder, TooLarge, compose, mark_of_node, report_yaml_error


def parse_definition(text: str, source: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Parse YAML (or JSON) text into the normalized form; raises DefinitionError naming file and line."""
    source_name = os.fspath(source) if source is not None else None
    report = Report(source_name)
    too_big = limits.document_size_problem(text)
    if too_big:
        report.add((), None, too_big)
        report.raise_if_any()
    is_json_file = (source_name or "").endswith(".json")
    looks_json = is_json_file or text.lstrip().startswith(("{", "["))
    json_value: Any = MISSING
    if looks_json:  # YAML would accept things JSON does not (`{"a": }`): a .json file must be JSON
        try:
            json_value = json.loads(text, parse_constant=strict_json.parse_constant, parse_float=strict_json.parse_float)
        except json.JSONDecodeError as exc:
            if is_json_file:
                report.add((), (exc.lineno, exc.colno), f"invalid JSON: {exc.msg}")
        except ValueError as exc:
            if is_json_file:
                report.add((), None, f"invalid JSON: {exc}")
        except RecursionError:
            if is_json_file:
                report.add((), None, "the document is nested too deeply")
        report.raise_if_any()
    root, composed, yaml_error = compose(text, looks_json)
    if root is MISSING:  # YAML refused it; JSON may still accept it (without line numbers)
        value = _parse_json(text, report) if looks_json else MISSING
        if value is MISSING:
            report_yaml_error(yaml_error, report)
        report.raise_if_any()
        _check_limits(value, report)
        return Checker(report, {}).definition(value)
    if root is None:
        report.add((), None, "the definition is empty; expected a mapping with 'id', 'start' and 'states'")
        report.raise_if_any()
    builder = Builder(report)
    try:
        value = builder.build(root, ())
    except TooLarge as exc:
        report.add((), None, str(exc))
        report.raise_if_any()
    except RecursionError:
        report.add((), None, "the document is nested too deeply")
        report.raise_if_any()
    if json_value is not MISSING:  # YAML only locates; JSON's reading of values wins (YAML 1.1 reads 1e5
        value = json_value  # as a string and folds a raw U+0085 into a space)
    # Duplicate keys and odd tags are reported but the tree is complete: go on and collect everything.
    report.marks = builder.marks
    report.marks[()] = mark_of_node(root)
    report.nodes = builder.nodes
    report.text = composed
    _check_limits(value, report)
    return Checker(report, builder.raw).definition(value)


def _check_limits(value: Any, report: Report) -> None:
    """Size, depth and number limits first, without recursion: the checker below recurses."""
    for path, message in limits.check_document(value):
        report.error(path, message)
    report.raise_if_any()



def load_definition_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a workflow file and normalize it; unreadable files are DefinitionErrors too."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DefinitionError([Problem(name, None, "", f"cannot read file: {reason}")]) from exc
    return parse_definition(text, source=name)


def normalize_definition(obj: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    """Normalize an already-parsed body (API JSON): same rules, but no line numbers to report."""
    report = Report(source)
    _check_limits(obj, report)
    _check_json_value(obj, (), report)
    report.raise_if_any()
    return Checker(report, {}).definition(obj)


def iter_states(defn: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every state of a normalized definition, depth first in file order, with its scope path.

    The scope path is "" at the top level, "<parallel>.<branch>" inside a branch, "<foreach>" inside an
    iterator and "<try>.try|catch|finally" inside a try block, nested scopes joined with '.'.
    """
    yield from _iter_scope(defn["states"], "")


def _iter_scope(states: dict[str, dict[str, Any]], scope: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, state in states.items():
        yield scope, state
        prefix = f"{scope}.{name}" if scope else name
        kind = state["type"]
        if kind == "parallel":
            for branch in state["branches"]:
                yield from _iter_scope(branch["states"], f"{prefix}.{branch['name']}")
        elif kind == "foreach":
            yield from _iter_scope(state["iterator"]["states"], prefix)
        elif kind == "try":
            for part in ("try", "catch", "finally"):
                block = state.get(part)
                if block:
                    yield from _iter_scope(block["states"], f"{prefix}.{part}")



def _parse_json(text: str, report: Report) -> Any:
    """JSON the YAML parser refused (or MISSING); duplicate keys are still errors, though without lines."""

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                report.add((), None, f"duplicate key '{key}'")
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=pairs_hook, parse_constant=strict_json.parse_constant, parse_float=strict_json.parse_float)
    except (ValueError, RecursionError):
        return MISSING


def _check_json_value(value: Any, path: PathT, report: Report) -> None:
    """API bodies may be any Python object; the stored form must be plain JSON."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                report.error(path, f"mapping keys must be strings, got {kind_of(key)} {key!r}")
                continue
            _check_json_value(item, (*path, key), report)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json_value(item, (*path, index), report)
    elif isinstance(value, float) and not math.isfinite(value):
        report.error(path, "numbers must be finite")
    elif value is not None and not isinstance(value, str | int | float | bool):
        report.error(path, f"not a JSON value: {type(value).__name__}")
