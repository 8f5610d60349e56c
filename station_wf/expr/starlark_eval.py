"""Sandboxed Starlark expressions over JSON-like data (switch conditions, transforms, templates).

Why it looks like this:

* Values enter starlark-pyo3 through JSON conversion, so dicts arrive as Starlark dicts: they
  have ``.get``, ``in``, ``[...]``, ``len`` and iteration, but no attribute access. Workflow
  files use both styles (``input.pods`` next to ``p.get("status")``), and ``hasattr(approval,
  'approved')`` means "has key". Rather than converting data to structs (slow, and structs lack
  ``.get``/``in``/indexing), the *source* is rewritten once at compile time, using Python's
  ``ast`` for positions only and splicing the original text:

  - ``x.name`` not in call position  ->  ``x["name"]``  (``x.get(...)`` and ``s.upper()`` stay)
  - ``hasattr(o, k)``  ->  ``k in o`` when ``o`` is a dict, else the builtin
  - ``getattr(o, k[, d])``  ->  ``o[k]`` / ``o.get(k, d)`` when ``o`` is a dict, else the builtin

  So a dict key shadows a dict method name in attribute position (``steps.items`` is the
  key ``items``), which is what workflow authors mean. Builtins win over context keys with the
  same name (``type``, ``len`` ...): reach those keys as ``ctx.type``.
* Only the names an expression actually references are converted, and a name used only
  through static key chains (``ctx.steps.check.output.status``) is pruned to those chains
  first: JSON conversion of a large context costs milliseconds, the evaluation microseconds.
* A pure path (``ctx.namespace``, ``service.name``, ``a[0].b``) is resolved in Python without
  Starlark at all: that is the common template case.
* The dialect forbids ``def``, ``lambda``, ``load`` and f-strings; top-level ``for``/``if``/
  ``while`` are not Starlark expressions anyway. Globals are the standard library plus
  ``json`` -- no ``print``, ``debug`` or ``breakpoint``. Evaluation is cancelled after
  ``timeout_s`` and the call stack is bounded.
* There is NO memory bound in-process: one builtin call (``"a" * 10**9``,
  ``list(range(10**9))``) runs to completion without checking for cancellation, and a deep AST
  overflows the native stack. So the daemon evaluates in sandbox processes with an address-space
  limit and a wall-clock kill (``expr.sandbox``); evaluating here is for tests and tools.
"""

from __future__ import annotations

import ast as pyast
import re
import textwrap
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import starlark as sl

__all__ = [
    "DIALECT",
    "PROGRAM_DIALECT",
    "CompiledExpression",
    "EvalFailure",
    "ExpressionError",
    "compile_expression",
    "truthy",
]

DEFAULT_TIMEOUT_S = 0.1
# Builtin calls count as frames too, so this must leave room for nested comprehensions.
MAX_CALLSTACK = 64
_MAX_NAMES_IN_MESSAGE = 40


def _make_dialect() -> sl.Dialect:
    """Standard Starlark minus everything that defines or imports code."""
    dialect = sl.Dialect.standard()
    dialect.enable_def = False
    dialect.enable_lambda = False
    dialect.enable_load = False
    dialect.enable_f_strings = False
    dialect.enable_types = sl.DialectTypes.DISABLE
    return dialect


DIALECT = _make_dialect()
"""The one Starlark dialect of expressions: the loader parses with it, the engine compiles with it."""
# Station's transforms are small programs: top-level `for`/`if`, the last expression is the output.
PROGRAM_DIALECT = _make_dialect()
PROGRAM_DIALECT.enable_top_level_stmt = True
_GLOBALS = sl.Globals.extended_by([sl.LibraryExtension.Json])

_UNKNOWN_RE = re.compile(r"Variable `([^`]+)` not found")
_CANCELLED = "Evaluation cancelled"
_PLACEHOLDER_RE = re.compile(rb"__[okd]\b")


class ExpressionError(Exception):
    """An expression failed to compile or evaluate.

    ``kind`` is one of ``syntax``, ``unknown_name``, ``timeout``, ``runtime``, ``input``
    (a value could not be converted into Starlark) or ``result`` (the result could not be
    converted back). ``reason`` is the short cause (no expression text, no names),
    ``detail`` the underlying Starlark text, ``names`` the visible names.
    """

    def __init__(
        self,
        message: str,
        *,
        expression: str,
        names: list[str] | None = None,
        kind: str = "runtime",
        detail: str = "",
        unknown_name: str | None = None,
        label: str = "expression",
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.reason = reason or message
        self.expression = expression
        self.names = list(names or [])
        self.kind = kind
        self.detail = detail
        self.unknown_name = unknown_name
        self.label = label


def truthy(value: Any) -> bool:
    """Starlark truthiness; for JSON values it is Python's (empty containers, 0, "" are false)."""
    return bool(value)


def _first_line(err: BaseException) -> str:
    """Starlark errors carry a code snippet of the *rewritten* source; keep the headline."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line.removeprefix("error: ").strip()


def _names_text(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES_IN_MESSAGE])
    if len(names) > _MAX_NAMES_IN_MESSAGE:
        shown += f", ... ({len(names)} in all)"
    return f"[{shown}]"


# --------------------------------------------------------------------------- rewriting


Trie = dict[str, Any]  # key -> sub-trie, or None meaning "keep this value whole"


@dataclass
class _Plan:
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


def _plan(source: str) -> _Plan:
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
        return _Plan(source=source, tries={})
    plan = _Plan(source=text)
    for node in pyast.walk(tree):
        if isinstance(node, pyast.Name):
            if isinstance(node.ctx, pyast.Load):
                _trie_insert(plan.tries, node.id, rewriter.chain_from(node))
            else:
                plan.tries[node.id] = None
    if len(tree.body) == 1 and isinstance(tree.body[0], pyast.Expr):
        plan.fast_path = _fast_path(tree.body[0].value)
    return plan


def _emit_body(rewriter: _Rewriter, tree: pyast.Module) -> list[bytes]:
    """Rewrite each top-level statement, keeping the text between statements."""
    parts: list[bytes] = []
    for i, stmt in enumerate(tree.body):
        start, end = rewriter.span(stmt)
        parts.append(rewriter.emit(stmt))
        nxt = rewriter.span(tree.body[i + 1])[0] if i + 1 < len(tree.body) else len(rewriter.raw)
        parts.append(rewriter.raw[end:nxt])
    return parts


# --------------------------------------------------------------------------- evaluation


def _prune(value: Any, trie: Trie) -> Any:
    """Keep only the keys an expression can reach; missing keys stay missing (same errors)."""
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, sub in trie.items():
        if key in value:
            out[key] = value[key] if sub is None else _prune(value[key], sub)
    return out


def _copy_json(value: Any) -> Any:
    """Fresh containers, like a Starlark round trip would give (callers may mutate results)."""
    if isinstance(value, dict):
        return {k: _copy_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy_json(v) for v in value]
    return value


_NOT_FOUND: Any = object()


def _resolve_fast(value: Any, path: tuple[str | int, ...]) -> Any:
    """Follow a pure path in Python; ``_NOT_FOUND`` lets Starlark produce the real error."""
    for seg in path:
        if isinstance(seg, str):
            if not isinstance(value, dict) or seg not in value:
                return _NOT_FOUND
            value = value[seg]
        else:
            if not isinstance(value, list) or not -len(value) <= seg < len(value):
                return _NOT_FOUND
            value = value[seg]
    return value


class CompiledExpression:
    """A Starlark expression parsed once and evaluated many times.

    ``free_names`` are the names the expression reads from ``names`` (builtins excluded).
    Instances hold no per-call state, so one may be shared and reused freely.
    """

    __slots__ = ("_ast", "_fast", "_rewritten", "_tries", "free_names", "label", "source")

    def __init__(self, source: str, *, label: str = "expression", programs: bool = False) -> None:
        if not isinstance(source, str):
            raise ExpressionError(
                f"{label} must be a string, got {type(source).__name__}",
                expression=repr(source),
                kind="syntax",
                label=label,
            )
        self.source = source
        self.label = label
        text = textwrap.dedent(source).strip()
        if not text:
            raise ExpressionError(f"{label} is empty", expression=source, kind="syntax", label=label)
        try:
            dialect = PROGRAM_DIALECT if programs else DIALECT
            original = sl.parse(label, text, dialect)
        except sl.StarlarkError as exc:
            raise ExpressionError(
                f"{label} {text!r} does not compile: {exc}",
                expression=source,
                kind="syntax",
                detail=str(exc),
                label=label,
                reason=f"does not compile: {_first_line(exc)}",
            ) from None
        plan = _plan(text)
        module_ast = original
        if plan.source != text:
            try:
                module_ast = sl.parse(label, plan.source, dialect)
            except sl.StarlarkError:  # rewrite bug: fall back to the text as written
                plan = _Plan(source=text)
        self._ast = module_ast
        self._rewritten = plan.source != text
        self.free_names: tuple[str, ...] = _free_names(module_ast, plan)
        self._tries = {name: plan.tries.get(name) for name in self.free_names}
        fast = plan.fast_path
        self._fast = fast if fast is not None and fast[0] in self.free_names else None

    def __repr__(self) -> str:
        return f"CompiledExpression({self.source!r}, label={self.label!r})"

    def _error(
        self, reason: str, names: dict[str, Any], kind: str, detail: str = "", **kw: Any
    ) -> ExpressionError:
        """One message shape: what failed, why, and which names were visible."""
        visible = sorted(names)
        return ExpressionError(
            f"{self.label} {self.source.strip()!r}: {reason}; visible names: {_names_text(visible)}",
            expression=self.source,
            names=visible,
            kind=kind,
            detail=detail or reason,
            label=self.label,
            reason=reason,
            **kw,
        )

    def _unknown(self, name: str, names: dict[str, Any]) -> ExpressionError:
        return self._error(f"unknown name {name!r}", names, "unknown_name", unknown_name=name)

    def evaluate(self, names: dict[str, Any], *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
        """Evaluate over JSON-like ``names``; returns plain Python JSON values.

        Inside a daemon transaction the evaluation itself happens in a sandbox process (see
        ``expr.sandbox``); here, in-process. Pure paths never leave Python either way.
        """
        if self._fast is not None:
            root, path = self._fast
            if root not in names:
                raise self._unknown(root, names)
            found = _resolve_fast(names[root], path)
            if found is not _NOT_FOUND:
                return _copy_json(found)
        bound = self.bind(names)
        try:
            if _REMOTE is not None:
                remote = _REMOTE(self, bound, timeout_s)
                if remote is not LOCAL:
                    return remote
            return self.evaluate_bound(bound, timeout_s)
        except EvalFailure as failure:
            raise self._error(failure.reason, names, failure.kind, detail=failure.detail,
                              **({"unknown_name": failure.unknown_name} if failure.unknown_name else {})) from None

    def bind(self, names: dict[str, Any]) -> dict[str, Any]:
        """The values this expression can reach: referenced names only, pruned to their key chains."""
        bound: dict[str, Any] = {}
        for current, trie in self._tries.items():
            if current in names:
                value = names[current]
                bound[current] = value if trie is None else _prune(value, trie)
        return bound

    def evaluate_bound(self, bound: dict[str, Any], timeout_s: float) -> Any:
        """Run Starlark over already-bound values; failures are `EvalFailure` (no names attached)."""
        module = sl.Module()
        current = ""
        try:
            for current, value in bound.items():
                module[current] = value
        except (TypeError, ValueError, sl.StarlarkError) as exc:
            raise EvalFailure("input", f"value of {current!r} is not JSON-compatible: {_first_line(exc)}", str(exc)) from None
        deadline = time.monotonic() + timeout_s
        options = sl.EvalOptions(
            check_cancelled=lambda: time.monotonic() > deadline,
            max_callstack_size=MAX_CALLSTACK,
        )
        try:
            return sl.eval_with(options, module, self._ast, _GLOBALS).value
        except sl.StarlarkError as exc:
            text = str(exc)
            unknown = _UNKNOWN_RE.search(text)
            if unknown:
                raise EvalFailure("unknown_name", f"unknown name {unknown.group(1)!r}", text, unknown.group(1)) from None
            if _CANCELLED in text:
                raise EvalFailure("timeout", f"timed out after {timeout_s:g}s", text) from None
            kind = "result" if "serde::serialize" in text else "runtime"
            reason = _reason(exc)
            if "Operation `[]` not supported" in reason and self._rewritten:
                reason += " (`x.name` reads key 'name' of the dict x)"
            raise EvalFailure(kind, reason, text) from None
        except (TypeError, ValueError, OverflowError) as exc:  # result conversion
            raise EvalFailure("result", f"result is not JSON-compatible: {exc}", str(exc)) from None
        except MemoryError:
            raise EvalFailure("memory", "ran out of memory (the expression builds too large a value)", "MemoryError") from None


class EvalFailure(Exception):
    """A failed evaluation before the visible names are attached (it crosses the sandbox boundary)."""

    def __init__(self, kind: str, reason: str, detail: str = "", unknown_name: str | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.detail = detail
        self.unknown_name = unknown_name

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "reason": self.reason, "detail": self.detail[:2000], "unknownName": self.unknown_name}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalFailure:
        return cls(str(data.get("kind") or "runtime"), str(data.get("reason") or "failed"),
                   str(data.get("detail") or ""), data.get("unknownName"))


# Set by ``expr.sandbox.install``: (expression, bound values, timeout) -> value, or LOCAL to evaluate here.
RemoteEval = Any
LOCAL: Any = object()
_REMOTE: RemoteEval | None = None


def set_remote(hook: RemoteEval | None) -> None:
    global _REMOTE
    _REMOTE = hook


def _reason(exc: BaseException) -> str:
    """The cause of a Starlark runtime error: its ``error:`` line, not the traceback headline (probe L5)."""
    text = str(exc).strip()
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("error:"):
            return stripped.removeprefix("error:").strip()
    return _first_line(exc)


def _free_names(module_ast: sl.AstModule, plan: _Plan) -> tuple[str, ...]:
    """Names read from outside, via Starlark's own resolver (it knows comprehension scopes).

    The resolver gives up on some programs (a top-level assignment from an unknown name
    reports "unresolved ident"); then every non-builtin name Python's parser saw is used,
    which may over-include comprehension variables -- harmless, they are only converted.
    """
    try:
        errors, _, _ = module_ast.typecheck(_GLOBALS, {})
        found: list[str] = []
        for err in errors:
            match = _UNKNOWN_RE.search(str(err))
            if match is None:
                raise ValueError(str(err))
            if match.group(1) not in found:
                found.append(match.group(1))
        return tuple(found)
    except Exception:  # noqa: BLE001 - the resolver is an optimisation, never a failure
        return tuple(name for name in sorted(plan.tries) if not _is_global(name))


@lru_cache(maxsize=1024)
def _is_global(name: str) -> bool:
    """Whether ``name`` is a Starlark builtin (those must never be shadowed by context keys)."""
    try:
        errors, _, _ = sl.parse("name", name, DIALECT).typecheck(_GLOBALS, {})
    except Exception:  # noqa: BLE001 - not an identifier Starlark knows
        return False
    return not errors


@lru_cache(maxsize=4096)
def compile_expression(source: str, label: str = "expression", programs: bool = False) -> CompiledExpression:
    """Cached ``CompiledExpression``: definitions repeat the same expressions on every step.
    ``programs`` also allows top-level ``for``/``if`` (Station's transforms)."""
    return CompiledExpression(source, label=label, programs=programs)
