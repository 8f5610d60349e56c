"""Agent schemas: Picoschema -> JSON Schema at load, validation at call time, compatibility at definition load.

One module so the executor (validate), the flow check (compatible) and the catalog (to_json_schema)
agree on what a schema means.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine
from functools import lru_cache
from typing import Any

from dotpromptz import picoschema_to_json_schema
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

MAX_ERRORS = 10
_MAX_DEPTH = 8


class SchemaFileError(ValueError):
    pass


def _run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Drive a coroutine that never suspends. dotpromptz's Picoschema parser is async only because a
    schema *resolver* may be; we pass none, so it completes on the first step and needs no event loop
    (the catalog loads from sync code and from inside the daemon's loop alike)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise SchemaFileError("named schema references are not supported")


def to_json_schema(schema: Any) -> dict[str, Any] | None:
    """Picoschema or JSON Schema (as written in front matter) -> a checked JSON Schema, or None."""
    if schema is None or schema == {}:
        return None
    if not isinstance(schema, (dict, str)):
        raise SchemaFileError(f"must be a mapping (JSON Schema or Picoschema), got {type(schema).__name__}")
    try:
        out = _run_sync(picoschema_to_json_schema(schema))
    except ValueError as exc:
        raise SchemaFileError(str(exc)) from None
    if not isinstance(out, dict):
        raise SchemaFileError("does not describe a JSON value")
    try:
        validator_for(out).check_schema(out)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise SchemaFileError(f"not a valid JSON Schema{' at ' + where if where else ''}: {exc.message}") from None
    return out


@lru_cache(maxsize=512)
def _validator(schema_json: str) -> Any:
    schema = json.loads(schema_json)
    return validator_for(schema)(schema)


def validation_errors(instance: Any, schema: dict[str, Any]) -> list[str]:
    """Readable errors ('at path: message'), at most MAX_ERRORS; empty when the instance is valid."""
    validator = _validator(json.dumps(schema, sort_keys=True))
    out: list[str] = []
    try:
        found = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    except Exception as exc:  # noqa: BLE001 - e.g. a $ref that does not resolve: the schema's fault, reported
        return [f"(schema): cannot be evaluated: {type(exc).__name__}: {exc}"]
    for err in found:
        where = ".".join(str(p) for p in err.absolute_path) or "(root)"
        out.append(f"{where}: {err.message}")
        if len(out) >= MAX_ERRORS:
            break
    return out


# -- compatibility (flow check) ----------------------------------------------------------------------

def _types(schema: dict[str, Any]) -> set[str] | None:
    """The JSON types a schema admits, or None when it does not say."""
    if "const" in schema:
        return {_json_type(schema["const"])}
    if "enum" in schema and isinstance(schema["enum"], list):
        return {_json_type(v) for v in schema["enum"]}
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return {k for k in kind if isinstance(k, str)}
    if isinstance(schema.get("properties"), dict):
        return {"object"}
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _overlap(produced: set[str], accepted: set[str]) -> bool:
    if produced & accepted:
        return True
    if "integer" in produced and "number" in accepted:
        return True
    return "number" in produced and "integer" in accepted  # 1.0 is an integer to JSON Schema


def incompatibilities(produced: dict[str, Any], accepted: dict[str, Any], path: str = "", depth: int = 0) -> list[str]:
    """Why a value described by `produced` can never (or may not) satisfy `accepted`.

    Deliberately conservative: types, enums, required properties of objects, array items. Anything a
    schema does not state (no `type`, combinators like anyOf) is assumed compatible, so a warning
    always points at a real mismatch.
    """
    if depth > _MAX_DEPTH or not isinstance(produced, dict) or not isinstance(accepted, dict):
        return []
    where = path or "(root)"
    out: list[str] = []
    p_types, a_types = _types(produced), _types(accepted)
    if p_types is not None and a_types is not None:
        non_null = p_types - {"null"}
        if not _overlap(p_types, a_types):
            return [f"{where}: produces {_fmt(p_types)}, needs {_fmt(a_types)}"]
        if non_null and not _overlap(non_null, a_types):
            return [f"{where}: produces {_fmt(p_types)}, needs {_fmt(a_types)}"]
    if isinstance(accepted.get("enum"), list):
        if isinstance(produced.get("enum"), list):
            extra = [v for v in produced["enum"] if v not in accepted["enum"]]
            if extra:
                out.append(f"{where}: may produce {extra!r}, accepts only {accepted['enum']!r}")
        elif "const" in produced and produced["const"] not in accepted["enum"]:
            out.append(f"{where}: produces {produced['const']!r}, accepts only {accepted['enum']!r}")
    p_props: dict[str, Any] | None = produced["properties"] if isinstance(produced.get("properties"), dict) else None
    a_props: dict[str, Any] = accepted["properties"] if isinstance(accepted.get("properties"), dict) else {}
    if p_props is not None:
        p_required = set(produced.get("required") or [])
        for key in accepted.get("required") or []:
            sub = f"{path}.{key}" if path else str(key)
            if key not in p_props:
                out.append(f"{sub}: required, but the output schema does not declare it")
            elif key not in p_required:
                out.append(f"{sub}: required, but optional in the output schema")
        for key, a_sub in a_props.items():
            if key in p_props:
                sub = f"{path}.{key}" if path else str(key)
                out += incompatibilities(p_props[key], a_sub, sub, depth + 1)
    if isinstance(produced.get("items"), dict) and isinstance(accepted.get("items"), dict):
        out += incompatibilities(produced["items"], accepted["items"], f"{path}[]", depth + 1)
    return out


def _fmt(types: set[str]) -> str:
    return "|".join(sorted(types))


def sub_schema(schema: dict[str, Any], segments: list[str]) -> tuple[dict[str, Any] | None, list[str], list[str]]:
    """Follow a dotted path into a schema.

    Returns (the schema at the path, or None when the schema does not say or rules the path out; the
    trail followed, as schema keys; problems: a property the schema rules out, does not declare, or
    declares as optional — the template reading it fails when it is absent).
    """
    trail: list[str] = []
    problems: list[str] = []
    current: dict[str, Any] = schema
    for seg in segments:
        if not isinstance(current, dict):
            return None, trail, problems
        types = _types(current)
        if seg.isdigit() and (types is None or "array" in types):
            items = current.get("items")
            trail += ["items"]
            if not isinstance(items, dict):
                return None, trail, problems
            current = items
            continue
        props = current.get("properties")
        if types is not None and "object" not in types:
            return None, trail, [*problems, f"'{seg}' is read from a value of type {_fmt(types)}"]
        if not isinstance(props, dict):
            return None, trail, problems
        trail += ["properties", seg]
        if seg not in props:
            extra = current.get("additionalProperties")
            if extra is False:
                return None, trail, [*problems, f"the output schema has no property '{seg}' (additionalProperties: false)"]
            if isinstance(extra, dict):
                current = extra
                continue
            return None, trail, [*problems, f"the output schema does not declare '{seg}'"]
        if seg not in (current.get("required") or []):
            problems.append(f"'{seg}' is optional in the output schema: when it is absent the template fails")
        current = props[seg]
    return current, trail, problems
