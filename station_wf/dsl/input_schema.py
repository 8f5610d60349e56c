"""The run-input JSON Schema, made safe to evaluate on untrusted schemas and untrusted input.

Three things jsonschema does by default that a workflow author (schema) and a run starter (input)
could turn against the daemon:
- it retrieves remote `$ref`s with urllib, synchronously, with no timeout (SSRF, `file://` reads, a
  hang): here refs resolve only inside the schema itself, through a `referencing.Registry` whose
  retrieval always fails;
- it matches `pattern`/`patternProperties` with Python's backtracking `re` (`^(a+)+$` doubles its time
  per input character): here they run on RE2, which is linear in the input; a pattern RE2 cannot take
  (look-around, back-references) is refused when the workflow is created;
- `{"$ref": "#"}` recurses until RecursionError: caught and reported as a schema problem, never a 500.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import re2
from jsonschema import ValidationError
from jsonschema.exceptions import SchemaError
from jsonschema.validators import Draft202012Validator, extend, validator_for
from referencing import Registry
from referencing.exceptions import NoSuchResource, Unresolvable

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_RE2_OPTIONS.max_mem = 8 << 20  # one compiled pattern may not take more than 8 MiB
MAX_PATTERN_LENGTH = 1000
_NOT_SCHEMA_KEYS = frozenset({"enum", "const", "default", "examples"})  # data, not subschemas


class SchemaProblem(ValueError):
    """The schema itself cannot be used (a bad pattern, a remote or cyclic `$ref`)."""


def _no_retrieval(uri: str) -> Any:
    raise NoSuchResource(ref=uri)


_LOCAL_ONLY = Registry(retrieve=_no_retrieval)  # type: ignore[call-arg]


@lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> Any:
    """RE2 with bounded memory; raises SchemaProblem for what RE2 cannot match in linear time."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise SchemaProblem(f"pattern is longer than {MAX_PATTERN_LENGTH} characters")
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise SchemaProblem(f"pattern {pattern[:80]!r} is not supported (linear-time regex only: no look-around or "
                            f"back-references): {reason}") from None


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    if validator.is_type(instance, "string") and not compile_pattern(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, pattern_properties: dict[str, Any], instance: Any, schema: Any) -> Any:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in pattern_properties.items():
        regex = compile_pattern(pattern)
        for key, value in instance.items():
            if regex.search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


@lru_cache(maxsize=16)
def _safe_class(base: type) -> type:
    return extend(base, {"pattern": _pattern, "patternProperties": _pattern_properties})


@lru_cache(maxsize=512)
def _validator(schema_json: str) -> Any:
    schema = json.loads(schema_json)
    cls = _safe_class(validator_for(schema, default=Draft202012Validator))
    return cls(schema, registry=_LOCAL_ONLY)


def input_schema_errors(schema: dict[str, Any], instance: Any) -> list[ValidationError]:
    """Every violation, in instance-path order; SchemaProblem when the schema cannot be evaluated."""
    validator = _validator(json.dumps(schema, sort_keys=True))
    try:
        return sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])
    except RecursionError:
        raise SchemaProblem("inputSchema refers to itself without end (a $ref cycle)") from None
    except (Unresolvable, NoSuchResource) as exc:
        raise SchemaProblem(f"inputSchema has a $ref that does not resolve inside the schema: {exc}") from None


def _walk(schema: Any) -> Any:
    """Every (key, value) of a schema's objects, skipping data keywords; iterative."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                yield key, value
                if key not in _NOT_SCHEMA_KEYS:
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)


_PROBES: tuple[Any, ...] = ({}, [], "", 0, None, True, {"a": {}}, [{}])


def schema_problems(schema: Any) -> list[str]:
    """What makes an inputSchema unsafe or unusable, checked when a definition is created or synced."""
    if not isinstance(schema, dict) or not schema:
        return []
    problems: list[str] = []
    for key, value in _walk(schema):
        if key in ("$ref", "$dynamicRef", "$recursiveRef") and isinstance(value, str) and not value.startswith("#"):
            problems.append(f"inputSchema $ref {value[:200]!r}: only local references ('#...') are allowed")
        patterns = [value] if key == "pattern" and isinstance(value, str) else \
            list(value) if key == "patternProperties" and isinstance(value, dict) else []
        for pattern in patterns:
            try:
                compile_pattern(pattern)
            except SchemaProblem as exc:
                problems.append(f"inputSchema: {exc}")
    if problems:
        return problems
    try:
        _safe_class(validator_for(schema, default=Draft202012Validator)).check_schema(schema)
    except SchemaError as exc:
        return [f"inputSchema is not a valid JSON Schema: {exc.message}"]
    for probe in _PROBES:  # a $ref cycle or a dangling local ref shows on almost any instance
        try:
            input_schema_errors(schema, probe)
        except SchemaProblem as exc:
            return [str(exc)]
    return []
