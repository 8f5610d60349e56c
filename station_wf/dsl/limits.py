"""Limits on a workflow document, checked before the loader walks it, without recursion.

The loader's checker recurses into nested blocks and data, so a hostile document (states nested 200
deep, a list nested 5,000 deep, 15,000 states, NaN in a field) must be refused by a pass whose cost and
stack use do not depend on what the user wrote. Each limit is far above what a real workflow needs and
far below what hurts the daemon; each refusal names the path where it was exceeded.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from station_wf.expr.paths import RESERVED_ROOT_KEYS, PathError, parse_path

__all__ = [
    "MAX_BLOCK_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "MAX_SCHEMA_NODES",
    "MAX_MERGE_PAIRS",
    "MAX_SECONDS",
    "MAX_STATES",
    "MAX_VALUE_DEPTH",
    "check_document",
    "document_size_problem",
    "number_problem",
    "reserved_id_problem",
    "reserved_result_path_problem",
    "root_merge_problem",
]

MAX_DOCUMENT_BYTES = 512 * 1024
MAX_WORKFLOW_ID_CHARS = 200  # it is a URL segment and a file name
MAX_SCHEMA_NODES = 2_000  # objects and lists in one inputSchema: real ones have tens
"""The largest definition text (YAML or JSON); the biggest real workflow files are a few tens of KiB."""
MAX_STATES = 1000
"""States in one definition, every level counted (branches, iterators, try blocks)."""
MAX_BLOCK_DEPTH = 32
"""How deeply parallel, foreach and try blocks may nest inside each other."""
MAX_VALUE_DEPTH = 160
"""How deeply mappings and lists may nest anywhere in the document (32 nested blocks need ~130)."""
MAX_MERGE_PAIRS = 20_000
"""Key/value pairs YAML `<<` merges may bring in over the whole document (merge-key bombs double per level)."""
MAX_SECONDS = 366 * 86400.0
"""The longest duration or timeout: one year. Longer waits belong in a schedule."""
MAX_INT = 2**63 - 1
"""Integers must fit SQLite's 64-bit integers."""

# Upper bounds of numeric fields, by key. Durations share MAX_SECONDS.
_FIELD_MAXIMUM: dict[str, float] = {
    "timeoutSeconds": MAX_SECONDS,
    "timeout_seconds": MAX_SECONDS,
    "durationSeconds": MAX_SECONDS,
    "backoffSeconds": MAX_SECONDS,
    "maxBackoffSeconds": MAX_SECONDS,
    "maxAttempts": 1000,
    "backoffRate": 100,
    "maxConcurrency": 10_000,
}
_MAX_REPORTED = 20

PathT = tuple[str | int, ...]


def document_size_problem(text: str) -> str | None:
    """Refuse a huge text before YAML sees it: parsing alone blocks for seconds at a megabyte."""
    if len(text) > MAX_DOCUMENT_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_DOCUMENT_BYTES:
        return f"the definition is larger than {MAX_DOCUMENT_BYTES} bytes"
    return None


def check_document(value: Any) -> list[tuple[PathT, str]]:
    """Every limit of the plain document value, as (path, message); empty when it is within them."""
    problems = _check_states(value) if isinstance(value, dict) else []
    return problems or _check_values(value)


def _check_values(value: Any) -> list[tuple[PathT, str]]:
    """Depth, and numbers JSON and SQLite can store: finite floats, 64-bit integers."""
    problems: list[tuple[PathT, str]] = []
    todo: list[tuple[Any, PathT]] = [(value, ())]
    while todo and len(problems) < _MAX_REPORTED:
        item, path = todo.pop()
        if isinstance(item, dict | list | tuple):
            if len(path) >= MAX_VALUE_DEPTH:
                problems.append((path, f"the document is nested too deeply (more than {MAX_VALUE_DEPTH} levels "
                                       "of mappings and lists)"))
                break
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            todo.extend((child, (*path, key)) for key, child in pairs)
        elif isinstance(item, float) and not math.isfinite(item):
            problems.append((path, f"numbers must be finite, got {item}"))
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_INT:
            problems.append((path, f"integers must be between -{MAX_INT} and {MAX_INT}"))
    return problems


def _blocks(state: dict[str, Any], path: PathT) -> Iterator[tuple[Any, PathT]]:
    """The nested lists of states of one raw state (before normalization), with their paths."""
    kind = state.get("type")
    if kind == "parallel" and isinstance(state.get("branches"), list):
        for index, branch in enumerate(state["branches"]):
            if isinstance(branch, dict):
                yield branch.get("states"), (*path, "branches", index, "states")
    elif kind == "foreach" and isinstance(state.get("iterator"), dict):
        yield state["iterator"].get("states"), (*path, "iterator", "states")
    elif kind == "try":
        for part in ("try", "catch", "finally"):
            block = state.get(part)
            if isinstance(block, dict):
                yield block.get("states"), (*path, part, "states")
            else:
                yield block, (*path, part)


def _check_states(doc: dict[str, Any]) -> list[tuple[PathT, str]]:
    """The number of states at all levels, and how deeply blocks nest."""
    count = 0
    todo: list[tuple[Any, PathT, int]] = [(doc.get("states"), ("states",), 0)]
    while todo:
        states, path, depth = todo.pop()
        if not isinstance(states, list):
            continue
        if depth > MAX_BLOCK_DEPTH:
            return [(path, f"blocks (parallel, foreach, try) nest more than {MAX_BLOCK_DEPTH} levels deep")]
        count += len(states)
        if count > MAX_STATES:
            return [(path, f"the workflow has more than {MAX_STATES} states (counting every branch and block)")]
        for index, state in enumerate(states):
            if isinstance(state, dict):
                todo.extend((inner, inner_path, depth + 1) for inner, inner_path in _blocks(state, (*path, index)))
    return []


def number_problem(key: str, value: float) -> str | None:
    """A numeric field above its sane maximum (the loader checks type, finiteness and minimum)."""
    maximum = _FIELD_MAXIMUM.get(key)
    if maximum is not None and value > maximum:
        unit = " seconds (one year)" if maximum == MAX_SECONDS else ""
        return f"must be at most {maximum:g}{unit}, got {value:g}"
    return None


def seconds_problem(seconds: float) -> str | None:
    """A parsed duration that is not finite or longer than a year."""
    if not math.isfinite(seconds):
        return "is not a finite duration"
    if seconds > MAX_SECONDS:
        return f"is longer than {MAX_SECONDS:g} seconds (one year)"
    return None


def schema_size_problem(schema: Any) -> str | None:
    """An inputSchema with more than `MAX_SCHEMA_NODES` objects and lists (counted without recursion)."""
    seen, stack = 0, [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        else:
            continue
        seen += 1
        if seen > MAX_SCHEMA_NODES:
            return f"the schema has more than {MAX_SCHEMA_NODES} objects and lists"
    return None


def reserved_id_problem(workflow_id: str) -> str | None:
    """`.` and `..` pass the id pattern but are path segments, not names, in every URL and file path."""
    if workflow_id.strip(".") == "":
        return f"workflow id '{workflow_id}' may not consist of dots only"
    if len(workflow_id) > MAX_WORKFLOW_ID_CHARS:
        return f"workflow id is {len(workflow_id)} characters long, over the limit of {MAX_WORKFLOW_ID_CHARS}"
    return None


def reserved_result_path_problem(path: str) -> str | None:
    """`workflow`, `workflow.*` and `steps` itself belong to the engine (`steps.<name>` is fine)."""
    try:
        segments = parse_path(path)
    except PathError:
        return None  # the path check reports it
    if segments and segments[0] == "workflow":
        return f"resultPath '{path}' would overwrite the engine's 'workflow' key (run id, input, version)"
    if segments == ("steps",):
        return f"resultPath '{path}' would overwrite every step's result; use 'steps.<name>' or another key"
    return None


def root_merge_problem(data: Any) -> str | None:
    """An object merged into the context root may not carry the engine's own keys."""
    if isinstance(data, dict):
        taken = [key for key in RESERVED_ROOT_KEYS if key in data]
        if taken:
            return (f"merges key '{taken[0]}' into the context root, where the engine keeps its own "
                    f"'{taken[0]}'; set a resultPath such as 'config'")
    return None
