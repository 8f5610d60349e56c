"""Load-time bounds on Starlark expressions and on JSON values: size and nesting, counted by hand.

starlark-rust evaluates an expression's AST recursively on the native stack: a list nested ~2,500
deep, or `1+1+...+1` with 5,000 terms (a left-leaning tree 5,000 deep), overflows it and kills the
whole process with SIGSEGV, which Python cannot catch. Its parser accepts such trees happily, and
Python's parser gives up at 200 nested brackets (an error that must not be read as "valid"), so the
depth is computed here from the tokens, in one pass without recursion. The count is an upper bound of
the AST depth (every operator, `.`, call or index adds a level), so it may refuse a long but harmless
chain (`a and b and ...` with 70 terms); no real condition comes near it.

`value_depth_exceeds` is the same rule for data: an agent's JSON reply nested 990 deep would later
overflow `copy.deepcopy` and `json.dumps`, so it is refused where it enters.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_EXPRESSION_BYTES",
    "MAX_EXPRESSION_DEPTH",
    "MAX_TEMPLATES_PER_STRING",
    "expression_depth",
    "expression_problem",
    "value_depth_exceeds",
]

MAX_EXPRESSION_BYTES = 4096
"""The longest Starlark expression (one condition, transform or `{{ }}`), in UTF-8 bytes."""
MAX_EXPRESSION_DEPTH = 64
"""The deepest expression tree accepted; starlark-rust crashes in the thousands, real ones stay under 15."""
MAX_TEMPLATES_PER_STRING = 256
"""`{{ }}` templates in one string: each is compiled at load and evaluated at every render."""

_OPEN = "([{"
_CLOSE = ")]}"
# Tokens that split a bracket's contents into siblings: they do not deepen the tree.
_SEPARATORS = frozenset({",", ":", ";"})
# Keywords that are operators (each adds a level); other names are atoms.
_KEYWORD_OPS = frozenset({"and", "or", "not", "in", "is", "if", "else", "for", "lambda"})
_THREE = frozenset({"//=", "**=", ">>=", "<<="})
_TWO = frozenset({"==", "!=", "<=", ">=", "//", "**", "<<", ">>", "->", "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^="})


@dataclass
class _Frame:
    """One bracket level: operators in the current element, and the deepest sub-tree seen so far."""

    ops: int = 0
    child: int = 0
    best: int = 0

    def end_element(self) -> None:
        self.best = max(self.best, self.ops + self.child)
        self.ops = self.child = 0


def _tokens(text: str) -> Iterator[tuple[str, str]]:
    """(kind, token) with kind in atom | open | close | sep | op; strings and comments are skipped over."""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n\\":
            i += 1
        elif ch == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif ch in "'\"":
            i = _skip_string(text, i)
            yield "atom", "str"
        elif ch.isalnum() or ch == "_" or not ch.isascii():
            j = i
            while j < n and (text[j].isalnum() or text[j] == "_" or not text[j].isascii()):
                j += 1
            if j < n and text[j] in "'\"" and text[i:j].lower() in ("r", "b", "rb", "br"):
                i = _skip_string(text, j)  # r'...' / b"..." prefixes
                yield "atom", "str"
                continue
            if ch.isdigit():  # a number: 1.5e-3, 0x1F; its '.', 'e-' are not operators
                while j < n and (text[j].isalnum() or text[j] == "." or (text[j] in "+-" and text[j - 1] in "eE")):
                    j += 1
            word = text[i:j]
            i = j
            yield ("op" if word in _KEYWORD_OPS else "atom"), word
        elif ch in _OPEN:
            i += 1
            yield "open", ch
        elif ch in _CLOSE:
            i += 1
            yield "close", ch
        elif ch in _SEPARATORS:
            i += 1
            yield "sep", ch
        else:
            size = 3 if text[i:i + 3] in _THREE else 2 if text[i:i + 2] in _TWO else 1
            yield "op", text[i:i + size]
            i += size


def _skip_string(text: str, i: int) -> int:
    """The index just past the string literal starting at `i` (or the end of text if it never closes)."""
    quote = text[i]
    triple = text[i:i + 3] == quote * 3
    delim = quote * 3 if triple else quote
    j = i + len(delim)
    n = len(text)
    while j < n:
        if text[j] == "\\":
            j += 2
            continue
        if text.startswith(delim, j):
            return j + len(delim)
        if text[j] == "\n" and not triple:
            return j
        j += 1
    return n


def expression_depth(text: str) -> int:
    """An upper bound of the AST depth of `text`, counted from its tokens (no parser, no recursion)."""
    stack = [_Frame()]
    after_atom = False
    for kind, _token in _tokens(text):
        frame = stack[-1]
        if kind == "open":
            if after_atom:
                frame.ops += 1  # a call or an index: one more level over what it applies to
            stack.append(_Frame())
            after_atom = False
        elif kind == "close":
            if len(stack) > 1:
                frame.end_element()
                stack.pop()
                parent = stack[-1]
                parent.child = max(parent.child, frame.best + 1)
            after_atom = True
        elif kind == "sep":
            frame.end_element()
            after_atom = False
        elif kind == "op":
            frame.ops += 1
            after_atom = False
        else:
            after_atom = True
    while len(stack) > 1:  # unclosed brackets: the parser reports them; the depth still counts
        frame = stack.pop()
        frame.end_element()
        stack[-1].child = max(stack[-1].child, frame.best + 1)
    stack[0].end_element()
    return stack[0].best + 1


def expression_problem(text: str) -> str | None:
    """Why `text` is too big to evaluate safely, or None. The message is for the user who wrote it."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_EXPRESSION_BYTES:
        return f"is {size} bytes long; the limit is {MAX_EXPRESSION_BYTES} bytes per expression"
    depth = expression_depth(text)
    if depth > MAX_EXPRESSION_DEPTH:
        return (f"is nested too deeply (about {depth} levels of brackets and operators; the limit is "
                f"{MAX_EXPRESSION_DEPTH}): split it into smaller steps or compute it in a transform")
    return None


def value_depth_exceeds(value: Any, limit: int) -> bool:
    """True when dicts and lists in `value` nest deeper than `limit` (checked without recursion)."""
    todo: list[tuple[Any, int]] = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        todo.extend((child, depth + 1) for child in children if isinstance(child, dict | list | tuple))
    return False
