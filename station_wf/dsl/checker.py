"""The checker: walks a plain definition value, collects problems and builds the normalized form.

This module holds the definition as a whole: top-level keys, schedules, scopes, reachability and
routing; the per-type checks are in `dsl/states.py`, the field checks in `dsl/fields.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

from station_wf.dsl import concurrency, limits
from station_wf.dsl import station as station_dialect
from station_wf.dsl.diagnostics import choices_text
from station_wf.dsl.fields import FieldChecks
from station_wf.dsl.problems import PathT, Report, format_path
from station_wf.dsl.spec import (
    ANY_STATE_KEYS,
    COMMON_KEYS,
    FORBIDDEN_COMMON,
    NAME_RE,
    STATE_TYPES,
    TOP_KEYS,
    TYPE_KEYS,
    WORKFLOW_ID_RE,
    is_number,
    json_copy,
    kind_of,
)
from station_wf.dsl.states import StateTypes
from station_wf.expr.cron import CronError, CronSchedule
from station_wf.expr.paths import RESERVED_INPUT_KEYS


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


class Checker(StateTypes, FieldChecks):
    """Walks a plain definition value, collecting problems and building the normalized form."""

    def __init__(self, report: Report, raw: dict[PathT, str]) -> None:
        self.report = report
        self.raw = raw
        self.statements_ok = False  # Station transforms are programs whose last expression is the output

    def error(self, path: PathT, message: str) -> None:
        self.report.error(path, message)

    # ---- top level -------------------------------------------------------------------------------

    def definition(self, obj: Any) -> dict[str, Any]:
        if not isinstance(obj, dict):
            self.error((), f"the top level must be a mapping, got {kind_of(obj)}")
            self.report.raise_if_any()
        obj, prep = station_dialect.prepare(obj, self.report.marks)  # DESIGN 4: Station's dialect
        self.statements_ok = prep.dialect == "station"
        self._unknown_keys(obj, (), TOP_KEYS, "at the top level")
        wf_id = self._str(obj, "id", (), required=True)
        if wf_id is not None and not WORKFLOW_ID_RE.match(wf_id):
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
        if obj.get("concurrency") is not None:  # issue 18: only when written (definitions without it are unchanged)
            for sub, message in concurrency.problems(obj["concurrency"]):
                self.error(("concurrency", *sub), message)
            result["concurrency"] = obj["concurrency"]
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
            self.error(("start",), f"start names unknown state '{start}'{choices_text(states)}")
        return start

    def _label(self, obj: dict[str, Any], key: str) -> str | None:
        """`version: 1.10` must stay "1.10": prefer the scalar as written over the parsed number."""
        if key not in obj or obj[key] is None:
            return None
        value = obj[key]
        if isinstance(value, str):
            return value
        if is_number(value):
            return self.raw.get((key,), str(value))
        self.error((key,), f"must be a string, got {kind_of(value)}")
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
        return json_copy(schema)

    def _schedules(self, obj: dict[str, Any]) -> list[dict[str, Any]]:
        items = self._list(obj, "schedules", ())
        out: list[dict[str, Any]] = []
        for index, item in enumerate(items or []):
            path: PathT = ("schedules", index)
            if not isinstance(item, dict):
                self.error(path, f"a schedule must be a mapping, got {kind_of(item)}")
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
            "input": json_copy(variables) if variables is not None else {},
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
                self.error(ref_path, f"unknown state '{target}'{choices_text(states)}")
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
            self.error(path, f"must be {expected}, got {kind_of(value)}")
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
            self.error(start_path, f"start names unknown state '{start}'{choices_text(states)}")
        if start in states:
            self._reachable(scope, start)
        return {"start": start, "states": states}

    # ---- one state -------------------------------------------------------------------------------

    def _state(self, item: Any, path: PathT) -> _Parsed:
        if not isinstance(item, dict):
            self.error(path, f"a state must be a mapping, got {kind_of(item)}")
            return _Parsed(None, path, None, [])
        name_key = self._alias(item, path, "name", "id")
        name: str | None = None
        name_path: PathT = (*path, name_key) if name_key else path
        if name_key is None:
            self.error(path, "a state needs a 'name' (or 'id')")
        else:
            name = self._str(item, name_key, path, required=True)
            if name is not None and not NAME_RE.match(name):
                self.error(name_path, f"state name '{name}' must start with a letter or '_' and contain only "
                           "letters, digits, '_' and '-'")
        # From here on a name is registered even if the state is broken, so references to it don't cascade.
        kind = self._str(item, "type", path, required=True)
        if kind is not None and kind not in TYPE_KEYS:
            self.error((*path, "type"), f"unknown state type '{kind}' (known: {', '.join(STATE_TYPES)})")
            kind = None
        if kind is None:  # keys no state type knows are still worth a did-you-mean (`typ:`)
            self._unknown_keys(item, path, ANY_STATE_KEYS, "in a state")
            return _Parsed(name, name_path, None, [])
        forbidden = FORBIDDEN_COMMON.get(kind, {})
        for key, message in forbidden.items():
            if key in item:
                self.error((*path, key), message)
        allowed = [k for k in COMMON_KEYS if k not in forbidden] + list(TYPE_KEYS[kind])
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
