"""Where a Starlark or template error is, inside the string that holds it.

Parsing (not compiling) finds exactly what `compile_expression` would reject, ~50x cheaper, and the
error's line and column are mapped back to an offset in the source string.
"""

from __future__ import annotations

import ast as pyast
import re
import textwrap
import warnings
from typing import Any

import starlark as sl

from station_wf.expr.starlark_eval import DIALECT

# "--> label:LINE:COL" in Starlark's diagnostics: the position inside the expression.
_STARLARK_POS_RE = re.compile(r"^\s*--> .*?:(\d+):(\d+)(?:-\d+(?::\d+)?)?\s*$", re.MULTILINE)
_EXPECTED_RE = re.compile(r", expected one of .*$")


def syntax_error(source: str) -> tuple[str, int | None] | None:
    """Why `source` is no good as an expression, and at which offset of it; None when it is fine."""
    return parse_error(source) or statement_problem(source)


def parse_error(source: str, dialect: Any = DIALECT) -> tuple[str, int | None] | None:
    """Exactly what `compile_expression` rejects (empty text, a Starlark parse error), by the parse alone:
    a full compile also plans the evaluation and costs ~50x more, on every file of every sync."""
    text = textwrap.dedent(source).strip()
    if not text:
        return "is empty", None
    try:
        sl.parse("expression", text, dialect)
    except sl.StarlarkError as exc:
        detail = str(exc).strip()
        head = detail.splitlines()[0].removeprefix("error: ").strip() if detail else type(exc).__name__
        if head.count(", ") > 6:
            head = _EXPECTED_RE.sub("", head)
        found = _STARLARK_POS_RE.search(detail)
        offset = _offset_in(source, int(found.group(1)), int(found.group(2))) if found else None
        return f"has a Starlark syntax error: {head}", offset
    return None


def statement_problem(source: str) -> tuple[str, int | None] | None:
    """One rule more than the engine: a statement (`a = 'x'`, two lines) parses, then evaluates to None or
    its last line, which as a switch condition is silently false. Found with Python's parser, since
    Starlark's AST is opaque from Python; text Python cannot parse is left to the Starlark parse."""
    text = textwrap.dedent(source).strip()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            body = pyast.parse(text, mode="exec").body
    except (SyntaxError, ValueError, RecursionError):
        return None  # Starlark-only syntax: the Starlark parse above is the authority
    if not body:
        return "has no expression (it is only a comment)", None
    if len(body) == 1 and isinstance(body[0], pyast.Expr):
        return None
    stmt = next((node for node in body if not isinstance(node, pyast.Expr)), body[-1])
    line, column = stmt.lineno, _char_column(text, stmt.lineno, stmt.col_offset)
    if isinstance(stmt, pyast.Assign):
        target = stmt.targets[-1]
        line = target.end_lineno or line
        equals = text.split("\n")[line - 1].find("=", _char_column(text, line, target.end_col_offset or 0))
        column = max(equals, 0)
        return "is an assignment, not an expression (did you mean '=='?)", _offset_in(source, line, column + 1)
    if isinstance(stmt, pyast.AugAssign | pyast.AnnAssign):
        return "is an assignment, not an expression", _offset_in(source, line, column + 1)
    return "must be one expression, not several statements", _offset_in(source, line, column + 1)


def _char_column(text: str, line: int, byte_offset: int) -> int:
    """Python's AST columns count UTF-8 bytes; positions here count characters."""
    row = text.split("\n")[line - 1] if line >= 1 else ""
    return len(row.encode("utf-8")[:byte_offset].decode("utf-8", "ignore"))


def _offset_in(source: str, line: int, column: int) -> int:
    """Offset in `source` of a 1-based position in `dedent(source).strip()`, the text Starlark parsed."""
    dedented = textwrap.dedent(source)
    lead = len(dedented) - len(dedented.lstrip())
    rest = dedented[lead:].split("\n", line - 1)
    offset = lead + sum(len(text) + 1 for text in rest[: line - 1]) + column - 1
    # Back from the dedented text to the source: same line, shifted by what dedent took off that line.
    row = dedented.count("\n", 0, offset)
    source_lines = source.split("\n")
    dedented_lines = dedented.split("\n")
    if row >= len(source_lines):
        return len(source)
    margin = len(source_lines[row]) - len(dedented_lines[row])
    column0 = offset - (dedented.rfind("\n", 0, offset) + 1)
    return min(sum(len(text) + 1 for text in source_lines[:row]) + margin + column0, len(source))


def clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def choices_text(states: dict[str, Any]) -> str:
    names = list(states)
    if not names:
        return ""
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f" (states here: {shown})"
