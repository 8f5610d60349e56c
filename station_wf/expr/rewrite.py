"""The compile-time source rewriter of Starlark expressions (see `expr/starlark_eval.py` for why).

Python's `ast` is used for positions only: the original text is spliced, so `x.name` becomes
`x["name"]`, `hasattr`/`getattr` on dicts become key tests, and the static key chains each name is
read through are collected (so only those parts of the context are converted). Pure: no Starlark here.
"""

from __future__ import annotations

import ast as pyast
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Plan", "Trie", "plan"]

_PLACEHOLDER_RE = re.compile(rb"__[okd]\b")

Trie = dict[str, Any]  # key -> sub-trie, or None meaning "keep this value whole"


@dataclass
class Plan:
    """What compile-time analysis learned about one expression."""

    source: str
    # name -> trie of the static key chains used from it; None = the whole value is needed.
    tries: dict[str, Trie | None] = field(default_factory=dict)
    # (name, path) when the whole expression is a pure path such as ``ctx.a.b[0]``.
    fast_path: tuple[str, tuple[str | int, ...]] | None = None


def _const_key(node: pyast.expr) -> str | int | None:
    """A constant subscript usable as a static key (bools excluded: they are ints in Python)."""
    if isinstance(node, pyast.Constant) and not isinstance(node.value, bool):
        if isinstance(node.value, (str, int)):
            return node.value
    return None


def _trie_insert(tries: dict[str, Trie | None], name: str, path: list[str]) -> None:
    if name in tries and tries[name] is None:
        return
    if not path:
        tries[name] = None
        return
    node = tries.setdefault(name, {})
    assert node is not None
    for key in path[:-1]:
        child = node.get(key, {})
        if child is None:
            return
        node[key] = child
        node = child
    node[path[-1]] = None


class _Rewriter:
    """Splices rewrites into the original text, using Python ``ast`` node positions."""

    def __init__(self, source: str, tree: pyast.Module) -> None:
        self.raw = source.encode()
        self.line_starts = [0]
        for i, byte in enumerate(self.raw):
            if byte == 0x0A:
                self.line_starts.append(i + 1)
        self.parent: dict[int, pyast.AST] = {}
        self.method_funcs: set[int] = set()  # Attribute nodes that are the callee of a Call
        for node in pyast.walk(tree):
            for child in pyast.iter_child_nodes(node):
                self.parent[id(child)] = node
            if isinstance(node, pyast.Call) and isinstance(node.func, pyast.Attribute):
                self.method_funcs.add(id(node.func))
        self.needs: dict[int, bool] = {}
        self._mark(tree)

    # -- positions
    def span(self, node: pyast.AST) -> tuple[int, int]:
        start = self.line_starts[node.lineno - 1] + node.col_offset  # type: ignore[attr-defined]
        end = self.line_starts[node.end_lineno - 1] + node.end_col_offset  # type: ignore[attr-defined]
        return start, end

    # -- classification
    def is_key_attr(self, node: pyast.AST) -> bool:
        return (
            isinstance(node, pyast.Attribute)
            and isinstance(node.ctx, pyast.Load)
            and id(node) not in self.method_funcs
        )

    @staticmethod
    def is_attr_builtin(node: pyast.AST) -> bool:
        return (
            isinstance(node, pyast.Call)
            and isinstance(node.func, pyast.Name)
            and not node.keywords
            and (
                (node.func.id == "hasattr" and len(node.args) == 2)
                or (node.func.id == "getattr" and len(node.args) in (2, 3))
            )
            and not any(isinstance(a, pyast.Starred) for a in node.args)
        )

    def _mark(self, node: pyast.AST) -> bool:
        needs = self.is_key_attr(node) or self.is_attr_builtin(node)
        for child in pyast.iter_child_nodes(node):
            needs = self._mark(child) or needs
        self.needs[id(node)] = needs
        return needs

    # -- emission
    def positioned_children(self, node: pyast.AST) -> list[pyast.AST]:
        """Direct children with positions; position-less ones (comprehension) are flattened."""
        out: list[pyast.AST] = []
        for child in pyast.iter_child_nodes(node):
            if hasattr(child, "lineno") and getattr(child, "end_lineno", None) is not None:
                out.append(child)
            else:
                out.extend(self.positioned_children(child))
        return out

    def emit(self, node: pyast.AST) -> bytes:
        start, end = self.span(node)
        if not self.needs[id(node)]:
            return self.raw[start:end]
        if self.is_key_attr(node):
            assert isinstance(node, pyast.Attribute)
            v_start, v_end = self.span(node.value)
            dot = self.raw.rfind(b".", v_end, end)
            return (
                self.raw[start:v_start]
                + self.emit(node.value)
                + self.raw[v_end:dot]
                + b"["
                + _starlark_str(node.attr)
                + b"]"
            )
        if self.is_attr_builtin(node):
            assert isinstance(node, pyast.Call) and isinstance(node.func, pyast.Name)
            args = [self.emit(a) for a in node.args]
            if node.func.id == "hasattr":
                body = b'(__k in __o if type(__o) == "dict" else hasattr(__o, __k))'
                targets = [b"__o", b"__k"]
            elif len(node.args) == 2:
                body = b'(__o[__k] if type(__o) == "dict" else getattr(__o, __k))'
                targets = [b"__o", b"__k"]
            else:
                body = b'(__o.get(__k, __d) if type(__o) == "dict" else getattr(__o, __k, __d))'
                targets = [b"__o", b"__k", b"__d"]
            if all(isinstance(a, (pyast.Name, pyast.Constant)) for a in node.args):
                # Names and literals can be repeated: inline, about 1.5x faster than binding.
                subst = {t: b"(" + a + b")" for t, a in zip(targets, args, strict=True)}
                return _PLACEHOLDER_RE.sub(lambda m: subst[m.group(0)], body)
            return b"[" + body + b" for " + b", ".join(targets) + b" in [(" + b", ".join(args) + b")]][0]"
        return self.splice(node, start, end)

    def splice(self, node: pyast.AST, start: int, end: int) -> bytes:
        parts: list[bytes] = []
        cur = start
        children = sorted(self.positioned_children(node), key=lambda c: self.span(c))
        for child in children:
            if not self.needs[id(child)]:
                continue
            c_start, c_end = self.span(child)
            if c_start < cur:  # overlapping spans: should not happen, stay safe
                raise ValueError("overlapping AST spans")
            parts.append(self.raw[cur:c_start])
            parts.append(self.emit(child))
            cur = c_end
        parts.append(self.raw[cur:end])
        return b"".join(parts)

    # -- analysis for pruning / fast path
    def chain_from(self, name: pyast.Name) -> list[str]:
        """Static key chain starting at ``name`` (``ctx.a["b"].c`` -> [a, b, c])."""
        path: list[str] = []
        cur: pyast.AST = name
        while True:
            par = self.parent.get(id(cur))
            if isinstance(par, pyast.Attribute) and par.value is cur and self.is_key_attr(par):
                path.append(par.attr)
            elif (
                isinstance(par, pyast.Subscript)
                and par.value is cur
                and isinstance(par.ctx, pyast.Load)
                and isinstance(_const_key(par.slice), str)
            ):
                path.append(_const_key(par.slice))  # type: ignore[arg-type]
            else:
                return path
            cur = par


def _starlark_str(text: str) -> bytes:
    """A Starlark string literal for an identifier (identifiers need no escaping)."""
    return b'"' + text.encode() + b'"'


def _fast_path(expr: pyast.expr) -> tuple[str, tuple[str | int, ...]] | None:
    """``(name, path)`` when ``expr`` is only a name followed by keys/indices."""
    path: list[str | int] = []
    cur = expr
    while True:
        if isinstance(cur, pyast.Name):
            return cur.id, tuple(reversed(path))
        if isinstance(cur, pyast.Attribute):
            path.append(cur.attr)
            cur = cur.value
        elif isinstance(cur, pyast.Subscript) and _const_key(cur.slice) is not None:
            path.append(_const_key(cur.slice))  # type: ignore[arg-type]
            cur = cur.value
        else:
            return None


def plan(source: str) -> Plan:
    """Analyse and rewrite ``source``; on anything unexpected, keep the source as written."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = pyast.parse(source, mode="exec")
        rewriter = _Rewriter(source, tree)
        text = b"".join(
            [rewriter.raw[: rewriter.span(tree.body[0])[0]] if tree.body else b""]
            + _emit_body(rewriter, tree)
        ).decode()
    except (SyntaxError, ValueError, RecursionError, IndexError, AttributeError):
        return Plan(source=source, tries={})
    result = Plan(source=text)
    for node in pyast.walk(tree):
        if isinstance(node, pyast.Name):
            if isinstance(node.ctx, pyast.Load):
                _trie_insert(result.tries, node.id, rewriter.chain_from(node))
            else:
                result.tries[node.id] = None
    if len(tree.body) == 1 and isinstance(tree.body[0], pyast.Expr):
        result.fast_path = _fast_path(tree.body[0].value)
    return result


def _emit_body(rewriter: _Rewriter, tree: pyast.Module) -> list[bytes]:
    """Rewrite each top-level statement, keeping the text between statements."""
    parts: list[bytes] = []
    for i, stmt in enumerate(tree.body):
        start, end = rewriter.span(stmt)
        parts.append(rewriter.emit(stmt))
        nxt = rewriter.span(tree.body[i + 1])[0] if i + 1 < len(tree.body) else len(rewriter.raw)
        parts.append(rewriter.raw[end:nxt])
    return parts

