"""Workflow definitions: YAML/JSON text -> one validated, normalized plain dict.

Two dialects are accepted (DESIGN 4): the PRD's canonical syntax and the files written for Station
itself. Both normalize to the canonical shape, so the engine and every validator see one form only.
Validation is strict (unknown keys are errors), and every problem names the file, line and path of the
offending key, because users fix files, not stack traces.
"""

from __future__ import annotations

import ast as pyast
import copy
import difflib
import json
import math
import os
import re
import textwrap
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import starlark as sl
import yaml
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

from station_wf.dsl import limits
from station_wf.dsl import station as station_dialect
from station_wf.expr import approvers as approver_rules
from station_wf.expr.cron import CronError, CronSchedule
from station_wf.expr.limits import MAX_EXPRESSION_BYTES, MAX_TEMPLATES_PER_STRING, expression_problem
from station_wf.expr.paths import PathError, parse_path
from station_wf.expr.starlark_eval import DIALECT, PROGRAM_DIALECT

__all__ = [
    "KNOWN_ACTIONS",
    "WORKFLOW_FILE_SUFFIXES",
    "DefinitionError",
    "Problem",
    "format_path",
    "iter_states",
    "load_definition_file",
    "normalize_definition",
    "parse_definition",
    "parse_duration",
]

WORKFLOW_FILE_SUFFIXES = (".workflow.yaml", ".workflow.yml", ".workflow.json")

KNOWN_ACTIONS = ("agent.run", "human.approval", "signal.wait")
ACTION_ALIASES = {"await": "signal.wait", "await.signal": "signal.wait"}

STATE_TYPES = (
    "operation", "agent", "human_approval", "inject", "switch", "parallel", "foreach",
    "transform", "sleep", "timer", "try", "cron",
)

# Input keys a `human.approval` / `onReject` / `onTimeout` may name (DESIGN 3).
APPROVAL_OUTCOMES = ("fail", "cancel", "continue")
JOIN_MODES = ("all", "any", "atLeast")
# Context keys the engine owns; a workflow input may not declare them (DESIGN 3).
RESERVED_INPUT_KEYS = ("workflow", "steps", "ctx")
# Names a foreach item may not take: they would shadow the context or iteration globals.
RESERVED_ITEM_NAMES = ("ctx", "steps", "workflow", "_index", "_total")

PathT = tuple[str | int, ...]
"""A location inside a definition: mapping keys and list indices, outermost first."""
Mark = tuple[int, int]
"""A 1-based (line, column) position in the source text."""

_MISSING: Any = object()

_TOP_KEYS = (
    "id", "version", "name", "description", "inputSchema", "timeoutSeconds", "start", "states",
    "schedules", "metadata", "specVersion",
)
_COMMON_KEYS = ("name", "id", "type", "next", "transition", "end", "resultPath", "description", "metadata")
_TYPE_KEYS: dict[str, tuple[str, ...]] = {
    "operation": ("action", "input", "timeoutSeconds", "retry"),
    "agent": ("agent", "task", "prompt", "input", "timeoutSeconds", "retry"),
    "human_approval": (
        "message", "prompt", "approvers", "timeout_seconds", "timeoutSeconds", "summaryPath", "onReject",
        "onTimeout",
    ),
    "inject": ("data",),
    "switch": ("dataPath", "conditions", "defaultNext"),
    "parallel": ("branches", "join"),
    "foreach": ("itemsPath", "itemName", "maxConcurrency", "iterator"),
    "transform": ("expression",),
    "sleep": ("duration", "durationSeconds"),
    "timer": ("duration", "durationSeconds"),
    "try": ("try", "catch", "finally"),
    "cron": ("cron", "timezone", "enabled", "input"),
}
_ANY_STATE_KEYS = tuple(dict.fromkeys(_COMMON_KEYS + tuple(k for keys in _TYPE_KEYS.values() for k in keys)))
# Common keys that make no sense for a type: reported with a specific message, not "unknown key".
_FORBIDDEN_COMMON: dict[str, dict[str, str]] = {
    "switch": {
        "next": "a switch state routes with 'conditions' and 'defaultNext'; 'next' is not allowed",
        "transition": "a switch state routes with 'conditions' and 'defaultNext'; 'transition' is not allowed",
        "end": "a switch state routes with 'conditions' and 'defaultNext'; 'end' is not allowed",
        "resultPath": "a switch state produces no result; 'resultPath' is not allowed",
    },
    "cron": {
        "end": "a cron state only marks the start of the workflow; it needs 'next', not 'end'",
        "resultPath": "a cron state produces no result; 'resultPath' is not allowed",
    },
}
_RETRY_KEYS = ("maxAttempts", "backoffSeconds", "backoffRate", "maxBackoffSeconds", "jitter")
_AGENT_INPUT_KEYS = ("agent", "task", "variables", "timeoutSeconds")
_APPROVAL_INPUT_KEYS = ("message", "approvers", "timeoutSeconds", "summaryPath", "onReject", "onTimeout")
# Station's snake_case input keys, renamed when an operation uses Station's `input.task: <action>` form.
_STATION_INPUT_RENAMES = {"agent_task": "task", "timeout_seconds": "timeoutSeconds", "summary_path": "summaryPath"}

_WORKFLOW_ID_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
# No dots: state and branch names are joined with '.' into scope paths and `steps.<name>` result paths.
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLAIN_KEY_RE = re.compile(r"^[A-Za-z0-9_$-]+$")
_DURATION_RE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+$")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_YAML_STR = "tag:yaml.org,2002:str"
_YAML_SCALARS = (
    _YAML_STR, "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
)
_YAML_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_YAML_MAP = "tag:yaml.org,2002:map"
_YAML_SEQ = "tag:yaml.org,2002:seq"
_YAML_MERGE = "tag:yaml.org,2002:merge"
_MAX_NODES = 200_000
# libyaml composes ~7x faster than the pure-Python parser (a 750 KB file: 1.7 s instead of 11.6 s), with
# the same node tree and marks; the pure one stays the fallback where the wheel has no libyaml.
_COMPOSER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


# --------------------------------------------------------------------------------------------------
# Problems


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a definition, located as precisely as the input allows."""

    file: str | None
    line: int | None
    path: str
    message: str
    column: int | None = None

    def __str__(self) -> str:
        """`FILE:LINE:COL: PATH: MESSAGE`, the shape editors and compilers use, so tools can jump there."""
        where = self.file or ""
        if self.line is not None:
            pos = f"{self.line}:{self.column}" if self.column is not None else str(self.line)
            where = f"{where}:{pos}" if where else f"line {pos}"
        return ": ".join(part for part in (where, self.path, self.message) if part)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form the API returns."""
        return {"file": self.file, "line": self.line, "column": self.column, "path": self.path,
                "message": self.message}


class DefinitionError(Exception):
    """One or more problems in a definition; str() is one readable line per problem."""

    problems: list[Problem]
    workflow_id: str | None
    """The definition's `id` when it could be read, so callers can say which workflow is broken."""

    def __init__(self, problems: Iterable[Problem], workflow_id: str | None = None) -> None:
        self.problems = list(problems)
        self.workflow_id = workflow_id
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems, self.workflow_id))


def format_path(path: PathT) -> str:
    """Render a path the way users read it: `states[2].input.agent`, odd keys as `["a b"]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY_RE.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


def _kind(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_template(value: Any) -> bool:
    """Input values may be `{{ }}` templates rendered at run time; their type is unknown here."""
    return isinstance(value, str) and "{{" in value


# --------------------------------------------------------------------------------------------------
# YAML: compose, then build plain values ourselves so every path keeps its line


class _Builder:
    """Plain values from a composed YAML node tree, with the 1-based line of every path."""

    def __init__(self, report: _Report) -> None:
        self.report = report
        self.marks: dict[PathT, Mark] = {}
        self.raw: dict[PathT, str] = {}
        self.nodes: dict[PathT, yaml.ScalarNode] = {}
        self._loader = yaml.SafeLoader("")
        self._active: set[int] = set()
        self._count = 0
        self._merged = 0

    def build(self, node: yaml.Node, path: PathT) -> Any:
        self._count += 1
        if self._count > _MAX_NODES:
            raise _TooLarge
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if id(node) in self._active:
            self.report.add(path, _mark(node), "recursive YAML alias")
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _YAML_SEQ:
                    self.report.add(path, _mark(node), f"unsupported YAML tag {node.tag!r}")
                    return None
                out: list[Any] = []
                for index, item in enumerate(node.value):
                    item_path = (*path, index)
                    self.marks[item_path] = _mark(item)
                    out.append(self.build(item, item_path))
                return out
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            self.report.add(path, _mark(node), "unsupported YAML node")
            return None
        finally:
            self._active.discard(id(node))

    def _scalar(self, node: yaml.ScalarNode, path: PathT) -> Any:
        self.raw[path] = node.value
        self.nodes[path] = node
        if node.tag == _YAML_TIMESTAMP:
            return node.value  # keep what the user wrote: datetimes are not JSON
        if node.tag not in _YAML_SCALARS:
            self.report.add(path, _mark(node), f"unsupported YAML tag {node.tag!r}")
            return None
        try:
            value = self._loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError) as exc:
            self.report.add(path, _mark(node), f"invalid {node.tag.rsplit(':', 1)[-1]} value: {exc}")
            return None
        if node.style == '"' and isinstance(value, str) and _SURROGATE_RE.search(value):
            # JSON writes astral characters as escaped surrogate pairs; YAML leaves them unpaired.
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value

    def _key(self, node: yaml.Node, path: PathT) -> str | None:
        """Keys are the text written (so `on:` stays "on", not True); complex keys are refused."""
        if not isinstance(node, yaml.ScalarNode):
            self.report.add(path, _mark(node), "mapping keys must be plain strings")
            return None
        return str(node.value)

    def _mapping(self, node: yaml.MappingNode, path: PathT) -> dict[str, Any]:
        if node.tag != _YAML_MAP:
            self.report.add(path, _mark(node), f"unsupported YAML tag {node.tag!r}")
            return {}
        explicit: list[tuple[yaml.Node, yaml.Node]] = []
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _YAML_MERGE:
                merges.append(value_node)
            else:
                explicit.append((key_node, value_node))
        explicit_keys = {k.value for k, _ in explicit if isinstance(k, yaml.ScalarNode)}
        out: dict[str, Any] = {}
        for merge in merges:  # `<<: *anchor`: merged keys first, explicit keys override them
            for key_node, value_node in self._merge_pairs(merge, path, depth=0):
                key = str(key_node.value)
                if key in explicit_keys or key in out:
                    continue
                key_path = (*path, key)
                self.marks[key_path] = _mark(key_node)
                out[key] = self.build(value_node, key_path)
        first_line: dict[str, int] = {}
        for key_node, value_node in explicit:
            key = self._key(key_node, path)
            if key is None:
                continue
            key_path = (*path, key)
            if key in first_line:
                self.report.add(
                    key_path, _mark(key_node), f"duplicate key '{key}' (first defined on line {first_line[key]})"
                )
                continue
            first_line[key] = _line(key_node)
            self.marks[key_path] = _mark(key_node)
            out[key] = self.build(value_node, key_path)
        return out

    def _merge_pairs(self, node: yaml.Node, path: PathT, depth: int) -> list[tuple[yaml.Node, yaml.Node]]:
        """The (key, value) pairs a `<<` merge brings in, nested merges flattened, earlier sources winning."""
        if depth > 32:
            self.report.add(path, _mark(node), "YAML merge keys nested too deeply")
            return []
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        pairs: list[tuple[yaml.Node, yaml.Node]] = []
        seen: set[str] = set()
        for source in sources:
            self._merged += 1 + len(getattr(source, "value", ()))  # the work doubles per level of a bomb
            if self._merged > limits.MAX_MERGE_PAIRS:
                raise _TooLarge(f"YAML '<<' merge keys expand to more than {limits.MAX_MERGE_PAIRS} pairs")
            if not isinstance(source, yaml.MappingNode):
                self.report.add(path, _mark(source), "a '<<' merge needs a mapping or a list of mappings")
                continue
            own = [(k, v) for k, v in source.value if k.tag != _YAML_MERGE and isinstance(k, yaml.ScalarNode)]
            own_keys = {str(k.value) for k, _ in own}
            inherited: list[tuple[yaml.Node, yaml.Node]] = []
            for k, v in source.value:
                if k.tag == _YAML_MERGE:
                    inherited += [p for p in self._merge_pairs(v, path, depth + 1) if str(p[0].value) not in own_keys]
            for k, v in inherited + own:
                if str(k.value) not in seen:
                    seen.add(str(k.value))
                    pairs.append((k, v))
        return pairs


class _TooLarge(Exception):
    """The document expands to more nodes than any workflow needs (alias and merge-key bombs)."""

    def __init__(self, message: str = f"the document expands to more than {_MAX_NODES} YAML nodes") -> None:
        super().__init__(message)


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _mark(node: yaml.Node) -> Mark:
    return int(node.start_mark.line) + 1, int(node.start_mark.column) + 1


class _Report:
    """Collects problems; resolves a path's position from the nearest located ancestor."""

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.problems: list[Problem] = []
        self.marks: dict[PathT, Mark] = {}
        # Only for YAML/JSON text: the scalar nodes and the text they came from, to locate a position
        # *inside* a string (a Starlark syntax error, a broken template) when an error needs it.
        self.nodes: dict[PathT, yaml.ScalarNode] = {}
        self.text: str | None = None
        self.workflow_id: str | None = None

    def add(self, path: PathT, mark: Mark | None, message: str) -> None:
        line, column = mark if mark is not None else (None, None)
        self.problems.append(Problem(self.source, line, format_path(path), message, column))

    def error(self, path: PathT, message: str) -> None:
        self.add(path, self.mark_of(path), message)

    def mark_of(self, path: PathT) -> Mark | None:
        probe = path
        while True:
            if probe in self.marks:
                return self.marks[probe]
            if not probe:
                return None
            probe = probe[:-1]

    def inside(self, path: PathT, offset: int) -> Mark | None:
        """Where character `offset` of the string at `path` is in the file, if the scalar maps 1:1.

        Plain and quoted one-line scalars without escapes, and literal (`|`) blocks, map directly; folded
        or escaped scalars do not, and then the caller falls back to the key's position.
        """
        node = self.nodes.get(path)
        if node is None or self.text is None or not 0 <= offset <= len(node.value):
            return None
        value = node.value
        start = node.start_mark
        if node.style in (None, '"', "'"):
            quote = 1 if node.style else 0
            written = self.text[start.index + quote:node.end_mark.index - quote]
            if written != value or "\n" in value:
                return None
            return start.line + 1, start.column + quote + offset + 1
        if node.style == "|":
            k = value.count("\n", 0, offset)
            col = offset - (value.rfind("\n", 0, offset) + 1)
            lines = self.text.split("\n", start.line + k + 2)
            index = start.line + 1 + k  # the block starts on the line after its `|` header
            if index >= len(lines):
                return None
            written, line_value = lines[index], value.split("\n")[k]
            if not written.endswith(line_value):
                return None
            return index + 1, len(written) - len(line_value) + col + 1
        return None

    def raise_if_any(self) -> None:
        if self.problems:
            ordered = sorted(self.problems, key=lambda p: (p.line is None, p.line or 0, p.column or 0))
            raise DefinitionError(ordered, self.workflow_id)


# --------------------------------------------------------------------------------------------------
# Public entry points


def parse_definition(text: str, source: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Parse YAML (or JSON) text into the normalized form; raises DefinitionError naming file and line."""
    source_name = os.fspath(source) if source is not None else None
    report = _Report(source_name)
    too_big = limits.document_size_problem(text)
    if too_big:
        report.add((), None, too_big)
        report.raise_if_any()
    is_json_file = (source_name or "").endswith(".json")
    looks_json = is_json_file or text.lstrip().startswith(("{", "["))
    json_value: Any = _MISSING
    if looks_json:  # YAML would accept things JSON does not (`{"a": }`): a .json file must be JSON
        try:
            json_value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
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
    root, composed, yaml_error = _compose(text, looks_json)
    if root is _MISSING:  # YAML refused it; JSON may still accept it (without line numbers)
        value = _parse_json(text, report) if looks_json else _MISSING
        if value is _MISSING:
            _report_yaml_error(yaml_error, report)
        report.raise_if_any()
        _check_limits(value, report)
        return _Checker(report, {}).definition(value)
    if root is None:
        report.add((), None, "the definition is empty; expected a mapping with 'id', 'start' and 'states'")
        report.raise_if_any()
    builder = _Builder(report)
    try:
        value = builder.build(root, ())
    except _TooLarge as exc:
        report.add((), None, str(exc))
        report.raise_if_any()
    except RecursionError:
        report.add((), None, "the document is nested too deeply")
        report.raise_if_any()
    if json_value is not _MISSING:  # YAML only locates; JSON's reading of values wins (YAML 1.1 reads 1e5
        value = json_value  # as a string and folds a raw U+0085 into a space)
    # Duplicate keys and odd tags are reported but the tree is complete: go on and collect everything.
    report.marks = builder.marks
    report.marks[()] = _mark(root)
    report.nodes = builder.nodes
    report.text = composed
    _check_limits(value, report)
    return _Checker(report, builder.raw).definition(value)


def _check_limits(value: Any, report: _Report) -> None:
    """Size, depth and number limits first, without recursion: the checker below recurses."""
    for path, message in limits.check_document(value):
        report.error(path, message)
    report.raise_if_any()


def _compose(text: str, looks_json: bool) -> tuple[Any, str, Exception | None]:
    """The YAML node tree (None for an empty document) and the text composed, or _MISSING and the error."""
    try:
        return yaml.compose(text, Loader=_COMPOSER), text, None
    except (yaml.YAMLError, RecursionError) as exc:
        error: Exception = exc
    if looks_json:  # JSON allows tabs as whitespace, YAML does not; outside JSON strings they are only that
        untabbed = text.replace("\t", " ")
        try:
            return yaml.compose(untabbed, Loader=_COMPOSER), untabbed, None
        except (yaml.YAMLError, RecursionError):
            pass
    return _MISSING, text, error


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
    report = _Report(source)
    _check_limits(obj, report)
    _check_json_value(obj, (), report)
    report.raise_if_any()
    return _Checker(report, {}).definition(obj)


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


def _report_yaml_error(exc: Exception | None, report: _Report) -> None:
    """A YAML syntax error as one problem, located by the parser's mark."""
    if isinstance(exc, RecursionError):
        report.add((), None, "the document is nested too deeply")
    elif isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        position = (mark.line + 1, mark.column + 1) if mark is not None else None
        message = exc.problem or str(exc)
        if exc.context:
            message += f" ({exc.context})"
        report.add((), position, f"invalid YAML: {message}")
    else:
        report.add((), None, f"invalid YAML: {exc}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _parse_json(text: str, report: _Report) -> Any:
    """JSON the YAML parser refused (or _MISSING); duplicate keys are still errors, though without lines."""

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                report.add((), None, f"duplicate key '{key}'")
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=pairs_hook, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        return _MISSING


def _check_json_value(value: Any, path: PathT, report: _Report) -> None:
    """API bodies may be any Python object; the stored form must be plain JSON."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                report.error(path, f"mapping keys must be strings, got {_kind(key)} {key!r}")
                continue
            _check_json_value(item, (*path, key), report)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json_value(item, (*path, index), report)
    elif isinstance(value, float) and not math.isfinite(value):
        report.error(path, "numbers must be finite")
    elif value is not None and not isinstance(value, str | int | float | bool):
        report.error(path, f"not a JSON value: {type(value).__name__}")


def _json_copy(value: Any) -> Any:
    """A deep copy that turns tuples into lists, so the result is plain JSON."""
    if isinstance(value, dict):
        return {key: _json_copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_copy(item) for item in value]
    return copy.copy(value)


def parse_duration(value: str) -> float | None:
    """'30s', '5m', '1h30m', '250ms', '1d' or a bare number of seconds -> seconds; None if malformed."""
    text = value.strip()
    if len(text) > 64:  # a 5,000-digit number is not a duration (and float() reads it as inf)
        return None
    try:
        seconds = float(text)
    except ValueError:
        if not _DURATION_RE.match(text):
            return None
        seconds = sum(float(amount) * _DURATION_UNITS[unit] for amount, unit in _DURATION_PART_RE.findall(text))
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _canonical_action(name: str) -> str | None:
    if name in KNOWN_ACTIONS:
        return name
    return ACTION_ALIASES.get(name)


# --------------------------------------------------------------------------------------------------
# Validation and normalization


@dataclass
class _Parsed:
    """One state as parsed: its normalized dict, the targets it names, and the schedule if it is cron."""

    name: str | None
    name_path: PathT
    state: dict[str, Any] | None
    refs: list[tuple[str, PathT]]
    schedule: dict[str, Any] | None = None


@dataclass
class _Cron:
    name: str
    path: PathT
    schedule: dict[str, Any]
    next: str | None


@dataclass
class _Scope:
    """One scope's states plus what the reachability check needs: where each state is, where it goes."""

    states: dict[str, dict[str, Any]]
    crons: list[_Cron]
    paths: dict[str, PathT]
    edges: dict[str, list[str]]
    # False when a state is broken (no name, bad type, duplicate) or a target is unknown: its edges are
    # not known for sure, and reporting "unreachable" on top would be noise until that is fixed.
    complete: bool


class _Checker:
    """Walks a plain definition value, collecting problems and building the normalized form."""

    def __init__(self, report: _Report, raw: dict[PathT, str]) -> None:
        self.report = report
        self.raw = raw
        self.statements_ok = False  # Station transforms are programs whose last expression is the output

    def error(self, path: PathT, message: str) -> None:
        self.report.error(path, message)

    # ---- top level -------------------------------------------------------------------------------

    def definition(self, obj: Any) -> dict[str, Any]:
        if not isinstance(obj, dict):
            self.error((), f"the top level must be a mapping, got {_kind(obj)}")
            self.report.raise_if_any()
        obj, prep = station_dialect.prepare(obj, self.report.marks)  # DESIGN 4: Station's dialect
        self.statements_ok = prep.dialect == "station"
        self._unknown_keys(obj, (), _TOP_KEYS, "at the top level")
        wf_id = self._str(obj, "id", (), required=True)
        if wf_id is not None and not _WORKFLOW_ID_RE.match(wf_id):
            self.error(("id",), f"workflow id '{wf_id}' may contain only letters, digits, '_', '-' and '.'")
        elif wf_id is not None and limits.reserved_id_problem(wf_id):
            self.error(("id",), str(limits.reserved_id_problem(wf_id)))
        else:
            self.report.workflow_id = wf_id
        input_schema = self._input_schema(obj)
        schedules = self._schedules(obj)
        start = self._str(obj, "start", (), required=True)
        scope = _Scope({}, [], {}, {}, complete=False)
        items = self._list(obj, "states", (), required=True)
        if items is not None:
            if not items:
                self.error(("states",), "a workflow needs at least one state")
            scope = self._scope_states(items, ("states",), top_level=True)
        states = scope.states
        start = self._resolve_cron_start(start, scope.crons, schedules, states)
        self._reachable(scope, start)
        result = {
            "id": wf_id,
            "versionLabel": self._label(obj, "version"),
            "name": self._str(obj, "name", (), nonempty=False),
            "description": self._str(obj, "description", (), nonempty=False),
            "specVersion": self._label(obj, "specVersion"),
            "metadata": self._metadata(obj, ()),
            "inputSchema": input_schema,
            "timeoutSeconds": self._number(obj, "timeoutSeconds", (), minimum=0, exclusive=True),
            "start": start,
            "schedules": schedules,
            "states": states,
        }
        self.report.raise_if_any()
        return station_dialect.finish(result, prep, self.report)

    def _resolve_cron_start(
        self,
        start: str | None,
        crons: list[_Cron],
        schedules: list[dict[str, Any]],
        states: dict[str, dict[str, Any]],
    ) -> str | None:
        """A cron state registers a schedule and hands `start` on to its `next` (Station dialect)."""
        from_cron = False
        for cron in crons:
            if start is None:
                continue  # the missing start is reported already
            if start != cron.name:
                self.error(
                    cron.path,
                    f"cron state '{cron.name}' must be the workflow's start state (start is '{start}')",
                )
                continue
            schedules.append(cron.schedule)
            start = cron.next
            from_cron = True
        if start is not None and not from_cron and start not in states:
            self.error(("start",), f"start names unknown state '{start}'{_choices(states)}")
        return start

    def _label(self, obj: dict[str, Any], key: str) -> str | None:
        """`version: 1.10` must stay "1.10": prefer the scalar as written over the parsed number."""
        if key not in obj or obj[key] is None:
            return None
        value = obj[key]
        if isinstance(value, str):
            return value
        if _is_number(value):
            return self.raw.get((key,), str(value))
        self.error((key,), f"must be a string, got {_kind(value)}")
        return None

    def _input_schema(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        schema = self._dict(obj, "inputSchema", ())
        if schema is None:
            return None
        path: PathT = ("inputSchema",)
        too_big = limits.schema_size_problem(schema)
        if too_big:  # checking a schema against its meta-schema grows fast with its size
            self.error(path, too_big)
            return None
        try:
            validator_for(schema).check_schema(schema)
        except SchemaError as exc:
            self.error((*path, *exc.path), f"not a valid JSON Schema: {exc.message}")
            return None
        if "type" in schema and schema["type"] != "object":
            self.error((*path, "type"), "a workflow input is an object: inputSchema type must be 'object'")
        properties = schema.get("properties")
        if isinstance(properties, dict):
            for key in properties:
                if key in RESERVED_INPUT_KEYS:
                    self.error((*path, "properties", key), f"input key '{key}' is reserved by the engine")
        return _json_copy(schema)

    def _schedules(self, obj: dict[str, Any]) -> list[dict[str, Any]]:
        items = self._list(obj, "schedules", ())
        out: list[dict[str, Any]] = []
        for index, item in enumerate(items or []):
            path: PathT = ("schedules", index)
            if not isinstance(item, dict):
                self.error(path, f"a schedule must be a mapping, got {_kind(item)}")
                continue
            self._unknown_keys(item, path, ("cron", "timezone", "enabled", "input"), "in a schedule")
            schedule = self._schedule(item, path)
            if schedule is not None:
                out.append(schedule)
        return out

    def _schedule(self, item: dict[str, Any], path: PathT) -> dict[str, Any] | None:
        """The shared fields of a `schedules:` entry and a cron state."""
        expr = self._str(item, "cron", path, required=True)
        if expr is not None:  # the scheduler's own parser: what loads here fires there
            try:
                CronSchedule.parse(expr)
            except CronError as exc:
                self.error((*path, "cron"), str(exc))
                expr = None
        timezone = self._str(item, "timezone", path)
        if timezone is not None:
            try:
                CronSchedule.parse("@daily", timezone)
            except CronError as exc:
                self.error((*path, "timezone"), str(exc))
        enabled = self._bool(item, "enabled", path, default=True)
        variables = self._dict(item, "input", path)
        if expr is None:
            return None
        return {
            "cron": " ".join(expr.split()),
            "timezone": timezone or "UTC",
            "enabled": enabled,
            "input": _json_copy(variables) if variables is not None else {},
        }

    # ---- scopes ----------------------------------------------------------------------------------

    def _scope_states(
        self, items: list[Any], path: PathT, *, top_level: bool
    ) -> tuple[dict[str, dict[str, Any]], list[_Cron]]:
        """The states of one scope; every transition must name a state of this same scope."""
        states: dict[str, dict[str, Any]] = {}
        seen: dict[str, PathT] = {}
        refs: list[tuple[str, PathT]] = []
        crons: list[_Cron] = []
        edges: dict[str, list[str]] = {}
        complete = True
        for index, item in enumerate(items):
            parsed = self._state(item, (*path, index))
            if parsed.name is None:
                complete = False
                continue
            if parsed.name in seen:
                self.error(
                    parsed.name_path,
                    f"duplicate state name '{parsed.name}' (first used at {format_path(seen[parsed.name])})",
                )
                complete = False
                continue
            seen[parsed.name] = (*path, index)
            if parsed.schedule is not None:
                if not top_level:
                    self.error(
                        (*path, index, "type"),
                        "a cron state may only be the workflow's start state, not inside a branch or block",
                    )
                    continue
                refs += parsed.refs
                nxt = parsed.refs[0][0] if parsed.refs else None
                crons.append(_Cron(parsed.name, (*path, index), parsed.schedule, nxt))
                continue
            refs += parsed.refs
            edges[parsed.name] = [target for target, _ in parsed.refs]
            if parsed.state is not None:
                states[parsed.name] = parsed.state
            else:
                complete = False
        cron_names = {cron.name for cron in crons}
        for target, ref_path in refs:
            if target in cron_names:
                self.error(ref_path, f"cannot go to cron state '{target}': a cron state only marks the start")
                complete = False
            elif target not in seen:
                self.error(ref_path, f"unknown state '{target}'{_choices(states)}")
                complete = False
        return _Scope(states, crons, seen, edges, complete)

    def _reachable(self, scope: _Scope, start: str | None) -> None:
        """Every state of a scope must be reachable from its start through next, conditions, defaultNext."""
        if not scope.complete or start is None or start not in scope.edges:
            return
        reached = {start}
        todo = [start]
        while todo:
            for target in scope.edges.get(todo.pop(), ()):
                if target not in reached:
                    reached.add(target)
                    todo.append(target)
        for name in scope.edges:
            if name not in reached:
                self.error(scope.paths[name], f"state '{name}' is unreachable: no 'next', condition or "
                           f"'defaultNext' leads to it from the start state '{start}'")

    def _block(
        self, value: Any, path: PathT, *, allow_list: bool, keys: tuple[str, ...] = ("start", "states")
    ) -> dict[str, Any]:
        """A nested scope: `{start?, states: [...]}` (or, for try blocks, a bare list of states)."""
        if allow_list and isinstance(value, list):
            return self._block_states(value, path, None, path)
        if not isinstance(value, dict):
            expected = "a list of states or a mapping with 'states'" if allow_list else "a mapping with 'states'"
            self.error(path, f"must be {expected}, got {_kind(value)}")
            return {"start": None, "states": {}}
        self._unknown_keys(value, path, keys, "in a block of states" if len(keys) == 2 else "in a parallel branch")
        start = self._str(value, "start", path)
        items = self._list(value, "states", path, required=True)
        if items is None:
            return {"start": start, "states": {}}
        return self._block_states(items, (*path, "states"), start, (*path, "start"))

    def _block_states(self, items: list[Any], path: PathT, start: str | None, start_path: PathT) -> dict[str, Any]:
        if not items:
            self.error(path, "needs at least one state")
        scope = self._scope_states(items, path, top_level=False)
        states = scope.states
        if start is None:
            start = next(iter(states), None)
        elif start not in states:
            self.error(start_path, f"start names unknown state '{start}'{_choices(states)}")
        if start in states:
            self._reachable(scope, start)
        return {"start": start, "states": states}

    # ---- one state -------------------------------------------------------------------------------

    def _state(self, item: Any, path: PathT) -> _Parsed:
        if not isinstance(item, dict):
            self.error(path, f"a state must be a mapping, got {_kind(item)}")
            return _Parsed(None, path, None, [])
        name_key = self._alias(item, path, "name", "id")
        name: str | None = None
        name_path: PathT = (*path, name_key) if name_key else path
        if name_key is None:
            self.error(path, "a state needs a 'name' (or 'id')")
        else:
            name = self._str(item, name_key, path, required=True)
            if name is not None and not _NAME_RE.match(name):
                self.error(name_path, f"state name '{name}' must start with a letter or '_' and contain only "
                           "letters, digits, '_' and '-'")
        # From here on a name is registered even if the state is broken, so references to it don't cascade.
        kind = self._str(item, "type", path, required=True)
        if kind is not None and kind not in _TYPE_KEYS:
            self.error((*path, "type"), f"unknown state type '{kind}' (known: {', '.join(STATE_TYPES)})")
            kind = None
        if kind is None:  # keys no state type knows are still worth a did-you-mean (`typ:`)
            self._unknown_keys(item, path, _ANY_STATE_KEYS, "in a state")
            return _Parsed(name, name_path, None, [])
        forbidden = _FORBIDDEN_COMMON.get(kind, {})
        for key, message in forbidden.items():
            if key in item:
                self.error((*path, key), message)
        allowed = [k for k in _COMMON_KEYS if k not in forbidden] + list(_TYPE_KEYS[kind])
        self._unknown_keys({k: v for k, v in item.items() if k not in forbidden}, path, allowed,
                           f"for a {kind} state")

        refs: list[tuple[str, PathT]] = []
        nxt, end = self._routing(item, path, kind, name, refs)
        handler = getattr(self, f"_t_{kind}")
        fields: dict[str, Any] = handler(item, path, refs)
        description = self._str(item, "description", path, nonempty=False)
        metadata = self._metadata(item, path)
        if kind == "cron":
            return _Parsed(name, name_path, None, refs, schedule=fields)
        norm_type = {"agent": "operation", "human_approval": "operation", "timer": "sleep"}.get(kind, kind)
        state: dict[str, Any] = {"name": name, "type": norm_type, **fields}
        if "resultPath" not in forbidden:
            state["resultPath"] = self._path_field(item, "resultPath", path)
            self._reserved_result(state, path)
        state["next"] = nxt
        state["end"] = end
        state["description"] = description
        state["metadata"] = metadata
        return _Parsed(name, name_path, state, refs)

    def _routing(
        self, item: dict[str, Any], path: PathT, kind: str, name: str | None, refs: list[tuple[str, PathT]]
    ) -> tuple[str | None, bool]:
        """`next`/`transition` and `end`: exactly one way out, except for switch (conditions)."""
        if kind == "switch":
            return None, False
        next_key = self._alias(item, path, "next", "transition")
        nxt = self._str(item, next_key, path) if next_key else None
        if nxt is not None and next_key is not None:
            refs.append((nxt, (*path, next_key)))
        elif next_key is not None and item[next_key] is None:
            next_key = None  # `next: null` (or `next:` with nothing after it) goes nowhere: as if absent
        end = False if kind == "cron" else self._bool(item, "end", path, default=False)
        label = f"state '{name}'" if name else "this state"
        if end and next_key is not None:
            self.error((*path, "end"), f"'end: true' conflicts with '{next_key}': a state either ends or goes on")
        elif not end and next_key is None:
            if kind == "cron":
                self.error(path, f"{label} needs 'next': the state the schedule starts at")
            else:
                self.error(path, f"{label} needs 'next' (or 'end: true')")
        return nxt, end

    # ---- state types -----------------------------------------------------------------------------

    def _t_operation(self, item: dict[str, Any], path: PathT, refs: list[tuple[str, PathT]]) -> dict[str, Any]:
        input_path: PathT = (*path, "input")
        given = self._dict(item, "input", path)
        payload: dict[str, Any] = _json_copy(given) if given is not None else {}
        self._templates(given, input_path)
        key_paths: dict[str, PathT] = {}
        action: str | None = None
        if "action" in item:
            raw = item["action"]
            if not isinstance(raw, str):
                self.error((*path, "action"), f"must be a string, got {_kind(raw)}")
            else:
                action = _canonical_action(raw)
                if action is None:
                    self.error((*path, "action"), f"unknown action '{raw}' (known: {', '.join(KNOWN_ACTIONS)})")
        else:
            marker = payload.get("task")
            action = _canonical_action(marker) if isinstance(marker, str) else None
            if action is None:
                self.error((*path, "action"), f"missing required key 'action' (one of {', '.join(KNOWN_ACTIONS)})")
            else:  # Station: `input.task: agent.run`, the prompt in `agent_task`
                del payload["task"]
                for old, new in _STATION_INPUT_RENAMES.items():
                    if old not in payload:
                        continue
                    if new in payload:
                        self.error((*input_path, old), f"'{old}' and '{new}' mean the same; use only '{new}'")
                        continue
                    payload[new] = payload.pop(old)
                    key_paths[new] = (*input_path, old)
        if action is not None:
            self._action_input(action, payload, input_path, key_paths)
        return {
            "action": action,
            "input": payload,
            "timeoutSeconds": self._number(item, "timeoutSeconds", path, minimum=0, exclusive=True),
            "retry": self._retry(item, path),
        }

    def _action_input(self, action: str, payload: dict[str, Any], input_path: PathT, key_paths: dict[str, PathT]) -> None:
        """What each executor needs from `input`; template strings pass, their type is known only at run time."""

        def at(key: str) -> PathT:
            return key_paths.get(key, (*input_path, key))

        if action == "agent.run":
            for key in payload:
                if key not in _AGENT_INPUT_KEYS:
                    self.error(at(key), _unknown_message(key, _AGENT_INPUT_KEYS, "in agent.run input"))
            if "agent" not in payload:
                self.error((*input_path, "agent"), "missing required key 'agent' (the agent to run)")
            elif not isinstance(payload["agent"], str) or not payload["agent"].strip():
                self.error(at("agent"), f"must be a non-empty string, got {_kind(payload['agent'])}")
            if payload.get("task") is not None and not isinstance(payload["task"], str):
                self.error(at("task"), f"must be a string, got {_kind(payload['task'])}")
            if "variables" in payload and not isinstance(payload["variables"], dict):
                self.error(at("variables"), f"must be a mapping, got {_kind(payload['variables'])}")
            self._input_timeout(payload, at)
        elif action == "human.approval":
            for key in payload:
                if key not in _APPROVAL_INPUT_KEYS:
                    self.error(at(key), _unknown_message(key, _APPROVAL_INPUT_KEYS, "in human.approval input"))
            if "message" in payload and not isinstance(payload["message"], str):
                self.error(at("message"), f"must be a string, got {_kind(payload['message'])}")
            if payload.get("approvers") == []:
                del payload["approvers"]  # written as "anyone": the same as leaving it out
            elif "approvers" in payload:
                self._approvers(payload["approvers"], at("approvers"))
            if "summaryPath" in payload:
                self._check_path(payload["summaryPath"], at("summaryPath"))
            for key in ("onReject", "onTimeout"):
                if key in payload and payload[key] not in APPROVAL_OUTCOMES:
                    self.error(at(key), f"must be one of {', '.join(APPROVAL_OUTCOMES)}, got {payload[key]!r}")
            self._input_timeout(payload, at)
        elif action == "signal.wait":
            self._input_timeout(payload, at)
            if "onTimeout" in payload and payload["onTimeout"] not in APPROVAL_OUTCOMES:
                self.error(at("onTimeout"), f"must be one of {', '.join(APPROVAL_OUTCOMES)}, "
                           f"got {payload['onTimeout']!r}")

    def _reserved_result(self, state: dict[str, Any], path: PathT) -> None:
        """The engine's `workflow` and `steps` keys are never a result's target (DESIGN 3)."""
        result_path = state.get("resultPath")
        if result_path is not None and limits.reserved_result_path_problem(result_path):
            self.error((*path, "resultPath"), str(limits.reserved_result_path_problem(result_path)))
        elif state["type"] == "inject" and (result_path is None or parse_path(result_path) == ()):
            problem = limits.root_merge_problem(state.get("data"))
            if problem:
                self.error((*path, "data"), f"inject {problem}")

    def _approvers(self, value: Any, path: PathT) -> bool:
        """`user:`/`team:` entries or templates (see dsl.approvers); True when the value is usable."""
        problems = approver_rules.load_problems(value)
        for sub, message in problems:
            self.error((*path, *sub), message)
        return not problems

    def _input_timeout(self, payload: dict[str, Any], at: Callable[[str], PathT]) -> None:
        value = payload.get("timeoutSeconds")
        if value is None or _is_template(value):
            return
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            self.error(at("timeoutSeconds"), f"must be a number > 0, got {value!r:.40}")
        elif limits.number_problem("timeoutSeconds", value):
            self.error(at("timeoutSeconds"), str(limits.number_problem("timeoutSeconds", value)))

    def _t_agent(self, item: dict[str, Any], path: PathT, refs: list[tuple[str, PathT]]) -> dict[str, Any]:
        agent = self._str(item, "agent", path, required=True)
        task_key = self._alias(item, path, "task", "prompt")
        task = self._str(item, task_key, path, nonempty=False) if task_key else None
        payload: dict[str, Any] = {"agent": agent, "task": task}
        variables = self._dict(item, "input", path)
        for key in ("agent", task_key, "input"):
            if key is not None and key in item:
                self._templates(item[key], (*path, key))
        if variables is not None:
            payload["variables"] = _json_copy(variables)
        return {
            "action": "agent.run",
            "input": payload,
            "timeoutSeconds": self._number(item, "timeoutSeconds", path, minimum=0, exclusive=True),
            "retry": self._retry(item, path),
        }

    def _t_human_approval(self, item: dict[str, Any], path: PathT, refs: list[tuple[str, PathT]]) -> dict[str, Any]:
        payload: dict[str, Any] = {}
        message_key = self._alias(item, path, "message", "prompt")
        for key in (message_key, "approvers"):
            if key is not None and key in item:
                self._templates(item[key], (*path, key))
        if message_key:
            message = self._str(item, message_key, path, nonempty=False)
            if message is not None:
                payload["message"] = message
        if item.get("approvers") not in (None, []) and self._approvers(item["approvers"], (*path, "approvers")):
            approvers = item["approvers"]
            payload["approvers"] = list(approvers) if isinstance(approvers, list) else approvers
        timeout_key = self._alias(item, path, "timeout_seconds", "timeoutSeconds")
        if timeout_key:
            timeout = self._number(item, timeout_key, path, minimum=0, exclusive=True)
            if timeout is not None:
                payload["timeoutSeconds"] = timeout
        summary = self._path_field(item, "summaryPath", path)
        if summary is not None:
            payload["summaryPath"] = summary
        for key in ("onReject", "onTimeout"):
            choice = self._choice(item, key, path, APPROVAL_OUTCOMES)
            if choice is not None:
                payload[key] = choice
        return {"action": "human.approval", "input": payload, "timeoutSeconds": None, "retry": None}

    def _t_inject(self, item: dict[str, Any], path: PathT, refs: list[tuple[str, PathT]]) -> dict[str, Any]:
        if "data" not in item:
            self.error((*path, "data"), "missing required key 'data'")
        return {"data": _json_copy(item.get("data"))}

    def _t_switch(self, item: dict[str, Any], path: PathT, refs: list[tuple[str, PathT]]) -> dict[str, Any]:
        conditions: list[dict[str, Any]] = []
        items = self._list(item, "conditions", path, required=True)
        if items is not None and not items:
            self.error((*path, "conditions"), "a switch needs at least one condition")
        for index, cond in enumerate(items or []):
            cpath: PathT = (*path, "conditions", index)
            if not isinstance(cond, dict):
                self.error(cpath, f"a condition must be a mapping with 'if' and 'next', got {_kind(cond)}")
                continue
            self._unknown_keys(cond, cpath, ("if", "condition", "next"), "in a switch condition")
            if_key = self._alias(cond, cpath, "if", "condition")
            expr = self._str(cond, if_key, cpath) if if_key else None
            if if_key is None:
                self.error((*cpath, "if"), "missing required key 'if' (a Starlark condition)")
            elif expr is not None:
                self._starlark(expr, (*cpath, if_key), "condition")
            target = self._str(cond, "next", cpath, required=True)
            if target is not None:
                refs.append((target, (*cpath, "next")))
            conditions.append({"if": expr, "next": target})
        default = self._str(item, "defaultNext", path)
        if default is not None:
            refs.append((default, (*path, "defaultNext")))
        return {"dataPath": self._path_field(item, "dataPath", path), "conditions": conditions, "defaultNext": default}

    def _t_parallel(self, item: dict[str, Any], path: PathT, refs: list[tuple[str, PathT]]) -> dict[str, Any]:
        branches: list[dict[str, Any]] = []
        items = self._list(item, "branches", path, required=True)
        if items is not None and not items:
            self.error((*path, "branches"), "a parallel state needs at least one branch")
        seen: dict[str, PathT] = {}
        for index, branch in enumerate(items or []):
            bpath: PathT = (*path, "branches", index)
            if not isinstance(branch, dict):
                self.error(bpath, f"a branch must be a mapping with 'name' and 'states', got {_kind(branch)}")
                continue
            name = self._str(branch, "name", bpath, required=True)
            if name is not None and not _NAME_RE.match(name):
                self.error((*bpath, "name"), f"branch name '{name}' must start with a letter or '_' and contain "
                           "only letters, digits, '_' and '-'")
            elif name is not None and name in seen:
                self.error((*bpath, "name"), f"duplicate branch name '{name}' (first used at {format_path(seen[name])})")
            elif name is not None:
                seen[name] = bpath
            block = self._block(branch, bpath, allow_list=False, keys=("name", "start", "states"))
            branches.append({"name": name, "start": block["start"], "states": block["states"]})
        return {"branches": branches, "join": self._join(item, path, len(items or []))}

    def _join(self, item: dict[str, Any], path: PathT, branch_count: int) -> dict[str, Any]:
        if "join" not in item or item["join"] is None:
            return {"mode": "all", "atLeast": None}
        jpath: PathT = (*path, "join")
        join = item["join"]
        if isinstance(join, str):
            join = {"mode": join}
        if not isinstance(join, dict):
            self.error(jpath, f"must be a mapping like {{mode: all}}, got {_kind(join)}")
            return {"mode": "all", "atLeast": None}
        self._unknown_keys(join, jpath, ("mode", "atLeast"), "in a join")
        at_least = join.get("atLeast", _MISSING)
        mode = join.get("mode")
        if mode is None:
            mode = "all" if at_least is _MISSING else "atLeast"
        elif mode not in JOIN_MODES:
            self.error((*jpath, "mode"), f"join mode must be one of {', '.join(JOIN_MODES)}, got {mode!r}")
            return {"mode": "all", "atLeast": None}
        if mode != "atLeast":
            if at_least is not _MISSING:
                self.error((*jpath, "atLeast"), f"'atLeast' only applies to join mode 'atLeast' (mode is '{mode}')")
            return {"mode": mode, "atLeast": None}
        if at_least is _MISSING:
            self.error((*jpath, "atLeast"), "join mode 'atLeast' needs 'atLeast: n'")
            return {"mode": mode, "atLeast": None}
        if not isinstance(at_least, int) or isinstance(at_least, bool):
            self.error((*jpath, "atLeast"), f"must be an integer, got {_kind(at_least)}")
            return {"mode": mode, "atLeast": None}
        if branch_count and not 1 <= at_least <= branch_count:
            self.error((*jpath, "atLeast"), f"must be between 1 and {branch_count} (the number of branches), "
                       f"got {at_least}")
        return {"mode": mode, "atLeast": at_least}

    def _t_foreach(self, item: dict[str, Any], path: PathT, refs: list[tuple[str, PathT]]) -> dict[str, Any]:
        items_path = self._path_field(item, "itemsPath", path, required=True)
        item_name = self._str(item, "itemName", path)
        if item_name is not None and not _IDENT_RE.match(item_name):
            self.error((*path, "itemName"), f"itemName '{item_name}' must be an identifier (letters, digits, '_')")
        elif item_name in RESERVED_ITEM_NAMES:
            self.error((*path, "itemName"), f"itemName '{item_name}' is reserved")
        concurrency = self._number(item, "maxConcurrency", path, minimum=1, integer=True)
        if "iterator" not in item:
            self.error((*path, "iterator"), "missing required key 'iterator' (the states run for each item)")
            iterator: dict[str, Any] = {"start": None, "states": {}}
        else:
            iterator = self._block(item["iterator"], (*path, "iterator"), allow_list=False)
        return {
            "itemsPath": items_path,
            "itemName": item_name or "item",
            "maxConcurrency": concurrency if concurrency is not None else 1,
            "iterator": iterator,
        }

    def _t_transform(self, item: dict[str, Any], path: PathT, refs: list[tuple[str, PathT]]) -> dict[str, Any]:
        expr = self._str(item, "expression", path, required=True)
        if expr is not None:
            self._starlark(expr, (*path, "expression"), "expression")
        return {"expression": expr}

    def _t_sleep(self, item: dict[str, Any], path: PathT, refs: list[tuple[str, PathT]]) -> dict[str, Any]:
        key = self._alias(item, path, "duration", "durationSeconds")
        seconds: float | None = None
        if key is None:
            self.error((*path, "duration"), "missing required key 'duration' (like '30s', '5m' or '1h30m')")
        else:
            value = item[key]
            if key == "duration" and isinstance(value, str):
                seconds = parse_duration(value)
                if seconds is None:
                    self.error((*path, key), f"invalid duration '{_clip(value)}' (use like '250ms', '30s', '5m', '1h30m')")
            elif _is_number(value) and math.isfinite(value) and value >= 0:
                seconds = float(value)
            else:
                self.error((*path, key), f"must be a duration string or a number of seconds >= 0, got {value!r:.40}")
            if seconds is not None and limits.seconds_problem(seconds):
                self.error((*path, key), f"duration {limits.seconds_problem(seconds)}")
                seconds = None
        return {"durationSeconds": seconds}

    _t_timer = _t_sleep

    def _t_try(self, item: dict[str, Any], path: PathT, refs: list[tuple[str, PathT]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "try" not in item:
            self.error((*path, "try"), "missing required key 'try' (the states to run)")
        for part in ("try", "catch", "finally"):
            value = item.get(part)
            out[part] = self._block(value, (*path, part), allow_list=True) if value is not None else None
        if out["try"] is None:
            out["try"] = {"start": None, "states": {}}
        return out

    def _t_cron(self, item: dict[str, Any], path: PathT, refs: list[tuple[str, PathT]]) -> dict[str, Any]:
        return self._schedule(item, path) or {}

    # ---- fields ----------------------------------------------------------------------------------

    def _retry(self, item: dict[str, Any], path: PathT) -> dict[str, Any] | None:
        retry = self._dict(item, "retry", path)
        if retry is None:
            return None
        rpath: PathT = (*path, "retry")
        self._unknown_keys(retry, rpath, _RETRY_KEYS, "in retry")
        attempts = self._number(retry, "maxAttempts", rpath, minimum=1, integer=True, required=True)
        backoff = self._number(retry, "backoffSeconds", rpath, minimum=0)
        rate = self._number(retry, "backoffRate", rpath, minimum=1)
        max_backoff = self._number(retry, "maxBackoffSeconds", rpath, minimum=0, exclusive=True)
        backoff = 1 if backoff is None else backoff
        if max_backoff is not None and max_backoff < backoff:
            self.error((*rpath, "maxBackoffSeconds"), f"must be >= backoffSeconds ({backoff})")
        return {
            "maxAttempts": attempts,
            "backoffSeconds": backoff,
            "backoffRate": 2 if rate is None else rate,
            "maxBackoffSeconds": max_backoff,
            "jitter": self._bool(retry, "jitter", rpath, default=False),
        }

    def _metadata(self, obj: dict[str, Any], path: PathT) -> dict[str, Any] | None:
        value = self._dict(obj, "metadata", path)
        return _json_copy(value) if value is not None else None

    def _path_field(self, obj: dict[str, Any], key: str, path: PathT, *, required: bool = False) -> str | None:
        value = self._str(obj, key, path, required=required)
        if value is not None and not self._check_path(value, (*path, key)):
            return None
        return value

    def _check_path(self, value: Any, path: PathT) -> bool:
        """DESIGN 3 paths: `a.b`, `a[0].b`, optional `$.`/`ctx.` prefix, `ctx` or `$` for the root."""
        if not isinstance(value, str):
            self.error(path, f"must be a string, got {_kind(value)}")
            return False
        try:
            parse_path(value)
        except PathError as exc:
            reason = str(exc).removeprefix(f"path {value!r}: ")
            self.error(path, f"invalid path '{value}': {reason} (expected a dot path like 'steps.check', "
                       "'items[0].name' or 'ctx')")
            return False
        return True

    # ---- expressions and templates -----------------------------------------------------------------

    def _starlark(self, source: str, path: PathT, what: str) -> None:
        """A syntax error found now fails the sync, not a run days later."""
        too_big = expression_problem(source)
        if too_big:
            self.error(path, f"{what} {too_big}")
            return
        problem = _parse_error(source, PROGRAM_DIALECT) if self.statements_ok and what == "expression" else _syntax_error(source)
        if problem is not None:
            message, offset = problem
            self._error_inside(path, offset, f"{what} {message}")

    def _templates(self, value: Any, path: PathT) -> None:
        """Every `{{ }}` the engine will render must compile; names are not checked (they are run data)."""
        if isinstance(value, str):
            if "{{" in value:
                self._template(value, path)
        elif isinstance(value, dict):
            for key, item in value.items():
                self._templates(item, (*path, key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self._templates(item, (*path, index))

    def _template(self, source: str, path: PathT) -> None:
        """Split like `compile_template`: each `{{` closes at the first `}}` after which its text parses."""
        if source.count("{{") > MAX_TEMPLATES_PER_STRING:
            self.error(path, f"has {source.count('{{')} '{{{{' templates; the limit is {MAX_TEMPLATES_PER_STRING} "
                       "per string")
            return
        pos = 0
        while (start := source.find("{{", pos)) >= 0:
            close = source.find("}}", start + 2)
            if close < 0:
                self._error_inside(path, start, f"unclosed '{{{{' in template (no '}}}}' after it): "
                                   f"{_clip(source[start:])!r}")
                return
            first: tuple[int, tuple[str, int | None]] | None = None
            while close >= 0:
                inner = source[start + 2:close]
                too_big = expression_problem(inner) if len(inner) > MAX_EXPRESSION_BYTES else None
                if too_big:  # also bounds this search: candidates past the size limit are not parsed
                    self._error_inside(path, start, f"template {_clip(source[start:close + 2])!r} {too_big}")
                    return
                problem = _parse_error(inner)
                if problem is None:
                    too_big = expression_problem(inner)  # depth, counted once the text parses
                    if too_big:
                        self._error_inside(path, start, f"template {_clip(source[start:close + 2])!r} {too_big}")
                        return
                    problem = _statement_problem(inner)
                    first = (close, problem) if problem else None
                    break
                first = first or (close, problem)
                close = source.find("}}", close + 1)
            if first is not None:
                close, (message, offset) = first
                where = start if offset is None else start + 2 + offset
                self._error_inside(path, where, f"template {_clip(source[start:close + 2])!r} {message}")
                return
            pos = close + 2

    def _error_inside(self, path: PathT, offset: int | None, message: str) -> None:
        """An error at a character of the string at `path` when that maps into the file, else at its key."""
        mark = self.report.inside(path, offset) if offset is not None else None
        self.report.add(path, mark or self.report.mark_of(path), message)

    def _choice(self, obj: dict[str, Any], key: str, path: PathT, choices: tuple[str, ...]) -> str | None:
        if key not in obj:
            return None
        value = obj[key]
        if value not in choices:
            self.error((*path, key), f"must be one of {', '.join(choices)}, got {value!r}")
            return None
        return str(value)

    # ---- primitive checks ------------------------------------------------------------------------

    def _unknown_keys(self, obj: dict[str, Any], path: PathT, allowed: Iterable[str], where: str) -> None:
        allowed = tuple(allowed)
        for key in obj:
            if key not in allowed:
                self.error((*path, key), _unknown_message(key, allowed, where))

    def _alias(self, obj: dict[str, Any], path: PathT, *keys: str) -> str | None:
        """Which of several synonymous keys is used; more than one at once is an error."""
        present = [key for key in keys if key in obj]
        if len(present) > 1:
            self.error((*path, present[1]), f"'{present[0]}' and '{present[1]}' mean the same; use only one")
        return present[0] if present else None

    def _str(
        self, obj: dict[str, Any], key: str, path: PathT, *, required: bool = False, nonempty: bool = True
    ) -> str | None:
        if key not in obj or (obj[key] is None and not required):
            if required:
                self.error((*path, key), f"missing required key '{key}'")
            return None
        value = obj[key]
        if not isinstance(value, str):
            self.error((*path, key), f"must be a string, got {_kind(value)}")
            return None
        if nonempty and not value.strip():
            self.error((*path, key), "must not be empty")
            return None
        return value

    def _bool(self, obj: dict[str, Any], key: str, path: PathT, *, default: bool) -> bool:
        if key not in obj or obj[key] is None:
            return default
        value = obj[key]
        if not isinstance(value, bool):
            self.error((*path, key), f"must be true or false, got {_kind(value)}")
            return default
        return value

    def _number(
        self,
        obj: dict[str, Any],
        key: str,
        path: PathT,
        *,
        minimum: float | None = None,
        exclusive: bool = False,
        integer: bool = False,
        required: bool = False,
    ) -> Any:
        if key not in obj or (obj[key] is None and not required):
            if required:
                self.error((*path, key), f"missing required key '{key}'")
            return None
        value = obj[key]
        if integer and not (isinstance(value, int) and not isinstance(value, bool)):
            self.error((*path, key), f"must be an integer, got {_kind(value)}")
            return None
        if not _is_number(value) or not math.isfinite(value):
            self.error((*path, key), f"must be a number, got {_kind(value)}")
            return None
        if minimum is not None and (value <= minimum if exclusive else value < minimum):
            self.error((*path, key), f"must be {'>' if exclusive else '>='} {minimum:g}, got {value}")
            return None
        too_big = limits.number_problem(key, value)
        if too_big:
            self.error((*path, key), too_big)
            return None
        return value

    def _dict(self, obj: dict[str, Any], key: str, path: PathT) -> dict[str, Any] | None:
        if key not in obj or obj[key] is None:
            return None
        value = obj[key]
        if not isinstance(value, dict):
            self.error((*path, key), f"must be a mapping, got {_kind(value)}")
            return None
        return value

    def _list(self, obj: dict[str, Any], key: str, path: PathT, *, required: bool = False) -> list[Any] | None:
        if key not in obj or (obj[key] is None and not required):
            if required:
                self.error((*path, key), f"missing required key '{key}'")
            return None
        value = obj[key]
        if not isinstance(value, list):
            self.error((*path, key), f"must be a list, got {_kind(value)}")
            return None
        return value


def _unknown_message(key: str, allowed: Iterable[str], where: str) -> str:
    """'unknown key' with the likely intended one, or the allowed keys when nothing is close."""
    allowed = list(allowed)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(allowed)}"
    return f"unknown key '{key}' {where} ({hint})"


# "--> label:LINE:COL" in Starlark's diagnostics: the position inside the expression.
_STARLARK_POS_RE = re.compile(r"^\s*--> .*?:(\d+):(\d+)(?:-\d+(?::\d+)?)?\s*$", re.MULTILINE)
_EXPECTED_RE = re.compile(r", expected one of .*$")


def _syntax_error(source: str) -> tuple[str, int | None] | None:
    """Why `source` is no good as an expression, and at which offset of it; None when it is fine."""
    return _parse_error(source) or _statement_problem(source)


def _parse_error(source: str, dialect: Any = DIALECT) -> tuple[str, int | None] | None:
    """Exactly what `compile_expression` rejects (empty text, a Starlark parse error), by the parse alone:
    a full compile also plans the evaluation and costs ~50x more, on every file of every sync."""
    text = textwrap.dedent(source).strip()
    if not text:
        return "is empty", None
    try:
        sl.parse("expression", text, dialect)
    except sl.StarlarkError as exc:
        detail = str(exc).strip()
        head = detail.splitlines()[0].removeprefix("error: ").strip() if detail else type(exc).__name__
        if head.count(", ") > 6:
            head = _EXPECTED_RE.sub("", head)
        found = _STARLARK_POS_RE.search(detail)
        offset = _offset_in(source, int(found.group(1)), int(found.group(2))) if found else None
        return f"has a Starlark syntax error: {head}", offset
    return None


def _statement_problem(source: str) -> tuple[str, int | None] | None:
    """One rule more than the engine: a statement (`a = 'x'`, two lines) parses, then evaluates to None or
    its last line, which as a switch condition is silently false. Found with Python's parser, since
    Starlark's AST is opaque from Python; text Python cannot parse is left to the Starlark parse."""
    text = textwrap.dedent(source).strip()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            body = pyast.parse(text, mode="exec").body
    except (SyntaxError, ValueError, RecursionError):
        return None  # Starlark-only syntax: the Starlark parse above is the authority
    if not body:
        return "has no expression (it is only a comment)", None
    if len(body) == 1 and isinstance(body[0], pyast.Expr):
        return None
    stmt = next((node for node in body if not isinstance(node, pyast.Expr)), body[-1])
    line, column = stmt.lineno, _char_column(text, stmt.lineno, stmt.col_offset)
    if isinstance(stmt, pyast.Assign):
        target = stmt.targets[-1]
        line = target.end_lineno or line
        equals = text.split("\n")[line - 1].find("=", _char_column(text, line, target.end_col_offset or 0))
        column = max(equals, 0)
        return "is an assignment, not an expression (did you mean '=='?)", _offset_in(source, line, column + 1)
    if isinstance(stmt, pyast.AugAssign | pyast.AnnAssign):
        return "is an assignment, not an expression", _offset_in(source, line, column + 1)
    return "must be one expression, not several statements", _offset_in(source, line, column + 1)


def _char_column(text: str, line: int, byte_offset: int) -> int:
    """Python's AST columns count UTF-8 bytes; positions here count characters."""
    row = text.split("\n")[line - 1] if line >= 1 else ""
    return len(row.encode("utf-8")[:byte_offset].decode("utf-8", "ignore"))


def _offset_in(source: str, line: int, column: int) -> int:
    """Offset in `source` of a 1-based position in `dedent(source).strip()`, the text Starlark parsed."""
    dedented = textwrap.dedent(source)
    lead = len(dedented) - len(dedented.lstrip())
    rest = dedented[lead:].split("\n", line - 1)
    offset = lead + sum(len(text) + 1 for text in rest[: line - 1]) + column - 1
    # Back from the dedented text to the source: same line, shifted by what dedent took off that line.
    row = dedented.count("\n", 0, offset)
    source_lines = source.split("\n")
    dedented_lines = dedented.split("\n")
    if row >= len(source_lines):
        return len(source)
    margin = len(source_lines[row]) - len(dedented_lines[row])
    column0 = offset - (dedented.rfind("\n", 0, offset) + 1)
    return min(sum(len(text) + 1 for text in source_lines[:row]) + margin + column0, len(source))


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _choices(states: dict[str, Any]) -> str:
    names = list(states)
    if not names:
        return ""
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f" (states here: {shown})"
