"""``{{ expr }}`` templates in step inputs (DESIGN section 3).

Each ``{{ ... }}`` holds a Starlark expression (see ``starlark_eval``) over the names: every
top-level key of the context, ``ctx`` (the whole context) and any ``extra`` names (foreach's
item name, ``_index``, ``_total``). A string that is exactly one template keeps the value's
type; otherwise values are rendered into the string JSON-style (objects and lists as JSON,
``true``/``false``/``null``). An unknown name is an error, never an empty string.

Templates are compiled once per distinct string (cached), and strings without ``{{`` are
returned untouched without any parsing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from station_wf.expr.starlark_eval import (
    DEFAULT_TIMEOUT_S,
    CompiledExpression,
    ExpressionError,
    _names_text,
    compile_expression,
)

__all__ = ["CompiledTemplate", "TemplateError", "compile_template", "render", "to_text"]

_OPEN = "{{"
_CLOSE = "}}"


class TemplateError(Exception):
    """A template failed; names the unknown name or the failing segment (caller adds the state)."""

    def __init__(
        self,
        message: str,
        *,
        template: str,
        unknown_name: str | None = None,
        cause: ExpressionError | None = None,
    ) -> None:
        super().__init__(message)
        self.template = template
        self.unknown_name = unknown_name
        self.cause = cause


@dataclass(frozen=True)
class _Segment:
    """One ``{{ ... }}``: its text as written and its compiled expression."""

    text: str
    expression: CompiledExpression


@dataclass(frozen=True)
class CompiledTemplate:
    """A string split into literal parts and expressions; ``single`` keeps the value's type."""

    source: str
    parts: tuple[str | _Segment, ...]
    single: bool

    def render(self, names: dict[str, Any], *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
        if self.single:
            segment = self.parts[0]
            assert isinstance(segment, _Segment)
            return _evaluate(segment, names, timeout_s)
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                out.append(to_text(_evaluate(part, names, timeout_s)))
        return "".join(out)


def _evaluate(segment: _Segment, names: dict[str, Any], timeout_s: float) -> Any:
    try:
        return segment.expression.evaluate(names, timeout_s=timeout_s)
    except ExpressionError as exc:
        if exc.unknown_name is not None:
            raise TemplateError(
                f"unknown name {exc.unknown_name!r} in template {segment.text!r}",
                template=segment.text,
                unknown_name=exc.unknown_name,
                cause=exc,
            ) from None
        raise TemplateError(
            f"template {segment.text!r} failed: {exc.reason}; visible names: {_names_text(exc.names)}",
            template=segment.text,
            cause=exc,
        ) from None


def to_text(value: Any) -> str:
    """How a value reads inside a string: JSON style, except that strings are verbatim."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return str(value)
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


@lru_cache(maxsize=8192)
def compile_template(source: str) -> CompiledTemplate:
    """Split ``source`` into literals and expressions, compiling each expression once.

    The closing ``}}`` is the first one after which the enclosed text parses, so
    expressions may contain ``}}`` themselves (``{{ {"a": {"b": 1}} }}``).
    """
    parts: list[str | _Segment] = []
    pos = 0
    while True:
        start = source.find(_OPEN, pos)
        if start < 0:
            break
        first_error: ExpressionError | None = None
        segment: _Segment | None = None
        close = source.find(_CLOSE, start + 2)
        while close >= 0:
            inner = source[start + 2 : close]
            try:
                segment = _Segment(source[start : close + 2], compile_expression(inner, "template"))
                break
            except ExpressionError as exc:
                first_error = first_error or exc
                close = source.find(_CLOSE, close + 1)
        if segment is None:
            if first_error is None:
                raise TemplateError(f"unclosed '{{{{' in template {source!r}", template=source)
            raise TemplateError(
                f"template {source[start:]!r} does not compile: {first_error}",
                template=source[start:],
                cause=first_error,
            )
        if start > pos:
            parts.append(source[pos:start])
        parts.append(segment)
        pos = start + len(segment.text)
    if pos < len(source):
        parts.append(source[pos:])
    segments = [p for p in parts if isinstance(p, _Segment)]
    single = len(segments) == 1 and all(isinstance(p, _Segment) or not p.strip() for p in parts)
    if single:
        parts = segments
    return CompiledTemplate(source=source, parts=tuple(parts), single=single)


def _names(context: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    names = dict(context)
    if extra:
        names.update(extra)
    names["ctx"] = context
    return names


def render(
    value: Any,
    context: dict[str, Any],
    *,
    extra: dict[str, Any] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Any:
    """Render every template in ``value`` (dicts and lists walked recursively, keys untouched).

    Returns new containers; ``value`` and ``context`` are never modified.
    """
    names: dict[str, Any] | None = None

    def walk(item: Any) -> Any:
        nonlocal names
        if isinstance(item, str):
            if _OPEN not in item:
                return item
            if names is None:
                names = _names(context, extra)
            return compile_template(item).render(names, timeout_s=timeout_s)
        if isinstance(item, dict):
            return {key: walk(val) for key, val in item.items()}
        if isinstance(item, list):
            return [walk(val) for val in item]
        if isinstance(item, tuple):
            return tuple(walk(val) for val in item)
        return item

    return walk(value)
