"""`environments/<env>/policies.yaml`: read, checked with file:line errors, and re-read on change.

The file is optional (no file: no policies). At start-up a broken file stops the daemon with its
problems; later, a broken edit is logged (file:line) and the last good policies stay in force, so
a typo never opens everything up nor shuts everything down.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from station_wf.dsl.problems import DefinitionError, PathT, Report
from station_wf.dsl.spec import MISSING
from station_wf.dsl.yaml_marks import Builder, TooLarge, compose, report_yaml_error
from station_wf.expr.limits import expression_problem
from station_wf.expr.starlark_eval import CompiledExpression, ExpressionError, compile_expression
from station_wf.governance.rates import Rate, parse_rate

log = logging.getLogger(__name__)

FILE_NAME = "policies.yaml"
ACTIONS = ("run", "signal", "cancel", "query")
_KEYS: dict[str, frozenset[str]] = {
    "run": frozenset({"allow", "block", "condition", "maxInputSizeKb", "requiredInputFields", "rateLimit"}),
    "signal": frozenset({"allow", "block", "condition", "allowedSignals", "rateLimit"}),
    "cancel": frozenset({"allow", "block", "condition", "requireReason"}),
    "query": frozenset({"allow", "block", "condition", "maxResults", "allowedStatuses"}),
}
CHECK_EVERY_S = 1.0
MAX_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class Rule:
    """One action's policy; `where` is `file:line` of the action's section, for denials."""
    action: str
    where: str
    allow: tuple[str, ...] | None = None
    block: tuple[str, ...] = ()
    condition: CompiledExpression | None = None
    condition_where: str = ""
    max_input_bytes: int | None = None
    required_fields: tuple[tuple[str, tuple[str, ...]], ...] = ()
    rate: Rate | None = None
    allowed_signals: tuple[str, ...] | None = None
    require_reason: bool = False
    max_results: int | None = None
    allowed_statuses: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Policies:
    source: str | None = None
    rules: dict[str, Rule] = field(default_factory=dict)

    def rule(self, action: str) -> Rule | None:
        return self.rules.get(action)


NONE = Policies()


class _Checker:
    def __init__(self, report: Report, source: str) -> None:
        self.report, self.source = report, source

    def where(self, path: PathT) -> str:
        mark = self.report.mark_of(path)
        return f"{self.source}:{mark[0]}" if mark else self.source

    def patterns(self, value: Any, path: PathT) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            self.report.error(path, "must be a list of workflow-id patterns (like report.* or orders.create)")
            return None
        return tuple(value)

    def strings(self, value: Any, path: PathT, what: str) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            self.report.error(path, f"must be a list of {what}")
            return None
        return tuple(value)

    def positive(self, value: Any, path: PathT) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.report.error(path, f"must be a positive integer, got {value!r:.40}")
            return None
        return value

    def condition(self, value: Any, path: PathT) -> CompiledExpression | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.report.error(path, "must be a Starlark expression over principal, workflow, run and request")
            return None
        problem = expression_problem(value)
        if problem:
            self.report.error(path, problem)
            return None
        try:
            compiled = compile_expression(value, label=f"{self.source} {'.'.join(map(str, path))}")
        except ExpressionError as exc:
            self.report.error(path, f"not a valid expression: {exc}")
            return None
        unknown = [n for n in compiled.free_names if n not in ("principal", "workflow", "run", "request")]
        if unknown:
            self.report.error(path, f"unknown name {unknown[0]!r} (conditions read principal, workflow, run, request)")
            return None
        return compiled

    def rule(self, action: str, section: Any) -> Rule | None:
        path: PathT = (action,)
        if not isinstance(section, dict):
            self.report.error(path, "must be a mapping")
            return None
        for key in sorted(set(section) - _KEYS[action]):
            self.report.error((*path, key), f"unknown key (a {action} policy takes: {', '.join(sorted(_KEYS[action]))})")
        out: dict[str, Any] = {"action": action, "where": self.where(path)}
        out["allow"] = self.patterns(section.get("allow"), (*path, "allow"))
        out["block"] = self.patterns(section.get("block"), (*path, "block")) or ()
        out["condition"] = self.condition(section.get("condition"), (*path, "condition"))
        out["condition_where"] = self.where((*path, "condition"))
        if "rateLimit" in section:
            try:
                out["rate"] = parse_rate(section["rateLimit"], "rateLimit")
            except ValueError as exc:
                self.report.error((*path, "rateLimit"), str(exc).removeprefix("rateLimit: "))
        if action == "run":
            kb = self.positive(section.get("maxInputSizeKb"), (*path, "maxInputSizeKb"))
            out["max_input_bytes"] = kb * 1024 if kb else None
            fields = section.get("requiredInputFields")
            if fields is not None:
                if not isinstance(fields, dict):
                    self.report.error((*path, "requiredInputFields"), "must map workflow-id patterns to lists of field names")
                else:
                    pairs = []
                    for pattern, names in fields.items():
                        got = self.strings(names, (*path, "requiredInputFields", pattern), "input field names")
                        if got is not None:
                            pairs.append((pattern, got))
                    out["required_fields"] = tuple(pairs)
        if action == "signal":
            out["allowed_signals"] = self.strings(section.get("allowedSignals"), (*path, "allowedSignals"), "signal names")
        if action == "cancel":
            reason = section.get("requireReason", False)
            if not isinstance(reason, bool):
                self.report.error((*path, "requireReason"), "must be true or false")
            out["require_reason"] = reason is True
        if action == "query":
            out["max_results"] = self.positive(section.get("maxResults"), (*path, "maxResults"))
            out["allowed_statuses"] = self.strings(section.get("allowedStatuses"), (*path, "allowedStatuses"), "run statuses")
        return Rule(**out)


def parse_policies(text: str, source: str) -> Policies:
    """The policies of one file's text; DefinitionError (file:line per problem) when anything is wrong."""
    report = Report(source)
    node, text, error = compose(text, False)
    if node is MISSING:
        report_yaml_error(error, report)
        raise DefinitionError(report.problems)
    if node is None:
        return Policies(source)
    builder = Builder(report)
    try:
        raw = builder.build(node, ())
    except TooLarge as exc:
        report.add((), None, str(exc))
        raise DefinitionError(report.problems) from None
    report.marks.update(builder.marks)
    if report.problems:
        raise DefinitionError(report.problems)
    if not isinstance(raw, dict):
        report.error((), "policies.yaml must be a mapping of run, signal, cancel, query")
        raise DefinitionError(report.problems)
    checker = _Checker(report, source)
    rules: dict[str, Rule] = {}
    for key in raw:
        if key not in ACTIONS:
            report.error((key,), f"unknown section (sections are: {', '.join(ACTIONS)})")
    for action in ACTIONS:
        if raw.get(action) is not None:
            rule = checker.rule(action, raw[action])
            if rule is not None:
                rules[action] = rule
    if report.problems:
        raise DefinitionError(report.problems)
    return Policies(source, rules)


class PolicyFile:
    """The environment's policies, re-read when the file changes (checked at most once a second)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._signature: tuple[int, int] | None = None
        self._checked = 0.0
        self.policies = NONE
        self.error: str | None = None

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path) if self.path is not None else None
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size) if st is not None else None

    def load(self) -> Policies:
        """Read now; raises DefinitionError/OSError (start-up uses this: a broken file stops the daemon)."""
        signature = self._stat()
        if signature is None or self.path is None:
            policies = NONE
        else:
            if signature[1] > MAX_FILE_BYTES:
                raise ValueError(f"{self.path}: over {MAX_FILE_BYTES} bytes")
            policies = parse_policies(self.path.read_text(errors="replace"), str(self.path))
        self.policies, self._signature, self.error = policies, signature, None
        self._checked = time.monotonic()
        return policies

    def current(self) -> Policies:
        """The policies in force; a changed file is re-read, a broken one logged and ignored."""
        now = time.monotonic()
        if now - self._checked < CHECK_EVERY_S:
            return self.policies
        with self._lock:
            if now - self._checked < CHECK_EVERY_S:
                return self.policies
            self._checked = now
            signature = self._stat()
            if signature == self._signature:
                return self.policies
            try:
                self.load()
                log.info("policies: %s reloaded", self.path)
            except (DefinitionError, OSError, ValueError, yaml.YAMLError) as exc:
                self._signature = signature  # not again until it changes
                self.error = str(exc)
                log.error("policies: %s is not valid, the previous policies stay in force:\n%s", self.path, exc)
            return self.policies
