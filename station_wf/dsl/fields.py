"""Field checks shared by every state type: strings, numbers, lists, paths, Starlark and templates.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any

from station_wf.dsl import limits
from station_wf.dsl.diagnostics import clip, parse_error, statement_problem, syntax_error
from station_wf.dsl.problems import PathT
from station_wf.dsl.spec import RETRY_KEYS, is_number, json_copy, kind_of
from station_wf.expr.limits import MAX_EXPRESSION_BYTES, MAX_TEMPLATES_PER_STRING, expression_problem
from station_wf.expr.paths import PathError, parse_path
from station_wf.expr.starlark_eval import PROGRAM_DIALECT


class FieldChecks:
    """Field, expression and template checks the checker uses everywhere (a mixin of `Checker`)."""

    # ---- fields ----------------------------------------------------------------------------------

    def _retry(self, item: dict[str, Any], path: PathT) -> dict[str, Any] | None:
        retry = self._dict(item, "retry", path)
        if retry is None:
            return None
        rpath: PathT = (*path, "retry")
        self._unknown_keys(retry, rpath, RETRY_KEYS, "in retry")
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
        return json_copy(value) if value is not None else None

    def _path_field(self, obj: dict[str, Any], key: str, path: PathT, *, required: bool = False) -> str | None:
        value = self._str(obj, key, path, required=required)
        if value is not None and not self._check_path(value, (*path, key)):
            return None
        return value

    def _check_path(self, value: Any, path: PathT) -> bool:
        """DESIGN 3 paths: `a.b`, `a[0].b`, optional `$.`/`ctx.` prefix, `ctx` or `$` for the root."""
        if not isinstance(value, str):
            self.error(path, f"must be a string, got {kind_of(value)}")
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
        problem = parse_error(source, PROGRAM_DIALECT) if self.statements_ok and what == "expression" else syntax_error(source)
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
                                   f"{clip(source[start:])!r}")
                return
            first: tuple[int, tuple[str, int | None]] | None = None
            while close >= 0:
                inner = source[start + 2:close]
                too_big = expression_problem(inner) if len(inner) > MAX_EXPRESSION_BYTES else None
                if too_big:  # also bounds this search: candidates past the size limit are not parsed
                    self._error_inside(path, start, f"template {clip(source[start:close + 2])!r} {too_big}")
                    return
                problem = parse_error(inner)
                if problem is None:
                    too_big = expression_problem(inner)  # depth, counted once the text parses
                    if too_big:
                        self._error_inside(path, start, f"template {clip(source[start:close + 2])!r} {too_big}")
                        return
                    problem = statement_problem(inner)
                    first = (close, problem) if problem else None
                    break
                first = first or (close, problem)
                close = source.find("}}", close + 1)
            if first is not None:
                close, (message, offset) = first
                where = start if offset is None else start + 2 + offset
                self._error_inside(path, where, f"template {clip(source[start:close + 2])!r} {message}")
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
                self.error((*path, key), unknown_message(key, allowed, where))

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
            self.error((*path, key), f"must be a string, got {kind_of(value)}")
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
            self.error((*path, key), f"must be true or false, got {kind_of(value)}")
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
            self.error((*path, key), f"must be an integer, got {kind_of(value)}")
            return None
        if not is_number(value) or not math.isfinite(value):
            self.error((*path, key), f"must be a number, got {kind_of(value)}")
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
            self.error((*path, key), f"must be a mapping, got {kind_of(value)}")
            return None
        return value

    def _list(self, obj: dict[str, Any], key: str, path: PathT, *, required: bool = False) -> list[Any] | None:
        if key not in obj or (obj[key] is None and not required):
            if required:
                self.error((*path, key), f"missing required key '{key}'")
            return None
        value = obj[key]
        if not isinstance(value, list):
            self.error((*path, key), f"must be a list, got {kind_of(value)}")
            return None
        return value



def unknown_message(key: str, allowed: Iterable[str], where: str) -> str:
    """'unknown key' with the likely intended one, or the allowed keys when nothing is close."""
    allowed = list(allowed)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(allowed)}"
    return f"unknown key '{key}' {where} ({hint})"
