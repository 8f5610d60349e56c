"""Sandboxed Starlark expressions over JSON-like data (switch conditions, transforms, templates).

Why it looks like this:

* Values enter starlark-pyo3 through JSON conversion, so dicts arrive as Starlark dicts: they
  have ``.get``, ``in``, ``[...]``, ``len`` and iteration, but no attribute access. Workflow
  files use both styles (``input.pods`` next to ``p.get("status")``), and ``hasattr(approval,
  'approved')`` means "has key". Rather than converting data to structs (slow, and structs lack
  ``.get``/``in``/indexing), the *source* is rewritten once at compile time (``expr/rewrite.py``),
  using Python's ``ast`` for positions only and splicing the original text:

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

import re
import textwrap
import time
from functools import lru_cache
from typing import Any

import starlark as sl

from station_wf.expr.rewrite import Plan, Trie
from station_wf.expr.rewrite import plan as plan_source

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
        plan = plan_source(text)
        module_ast = original
        if plan.source != text:
            try:
                module_ast = sl.parse(label, plan.source, dialect)
            except sl.StarlarkError:  # rewrite bug: fall back to the text as written
                plan = Plan(source=text)
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


def _free_names(module_ast: sl.AstModule, plan: Plan) -> tuple[str, ...]:
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

