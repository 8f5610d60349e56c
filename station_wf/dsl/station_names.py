"""Warnings for names in a Station file's expressions that can never resolve.

Station's context is flat: the workflow input at the root, every step's output at `<id>` and
`steps.<id>.output`, `output:` map keys and resultPaths. So when the file declares its input
(`inputSchema.properties`), every name an expression or template reads can be checked against what
the file can ever write; a name nothing writes is a typo that would only fail at run time. Switch
conditions with a `dataPath` also see the value's keys, which are unknown here, so they are skipped.
Without declared inputs nothing is reported: any input key could supply the name.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from station_wf.expr.paths import PathError, parse_path
from station_wf.expr.starlark_eval import ExpressionError, compile_expression

PathT = tuple[str | int, ...]
_ALWAYS = {"ctx", "steps", "workflow", "input", "_index", "_total", "_item", "error", "result", "_value", "val",
           "True", "False", "None"}
_TEMPLATE_RE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_SCOPES = ("iterator", "try", "catch", "finally")


def unresolvable(doc: dict[str, Any]) -> list[tuple[PathT, str]]:
    """(path, warning) for each name no input, state, output map or resultPath can provide."""
    schema = doc.get("inputSchema")
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return []
    known = set(_ALWAYS) | set(properties)
    uses: list[tuple[PathT, str, str]] = []
    _walk(doc.get("states"), ("states",), known, uses)
    out: list[tuple[PathT, str]] = []
    for path, text, what in uses:
        for name in _free_names(text):
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                out.append((path, f"warning: name '{name}' in this {what} can never resolve: no input "
                                  f"(inputSchema), state id, output map or resultPath provides it{hint}"))
    return out


def writable_names(doc: dict[str, Any]) -> list[str]:
    """Every top-level name the file itself can write (state ids, resultPath heads, output keys, inject
    keys): in Station's flat context they read as None until written, so `hasattr(approval, 'reason')`
    on a path that never asked is simply false, as the file's author meant."""
    known: set[str] = set()
    _walk(doc.get("states"), ("states",), known, [])
    return sorted(n for n in known if n.isidentifier() and n not in _ALWAYS)


def _free_names(text: str) -> tuple[str, ...]:
    try:
        return compile_expression(text, "expression", programs=True).free_names
    except ExpressionError:
        return ()  # the loader reports the syntax error


def _walk(items: Any, path: PathT, known: set[str], uses: list[tuple[PathT, str, str]]) -> None:
    if not isinstance(items, list):
        return
    for index, state in enumerate(items):
        if not isinstance(state, dict):
            continue
        here = (*path, index)
        for key in ("id", "name", "itemName"):
            if isinstance(state.get(key), str):
                known.add(state[key])
        result_path = state.get("resultPath")
        if isinstance(result_path, str):
            try:
                head = parse_path(result_path)[:1]
            except PathError:
                head = ()
            if head and isinstance(head[0], str):
                known.add(head[0])
        if state.get("type") in ("inject", "cron"):
            data = state.get("data") if state.get("type") == "inject" else state.get("input")
            if isinstance(data, dict) and (state.get("type") == "cron" or result_path in (None, "ctx", "$")):
                known.update(k for k in data if isinstance(k, str))
        metadata = state.get("metadata") if isinstance(state.get("metadata"), dict) else {}
        for key in (metadata.get("_stationDataflow") or {}).get("output") or {}:
            known.add(key)
        if state.get("type") == "transform" and isinstance(state.get("expression"), str):
            uses.append(((*here, "expression"), state["expression"], "transform"))
        if state.get("type") == "switch" and not state.get("dataPath"):
            for c_index, cond in enumerate(state.get("conditions") or []):
                if isinstance(cond, dict) and isinstance(cond.get("if"), str):
                    uses.append(((*here, "conditions", c_index, "if"), cond["if"], "condition"))
        for key in ("input", "task", "prompt", "message"):
            _templates(state.get(key), (*here, key), uses)
        for b_index, branch in enumerate(state.get("branches") or [] if isinstance(state.get("branches"), list) else []):
            if isinstance(branch, dict):
                _walk(branch.get("states"), (*here, "branches", b_index, "states"), known, uses)
        for key in _SCOPES:
            block = state.get(key)
            if isinstance(block, dict):
                _walk(block.get("states"), (*here, key, "states"), known, uses)
            elif isinstance(block, list):
                _walk(block, (*here, key), known, uses)


def _templates(value: Any, path: PathT, uses: list[tuple[PathT, str, str]]) -> None:
    if isinstance(value, str):
        for match in _TEMPLATE_RE.finditer(value):
            uses.append((path, match.group(1), "template"))
    elif isinstance(value, dict):
        for key, item in value.items():
            _templates(item, (*path, key), uses)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _templates(item, (*path, index), uses)
