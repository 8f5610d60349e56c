"""Station's own workflow dialect: decide it, then rewrite a Station document into what the loader checks.

Station (cloudshipai/station, `internal/workflows/types.go`) parses its files leniently: Go's YAML
decoder drops keys it does not know, `timeout` is a duration string, `retry` is snake_case, a
parallel branch may be a bare `agent:`, and data flows through `steps.<id>.output`, `output:` maps
and `$.`-paths. This module turns such a document into the canonical shape the strict loader knows,
before the loader runs, and keeps what the canonical model has no key for (output maps, input/output
paths, aggregation, retry_on) in a `dataflow` block per state that `core/station_flow.py` applies.
Keys Station would silently ignore become warnings with file:line and a did-you-mean, never errors;
what cannot run (a missing state, bad Starlark) stays an error, reported by the loader as always.

How a document's dialect is decided (docs/dialects.md): an explicit top-level `dialect:`; else the
API-payload form (`workflowId` + `definition`) is Station; else `specVersion` or any `action:` is
the PRD; else any construct only Station writes makes it Station; else it is the PRD.
"""

from __future__ import annotations

import copy
import difflib
import io
import re
import tokenize
from dataclasses import dataclass, field
from typing import Any

from station_wf.dsl.problems import Problem, format_path
from station_wf.dsl.spec import parse_duration
from station_wf.dsl.station_detect import ACTION_MARKERS as _ACTION_MARKERS
from station_wf.dsl.station_detect import DIALECTS, decide_dialect
from station_wf.dsl.station_names import unresolvable, writable_names
from station_wf.expr.paths import PathError, parse_path

__all__ = ["DIALECTS", "LoadedDefinition", "StationPrep", "decide_dialect", "prepare", "rewrite_literals"]

DATAFLOW_KEY = "_stationDataflow"  # carried through the loader inside `metadata`, moved out after
# Every key of Station's StateSpec, BranchSpec, IteratorSpec (types.go), besides the canonical ones.
_STATION_STATE_KEYS = (
    "id", "name", "type", "input", "output", "transition", "next", "end", "retry", "timeout", "agent", "task",
    "message", "approval_title", "approvers", "dataPath", "conditions", "defaultNext", "data", "resultPath",
    "branches", "join", "itemsPath", "itemName", "maxConcurrency", "iterator", "cron", "timezone", "enabled",
    "duration", "server", "tool", "try", "catch", "finally", "expression", "inputPath", "outputPath",
    "outputAggregation",
)
# Keys this daemon's canonical dialect adds and that a Station file may also use.
_EXTRA_KEYS = (
    "prompt", "timeout_seconds", "timeoutSeconds", "description", "metadata", "summaryPath", "onReject",
    "onTimeout", "durationSeconds", "agentTask", "operation", "itemVariable", "action",
)
# Which keys do something for which type here (everything else Station would ignore: a warning).
_COMMON = ("id", "name", "type", "next", "transition", "end", "resultPath", "description", "metadata", "output",
           "inputPath", "outputPath")
_BY_TYPE: dict[str, tuple[str, ...]] = {
    "operation": ("action", "operation", "input", "timeout", "timeoutSeconds", "retry", "agent", "task", "agentTask"),
    "agent": ("agent", "task", "prompt", "agentTask", "input", "timeout", "timeoutSeconds", "retry"),
    "human_approval": ("message", "prompt", "approvers", "approval_title", "timeout", "timeout_seconds",
                       "timeoutSeconds", "summaryPath", "onReject", "onTimeout"),
    "inject": ("data",),
    "switch": ("dataPath", "conditions", "defaultNext"),
    "parallel": ("branches", "join", "outputAggregation"),
    "foreach": ("itemsPath", "itemName", "itemVariable", "maxConcurrency", "iterator", "agent", "task", "agentTask",
                "outputAggregation", "input", "timeout", "retry"),
    "transform": ("expression",),
    "sleep": ("duration", "durationSeconds"),
    "timer": ("duration", "durationSeconds"),
    "try": ("try", "catch", "finally"),
    "cron": ("cron", "timezone", "enabled", "input"),
}
# Keys the canonical loader refuses for a type; Station just never reads them there.
_NO_EFFECT = {"switch": ("next", "transition", "end", "resultPath"), "cron": ("end", "resultPath")}
_AGGREGATIONS = {"parallel": ("merge", "array", "first"), "foreach": ("array", "merge")}
_RETRY_KEYS = ("max_attempts", "backoff", "retry_on", "maxAttempts", "backoffSeconds", "backoffRate",
               "maxBackoffSeconds", "jitter")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LITERALS = {"true": "True", "false": "False", "null": "None"}  # same lengths: positions stay valid

PathT = tuple[str | int, ...]


@dataclass
class StationPrep:
    """What `prepare` found: the dialect, why, and the warnings to show (they never fail a load)."""

    dialect: str
    reason: str
    warnings: list[tuple[PathT, str]] = field(default_factory=list)
    output_schema: dict[str, Any] | None = None
    names: list[str] = field(default_factory=list)


# ---- expressions ---------------------------------------------------------------------------------


def rewrite_literals(source: str) -> str:
    """`true`/`false`/`null` as names mean True/False/None (YAML and JSON habits); strings, attributes
    (`x.true`) and keys are left alone. Same lengths, so error positions still point into the file."""
    if not any(word in source for word in _LITERALS):
        return source
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return source
    lines = source.split("\n")
    previous = None
    edits: list[tuple[int, int, str]] = []
    for tok in tokens:
        if tok.type == tokenize.NAME and tok.string in _LITERALS and not (previous is not None and previous.string == "."):
            edits.append((tok.start[0] - 1, tok.start[1], _LITERALS[tok.string]))
        if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
            previous = tok
    for row, col, text in edits:
        line = lines[row]
        lines[row] = line[:col] + text + line[col + len(text):]
    return "\n".join(lines)


def _rewrite_templates(value: Any) -> Any:
    """`{{ ... }}` inside strings are expressions too: the same literal rewrite inside each one."""
    if isinstance(value, str):
        if "{{" not in value:
            return value
        return re.sub(r"\{\{(.*?)\}\}", lambda m: "{{" + rewrite_literals(m.group(1)) + "}}", value, flags=re.DOTALL)
    if isinstance(value, dict):
        return {k: _rewrite_templates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite_templates(v) for v in value]
    return value


def path_template(value: str) -> str | None:
    """`"$.input.service_name"` -> `"{{ ctx.workflow.input.service_name }}"`: Station's input maps read
    the context with `$.`-paths; here they become one-value templates (the value keeps its type).
    `$.input` is the workflow input; other roots are names of the step's scope (`$.service.name` in a
    foreach). None when the text is not such a path."""
    if not (value.startswith("$.") or value == "$") or "{{" in value or " " in value.strip():
        return None
    try:
        segments = parse_path(value)
    except PathError:
        return None
    if not segments:
        return "{{ ctx }}"
    if segments[0] == "input":
        segments = ("workflow", "input", *segments[1:])
    head, rest = segments[0], segments[1:]
    if not isinstance(head, str) or not _IDENT_RE.match(head):
        return None
    expr = ("ctx." + head) if head in ("workflow", "steps") else head
    for seg in rest:
        if isinstance(seg, int):
            expr += f"[{seg}]"
        elif _IDENT_RE.match(seg) and seg not in _LITERALS:
            expr += f".{seg}"
        else:
            expr += f"[{seg!r}]"
    return "{{ " + expr + " }}"


def _map_paths(value: Any) -> Any:
    if isinstance(value, str):
        return path_template(value) or value
    if isinstance(value, dict):
        return {k: _map_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_paths(v) for v in value]
    return value


# ---- the rewrite ---------------------------------------------------------------------------------


def prepare(obj: dict[str, Any], marks: dict[PathT, Any]) -> tuple[dict[str, Any], StationPrep]:
    """The document the loader checks, and the Station facts about it. PRD documents pass unchanged
    (except an explicit `dialect:` key, which is only ever read here)."""
    dialect, reason = decide_dialect(obj)
    prep = StationPrep(dialect, reason)
    if dialect == "prd":
        if "dialect" in obj:
            obj = {k: v for k, v in obj.items() if k != "dialect"}
        return obj, prep
    doc = copy.deepcopy(obj)
    if isinstance(doc.get("definition"), dict) and "workflowId" in doc:
        doc = _unwrap_payload(doc, marks)
    doc.pop("dialect", None)
    rewriter = _Rewriter(prep)
    schema = doc.pop("outputSchema", None)
    if schema is not None:
        prep.output_schema = schema if isinstance(schema, dict) else None
        if not isinstance(schema, dict):
            prep.warnings.append((("outputSchema",), "outputSchema must be a mapping (a JSON Schema); ignored"))
    for key in list(doc):
        if key not in _TOP_KNOWN:
            prep.warnings.append(((key,), _ignored(key, _TOP_KNOWN, "at the top level")))
            del doc[key]
    if isinstance(doc.get("states"), list):
        doc["states"] = rewriter.states(doc["states"], ("states",))
    prep.warnings.extend(unresolvable(doc))
    prep.names = writable_names(doc)
    return doc, prep


_TOP_KNOWN = ("id", "name", "version", "description", "start", "states", "inputSchema", "timeoutSeconds",
              "schedules", "metadata", "specVersion")


def _unwrap_payload(doc: dict[str, Any], marks: dict[PathT, Any]) -> dict[str, Any]:
    """`{"workflowId", "name", "description", "definition": {...}}` -> the definition, with the outer
    id/name/description as defaults; line marks move with it so messages still point into the file."""
    inner = dict(doc["definition"])
    inner.setdefault("id", doc.get("workflowId"))
    for key in ("name", "description", "version"):
        if key in doc and key not in inner:
            inner[key] = doc[key]
    moved = {path[1:]: mark for path, mark in marks.items() if path[:1] == ("definition",)}
    for key in ("workflowId", "name", "description", "version"):
        if (key,) in marks:
            moved.setdefault(("id",) if key == "workflowId" else (key,), marks[(key,)])
    marks.clear()
    marks.update(moved)
    return inner


def _ignored(key: str, allowed: tuple[str, ...], where: str) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"warning: unknown key '{key}' {where} is ignored, as Station ignores it{hint}"


class _Rewriter:
    def __init__(self, prep: StationPrep) -> None:
        self.prep = prep

    def warn(self, path: PathT, message: str) -> None:
        self.prep.warnings.append((path, message))

    def states(self, items: list[Any], path: PathT) -> list[Any]:
        out = [self.state(item, (*path, i)) if isinstance(item, dict) else item for i, item in enumerate(items)]
        _decisions_as_data(out)
        return out

    def block(self, block: Any, path: PathT) -> Any:
        if isinstance(block, list):
            return self.states(block, path)
        if isinstance(block, dict) and isinstance(block.get("states"), list):
            return {**block, "states": self.states(block["states"], (*path, "states"))}
        return block

    def state(self, raw: dict[str, Any], path: PathT) -> dict[str, Any]:
        s = dict(raw)
        kind = s.get("type")
        flow: dict[str, Any] = {}
        if "id" in s and "name" in s:  # Station: `id` is the state, `name` its display name
            flow["displayName"] = s.pop("name")
        if kind == "set":
            s["type"] = kind = "inject"
        known = _COMMON + _BY_TYPE.get(kind, ()) if isinstance(kind, str) and kind in _BY_TYPE else None
        if known is not None:
            for key in list(s):
                if key not in known:
                    where = f"for {'an' if kind[0] in 'aeiou' else 'a'} {kind} state"
                    hint = _ignored(key, known, where)
                    if key in _STATION_STATE_KEYS or key in _EXTRA_KEYS:
                        hint = f"warning: '{key}' has no effect {where} (Station ignores it too); ignored"
                    self.warn((*path, key), hint)
                    del s[key]
        for key in _NO_EFFECT.get(kind, ()) if isinstance(kind, str) else ():
            if key in s:
                self.warn((*path, key), f"warning: '{key}' has no effect on a {kind} state; ignored")
                del s[key]
        for key in ("output", "inputPath", "outputPath", "outputAggregation"):
            if key in s:
                self._dataflow(s.pop(key), key, kind, path, flow)
        if "timeout" in s:
            self._timeout(s, kind, path)
        if isinstance(s.get("retry"), dict):
            s["retry"] = self._retry(s["retry"], (*path, "retry"), flow)
        if "agentTask" in s:
            self._rename(s, "agentTask", "task", path)
        if "operation" in s and kind == "operation":
            payload = dict(s.get("input") or {}) if isinstance(s.get("input"), dict) else {}
            if "task" in payload and payload["task"] not in _ACTION_MARKERS:  # `operation:` names the action,
                payload.setdefault("agent_task", payload.pop("task"))  # so `input.task` is the agent's task
            payload.setdefault("task", s.pop("operation"))
            s["input"] = payload
        if kind == "operation":
            self._operation(s, path)
        if kind == "agent" and isinstance(s.get("input"), dict):
            s["input"] = _map_paths(s["input"])
        if kind == "human_approval" and "approval_title" in s:
            title = s.pop("approval_title")
            flow["approvalTitle"] = title
            key = "message" if "message" in s or "prompt" not in s else "prompt"
            body = s.get(key)
            s[key] = f"{title}\n\n{body}" if isinstance(body, str) and body.strip() else str(title)
        if kind == "switch" and isinstance(s.get("conditions"), list):
            s["conditions"] = [self._condition(c) for c in s["conditions"]]
        if kind == "transform" and isinstance(s.get("expression"), str):
            s["expression"] = rewrite_literals(s["expression"])
        if kind == "parallel" and isinstance(s.get("branches"), list):
            s["branches"] = [self._branch(b, (*path, "branches", i)) for i, b in enumerate(s["branches"])]
        if kind == "foreach":
            self._foreach(s, path)
        for key in ("try", "catch", "finally"):
            if key in s:
                s[key] = self.block(s[key], (*path, key))
        for key in ("input", "task", "prompt", "message", "agent_task"):
            if key in s:
                s[key] = _rewrite_templates(s[key])
        metadata = s.get("metadata") if isinstance(s.get("metadata"), dict) else None
        if "metadata" in s and metadata is None:
            return s  # the loader reports the bad metadata
        s["metadata"] = {**(metadata or {}), DATAFLOW_KEY: {"userMetadata": metadata is not None, **flow}}
        return s

    def _rename(self, s: dict[str, Any], old: str, new: str, path: PathT) -> None:
        if new in s:
            self.warn((*path, old), f"warning: '{old}' and '{new}' both given; '{new}' is used")
            s.pop(old)
        else:
            s[new] = s.pop(old)

    def _dataflow(self, value: Any, key: str, kind: Any, path: PathT, flow: dict[str, Any]) -> None:
        if key == "output":
            if not isinstance(value, dict):
                self.warn((*path, key), "warning: 'output' must be a mapping of context keys to '$.' paths; ignored")
                return
            mapping = {}
            for name, source in value.items():
                if isinstance(source, str):
                    mapping[str(name)] = source
                else:
                    self.warn((*path, key, name), f"warning: output '{name}' must be a '$.' path string; ignored")
            flow["output"] = mapping
        elif key == "outputAggregation":
            choices = _AGGREGATIONS.get(kind) if isinstance(kind, str) else None
            if choices is None:
                self.warn((*path, key), "warning: 'outputAggregation' only applies to parallel and foreach; ignored")
            elif value not in choices:
                self.warn((*path, key), f"warning: outputAggregation {value!r} is not one of {', '.join(choices)}; "
                          f"'{choices[0] if kind == 'foreach' else 'merge'}' is used")
            else:
                flow["aggregation"] = value
        elif isinstance(value, str):
            flow[key] = value
        else:
            self.warn((*path, key), f"warning: '{key}' must be a '$.' path string; ignored")

    def _timeout(self, s: dict[str, Any], kind: Any, path: PathT) -> None:
        value = s.pop("timeout")
        target = "timeout_seconds" if kind == "human_approval" else "timeoutSeconds"
        if target in s or value is None:
            return
        seconds = parse_duration(value) if isinstance(value, str) else value
        s[target] = seconds if seconds is not None else value  # the loader names a bad value
        if kind == "foreach":
            s.pop(target)
            s["_timeoutForAgent"] = seconds

    def _retry(self, retry: dict[str, Any], path: PathT, flow: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in retry.items():
            if key not in _RETRY_KEYS:
                self.warn((*path, key), _ignored(key, _RETRY_KEYS, "in retry"))
            elif key == "max_attempts":
                out.setdefault("maxAttempts", value)
            elif key == "backoff":
                self._backoff(value, (*path, key), out)
            elif key == "retry_on":
                if isinstance(value, list) and all(isinstance(v, str) for v in value):
                    flow["retryOn"] = list(value)
                else:
                    self.warn((*path, key), "warning: retry_on must be a list of error kinds; ignored")
            else:
                out[key] = value
        out.setdefault("maxAttempts", 3 if "retry_on" in retry or "backoff" in retry else 1)
        return out

    def _backoff(self, value: Any, path: PathT, out: dict[str, Any]) -> None:
        if value == "exponential":
            out.setdefault("backoffRate", 2)
        elif value in ("fixed", "constant", "linear"):
            out.setdefault("backoffRate", 1)
        elif isinstance(value, str) and parse_duration(value) is not None:
            out.setdefault("backoffSeconds", parse_duration(value))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out.setdefault("backoffSeconds", value)
        else:
            self.warn(path, f"warning: backoff {value!r} is not 'exponential', 'fixed' or a duration; exponential is used")

    def _operation(self, s: dict[str, Any], path: PathT) -> None:
        """`type: operation` with `input.task: agent.run`: keys agent.run has no use for are dropped."""
        payload = s.get("input")
        if not isinstance(payload, dict):
            return
        payload = dict(payload)
        if "agentTask" in payload:
            payload.setdefault("agent_task", payload.pop("agentTask"))
        if "agent" in s and "agent" not in payload:
            payload["agent"] = s.pop("agent")
        if "task" in s and payload.get("task") in _ACTION_MARKERS:
            payload.setdefault("agent_task", s.pop("task"))
        if payload.get("task") in ("agent.run", "agent.hierarchy.run"):
            payload["task"] = "agent.run"
            known = ("task", "agent", "agent_task", "variables", "timeout_seconds", "timeoutSeconds", "userInput")
            if "userInput" in payload:
                payload.setdefault("agent_task", payload.pop("userInput"))
            for key in list(payload):
                if key not in known:
                    self.warn((*path, "input", key), _ignored(key, known, "in agent.run input"))
                    del payload[key]
            if isinstance(payload.get("variables"), dict):
                payload["variables"] = _map_paths(payload["variables"])
        s["input"] = payload
        for key in ("agent", "task"):
            if key in s:
                self.warn((*path, key), f"warning: '{key}' has no effect beside 'input.task'; ignored")
                del s[key]

    def _condition(self, cond: Any) -> Any:
        if not isinstance(cond, dict):
            return cond
        out = dict(cond)
        if "if" in out:
            value = out["if"]
            if isinstance(value, bool) or value is None:
                out["if"] = repr(value)
            elif isinstance(value, int | float):
                out["if"] = str(value)
            elif isinstance(value, str):
                out["if"] = rewrite_literals(value)
        return out

    def _branch(self, branch: Any, path: PathT) -> Any:
        """`- name: k8s` + `agent: k8s-investigator`: a branch that is one agent call."""
        if not isinstance(branch, dict):
            return branch
        b = dict(branch)
        if "id" in b:
            if "name" in b:
                self.warn((*path, "name"), "warning: a branch with 'id' and 'name': 'id' names it")
            b["name"] = b.pop("id")
        if "agent" in b:
            agent = b.pop("agent")
            if "states" in b:
                self.warn((*path, "agent"), "warning: a branch with 'states' and 'agent': the states run, "
                          "'agent' is ignored")
            else:
                name = b.get("name") if isinstance(b.get("name"), str) else "agent"
                call: dict[str, Any] = {"id": name, "type": "agent", "agent": agent, "end": True}
                for key in ("task", "input", "timeout", "retry"):
                    if key in b:
                        call[key] = b.pop(key)
                b["states"] = [call]
        for key in list(b):
            if key not in ("name", "start", "states"):
                self.warn((*path, key), _ignored(key, ("name", "start", "states", "agent"), "in a parallel branch"))
                del b[key]
        if isinstance(b.get("states"), list):
            b["states"] = self.states(b["states"], (*path, "states"))
        return b

    def _foreach(self, s: dict[str, Any], path: PathT) -> None:
        """`agent:` directly on a foreach: each item is one agent call; `itemVariable` names the item."""
        if "itemVariable" in s:
            if "itemName" in s:
                self.warn((*path, "itemVariable"), "warning: 'itemName' and 'itemVariable' both given; 'itemName' is used")
                s.pop("itemVariable")
            else:
                s["itemName"] = s.pop("itemVariable")
        timeout = s.pop("_timeoutForAgent", None)
        if "agent" in s:
            agent = s.pop("agent")
            if "iterator" in s:
                self.warn((*path, "agent"), "warning: a foreach with 'iterator' and 'agent': the iterator runs")
            else:
                item = s.get("itemName") if isinstance(s.get("itemName"), str) else "item"
                call: dict[str, Any] = {"id": "call", "type": "agent", "agent": agent, "end": True}
                task = s.pop("task", None)
                call["task"] = task if task is not None else "{{ " + item + " }}"
                if "input" in s:
                    call["input"] = _map_paths(s.pop("input"))
                if "retry" in s:
                    call["retry"] = s.pop("retry")
                if timeout is not None:
                    call["timeoutSeconds"] = timeout
                s["iterator"] = {"start": "call", "states": [call]}
        for key in ("task", "input", "retry"):
            if key in s:
                self.warn((*path, key), f"warning: '{key}' on a foreach only applies with 'agent:'; ignored")
                del s[key]
        if "iterator" in s:
            s["iterator"] = self.block(s["iterator"], (*path, "iterator"))


class LoadedDefinition(dict):  # type: ignore[type-arg]
    """A normalized definition (a plain dict, stored as is) plus what is not stored: the dialect's
    reason and the warnings, shown by `validate`, sync and the API."""

    dialect: str = "prd"
    dialect_reason: str = ""
    warnings: list[Any]


def _decisions_as_data(states: list[Any]) -> None:
    """An approval whose next state is a switch routes on the decision itself (Station's examples:
    `defaultNext: rejected`), so a rejection or a timeout is data for it, not a failed run; any other
    approval keeps Station's documented default (rejected or timed out: the run fails)."""
    kinds = {s.get("id", s.get("name")): s.get("type") for s in states if isinstance(s, dict)}
    for state in states:
        if not isinstance(state, dict) or state.get("type") != "human_approval":
            continue
        target = state.get("transition", state.get("next"))
        if kinds.get(target) == "switch":
            state.setdefault("onReject", "continue")
            state.setdefault("onTimeout", "continue")


def finish(result: dict[str, Any], prep: StationPrep, report: Any) -> LoadedDefinition:
    """After the loader: mark the definition Station, move each state's dataflow block out of metadata."""
    from station_wf.dsl.loader import iter_states

    out = LoadedDefinition(result)
    out.dialect, out.dialect_reason = prep.dialect, prep.reason
    at = re.search(r" at (states\S*)$", prep.reason)
    if at:  # the marker's line, from the same marks errors use
        path = tuple(int(p) if p.isdigit() else p for p in re.findall(r"[A-Za-z_]\w*|\d+", at.group(1)))
        mark = report.mark_of(path)
        if mark is not None:
            out.dialect_reason += f" (line {mark[0]})"
    out.warnings = []
    for path, message in prep.warnings:
        mark = report.mark_of(path)
        line, column = mark if mark is not None else (None, None)
        out.warnings.append(Problem(report.source, line, format_path(path), message, column))
    out.warnings.sort(key=lambda p: (p.line is None, p.line or 0, p.column or 0))
    if prep.dialect != "station":
        return out
    out["dialect"] = "station"
    out["outputSchema"] = prep.output_schema
    out["stationNames"] = prep.names
    for _, state in iter_states(out):
        metadata = state.get("metadata") or {}
        flow = dict(metadata.pop(DATAFLOW_KEY, None) or {})
        user = flow.pop("userMetadata", False)
        state["metadata"] = metadata if user or metadata else None
        state["dataflow"] = flow
    return out
