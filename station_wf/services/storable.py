"""Can a value be stored and answered faithfully? Strict JSON decoding of request bodies, the same
checks for values built here (definitions), and an encoder for answers that cannot fail.

Why strict: Python's `json` accepts `NaN`/`Infinity`, turns `1e309` into inf, keeps lone surrogates
and arbitrary-size integers, and recurses on deep nesting. Each of those, once stored, makes SQLite or
the response encoder fail later (a 500 after the effect committed, and 500s on every read). So they are
refused at the door, before anything is stored. Why a forgiving encoder: rows written before these
checks may still hold such values; a read route must answer them, not 500. No HTTP here: the API's
`SafeJSONResponse` renders with `dumps_safe`.
"""

from __future__ import annotations

import json
import math
from typing import Any

from station_wf.errors import ServiceError
from station_wf.store.jsontext import try_dumps
from station_wf.strict_json import INT64_MAX, INT64_MIN, NotStorable, parse_constant, parse_float, parse_int

MAX_DEPTH = 64
def _bad(message: str, details: Any = None) -> ServiceError:
    return ServiceError(400, "malformed_json", message, details)


def check_value(value: Any, max_depth: int = MAX_DEPTH, what: str = "body") -> None:
    """Depth, strings (no lone surrogates) and numbers of an already decoded value; iterative, so it
    cannot recurse itself. Raises the 400 the API answers."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > max_depth:
                raise _bad(f"the {what} is nested deeper than {max_depth} levels", {"maxDepth": max_depth})
            for key, sub in item.items():
                _check_str(key, what)
                stack.append((sub, depth + 1))
        elif isinstance(item, list):
            if depth > max_depth:
                raise _bad(f"the {what} is nested deeper than {max_depth} levels", {"maxDepth": max_depth})
            stack.extend((sub, depth + 1) for sub in item)
        elif isinstance(item, str):
            _check_str(item, what)
        elif isinstance(item, float) and not math.isfinite(item):
            raise _bad(f"the {what} holds a number that is not finite")
        elif isinstance(item, int) and not isinstance(item, bool) and not INT64_MIN <= item <= INT64_MAX:
            raise _bad(f"the {what} holds an integer outside the signed 64-bit range")


def _check_str(text: str, what: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(f"the {what} holds a lone surrogate (\\ud800-\\udfff), which is not valid Unicode") from None


def decode_text(raw: bytes) -> str:
    """The body as text: it must be UTF-8 (a replacement character would silently change the data)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(f"the body is not valid UTF-8 (byte {exc.start})", {"offset": exc.start}) from None


def loads_strict(raw: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Decode a JSON body, refusing what could not be stored and answered faithfully (400 `malformed_json`)."""
    text = decode_text(raw) if isinstance(raw, bytes) else raw
    try:
        value = json.loads(text, parse_constant=parse_constant, parse_float=parse_float, parse_int=parse_int)
    except NotStorable as exc:
        raise _bad(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise _bad(f"the body is nested deeper than {max_depth} levels", {"maxDepth": max_depth}) from None
    except ValueError as exc:
        raise _bad(f"malformed JSON: {exc}", {"line": getattr(exc, "lineno", None), "column": getattr(exc, "colno", None)}) from None
    check_value(value, max_depth)
    return value


def refuse_hostile_json(text: str) -> None:
    """For `/validate`: the same 400 as create for values create would refuse (NaN, huge numbers,
    surrogates, depth), while a plain syntax error is left to the loader, which reports its line."""
    try:
        loads_strict(text)
    except ServiceError:
        try:  # syntax only: every number and constant accepted as-is
            json.loads(text, parse_int=len, parse_float=len, parse_constant=len)
        except ValueError:
            return  # a syntax error: `valid: false` with line and column, as before
        except RecursionError:
            pass
        raise


def _sanitize(value: Any) -> Any:
    """A copy with non-finite floats as null and lone surrogates replaced; iterative over depth by
    recursion only as deep as the value (stored values passed the depth check or came from our code)."""
    if isinstance(value, dict):
        return {_sanitize_str(str(k)): _sanitize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_sanitize(v) for v in value]
    if isinstance(value, str):
        return _sanitize_str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _sanitize_str(text: str) -> str:
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")


def dumps_safe(value: Any) -> str:
    """Strict JSON text for any value our code holds: never NaN, never an unencodable string, never an error.
    msgspec first (non-finite floats as null, always valid UTF-8: the common case, ~10x faster), then json."""
    fast = try_dumps(value)
    if fast is not None:
        return fast
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        text.encode("utf-8")
        return text
    except (ValueError, TypeError, RecursionError, UnicodeEncodeError):
        pass
    try:
        return json.dumps(_sanitize(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=str)
    except (ValueError, TypeError, RecursionError):
        return json.dumps({"error": {"code": "unencodable", "message": "the stored value cannot be shown as JSON"}})


def value_problem(value: Any, what: str, max_depth: int = MAX_DEPTH * 4) -> str | None:
    """Why `value` cannot be stored as JSON text in SQLite (a non-finite number, e.g. a duration that
    overflowed; a lone surrogate; absurd depth), or None. Definitions nest deeper than bodies, hence the
    larger depth bound."""
    try:
        check_value(value, max_depth, what)
    except ServiceError as exc:
        return exc.message
    return None
