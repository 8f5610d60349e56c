"""Tests for station_wf.expr: context paths, sandboxed Starlark, ``{{ }}`` templates."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest

from station_wf.expr.paths import PathError, get_path, parse_path, set_path
from station_wf.expr.starlark_eval import (
    CompiledExpression,
    ExpressionError,
    compile_expression,
    truthy,
)
from station_wf.expr.templates import TemplateError, compile_template, render

# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a.b.0.c", ("a", "b", 0, "c")),
        ("a[0].b", ("a", 0, "b")),
        ("a[0][1]", ("a", 0, 1)),
        ("a[-1]", ("a", -1)),
        ("$.a.b", ("a", "b")),
        ("$[0]", (0,)),
        ("ctx.a", ("a",)),
        ("ctx.steps.check[2].x", ("steps", "check", 2, "x")),
        ('a["odd.key"].b', ("a", "odd.key", "b")),
        ("a['sp ace']", ("a", "sp ace")),
        ("ctxual.a", ("ctxual", "a")),
        ("ctx", ()),
        ("$", ()),
        ("", ()),
        ("  ctx  ", ()),
    ],
)
def test_parse_path_forms(path: str, expected: tuple[Any, ...]) -> None:
    assert parse_path(path) == expected


@pytest.mark.parametrize("path", ["a..b", "a.", ".a", "$..a", "a[", "a[x]", "a[0]b", "a.[0]"])
def test_parse_path_errors(path: str) -> None:
    with pytest.raises(PathError):
        parse_path(path)


def test_parse_path_is_cached() -> None:
    assert parse_path("x.y.z") is parse_path("x.y.z")


def test_get_path() -> None:
    doc = {"a": {"b": [{"c": 1}, {"c": 2}]}, "m": {"0": "zero"}, "n": None}
    assert get_path(doc, "a.b.1.c") == 2
    assert get_path(doc, "$.a.b[0].c") == 1
    assert get_path(doc, "ctx.a.b[-1].c") == 2
    assert get_path(doc, "m.0") == "zero"  # digit segment falls back to a string key
    assert get_path(doc, "n") is None
    assert get_path(doc, "ctx") is doc
    assert get_path(doc, "a.x", default="d") == "d"
    assert get_path(doc, "a.x", default=None) is None
    assert get_path(doc, "a.b.5", default=0) == 0


def test_get_path_errors_name_the_segment() -> None:
    doc = {"a": {"b": [1]}, "s": "text"}
    with pytest.raises(PathError, match=r"'missing' not found at \$\.a"):
        get_path(doc, "a.missing.c")
    with pytest.raises(PathError, match=r"index 3 not found at \$\.a\.b"):
        get_path(doc, "a.b[3]")
    with pytest.raises(PathError, match="cannot look up 'x' in str"):
        get_path(doc, "s.x")


def test_set_path_creates_intermediates() -> None:
    doc: dict[str, Any] = {"steps": {}}
    set_path(doc, "steps.check.output", {"ok": True})
    set_path(doc, "$.a.b.c", 1)
    set_path(doc, "ctx.z", "root-level")
    set_path(doc, "m.0", "zero")  # no list to index: an intermediate dict gets key "0"
    assert doc == {
        "steps": {"check": {"output": {"ok": True}}},
        "a": {"b": {"c": 1}},
        "z": "root-level",
        "m": {"0": "zero"},
    }


def test_set_path_lists() -> None:
    doc: dict[str, Any] = {"items": [{"v": 1}, {"v": 2}]}
    set_path(doc, "items[0].v", 10)
    set_path(doc, "items.2", {"v": 3})  # == len: append
    set_path(doc, "items[-1].w", 4)
    assert doc == {"items": [{"v": 10}, {"v": 2}, {"v": 3, "w": 4}]}
    with pytest.raises(PathError, match="out of range"):
        set_path(doc, "items.9", 1)
    with pytest.raises(PathError, match="out of range"):
        set_path(doc, "items.9.x", 1)
    with pytest.raises(PathError, match="key 'x' on a list"):
        set_path(doc, "items.x", 1)


def test_set_path_root_merge() -> None:
    doc: dict[str, Any] = {"a": 1, "b": {"keep": True}}
    set_path(doc, "ctx", {"b": {"new": 1}, "c": 3})
    assert doc == {"a": 1, "b": {"new": 1}, "c": 3}  # shallow merge
    set_path(doc, "$", {"d": 4})
    set_path(doc, "", {"e": 5})
    assert doc["d"] == 4 and doc["e"] == 5
    with pytest.raises(PathError, match="only an object can be merged"):
        set_path(doc, "ctx", [1, 2])


def test_set_path_refuses_to_overwrite_scalars() -> None:
    doc: dict[str, Any] = {"a": "text", "n": None}
    with pytest.raises(PathError, match="cannot set inside str"):
        set_path(doc, "a.b", 1)
    with pytest.raises(PathError, match="cannot set inside NoneType"):
        set_path(doc, "n.b.c", 1)
    assert doc == {"a": "text", "n": None}


# --------------------------------------------------------------------------- expressions


def ev(source: str, **names: Any) -> Any:
    return compile_expression(source).evaluate(names)


def test_dotted_nested_access() -> None:
    ctx = {"config": {"thresholds": {"errorRate": 0.05}}}
    assert ev("result.error_rate > 0.05", result={"error_rate": 0.1}) is True
    assert ev("result.error_rate > 0.05", result={"error_rate": 0.01}) is False
    assert ev("ctx.config.thresholds.errorRate * 2", ctx=ctx) == 0.1
    assert ev("a.b[1].c", a={"b": [{"c": 1}, {"c": 2}]}) == 2
    assert ev("(a) . b", a={"b": 7}) == 7
    assert ev('a["b"].c + a.b["c"]', a={"b": {"c": 1}}) == 2


def test_key_shadows_dict_method_in_attribute_position() -> None:
    steps = {"items": [1, 2], "keys": "k"}
    assert ev("steps.items", steps=steps) == [1, 2]
    assert ev("steps.keys", steps=steps) == "k"
    assert ev("sorted(steps.keys())", steps=steps) == ["items", "keys"]  # calls stay methods


def test_dict_methods_and_operators() -> None:
    data = {"status": "Error", "n": [1, 2, 3]}
    assert ev('p.get("status")', p=data) == "Error"
    assert ev('p.get("nope")', p=data) is None
    assert ev('p.get("nope", 5)', p=data) == 5
    assert ev('"status" in p and "x" not in p', p=data) is True
    assert ev('p["n"][-1]', p=data) == 3
    assert ev("len(p) + len(p.n)", p=data) == 5
    assert ev("[k for k in p]", p=data) == ["status", "n"]
    assert ev("{k: v for k, v in p.items() if k != 'n'}", p=data) == {"status": "Error"}
    assert ev("'%s-%d' % (p.status, len(p.n))", p=data) == "Error-3"
    assert ev("p.status.lower()", p=data) == "error"


def test_hasattr_and_getattr_mean_has_key() -> None:
    src = "hasattr(approval, 'approved') and approval.approved == True"
    assert ev(src, approval={"approved": True}) is True
    assert ev(src, approval={"approved": False}) is False
    assert ev(src, approval={}) is False
    assert ev("hasattr(s, 'upper')", s="text") is True  # non-dicts keep the builtin
    assert ev("getattr(a, 'x', 'dflt')", a={}) == "dflt"
    assert ev("getattr(a, 'x')", a={"x": 3}) == 3
    assert ev("hasattr(a.b, 'c') and hasattr(a, 'b')", a={"b": {"c": 1}}) is True


def test_rewrites_in_nested_and_non_ascii_code() -> None:
    pods = [{"x": 2, "n": "é"}, {"y": 1}, {"x": 0}]
    assert ev("[p.n for p in pods if hasattr(p, 'x') and p.x > 1]", pods=pods) == ["é"]
    assert ev("hasattr(pods[1], 'y') and not hasattr(pods[0].n, 'x')", pods=pods) is True
    assert ev("'ü→' + getattr(pods[0], 'n') + getattr(pods[1], 'n', '∅')", pods=pods) == "ü→é∅"
    assert ev("{'k': a.b,\n 'l': [a.b\n  .c for _ in [1]]}", a={"b": {"c": "ö"}}) == {
        "k": {"c": "ö"},
        "l": ["ö"],
    }


def test_switch_forms_from_station_examples() -> None:
    assert ev("_value == 'critical'", _value="critical") is True
    assert ev("risk_score > 0.8", risk_score=0.9) is True
    assert ev("approved == True", approved=False) is False


def test_dataflow_transform_expressions() -> None:
    extract = """
      {
        "error_pods": [p for p in input.pods if p.get("status") == "Error"],
        "error_count": len([p for p in input.pods if p.get("status") == "Error"]),
        "recent_logs": input.logs[-50:] if input.get("logs") else [],
        "namespace": ctx.workflow.input.namespace,
        "original_task": ctx.workflow.input.task
      }
    """
    ctx = {
        "workflow": {"input": {"namespace": "prod", "task": "triage"}},
        "steps": {"extract": {"output": {"error_count": 1}}},
        "_timestamp": "2025-01-01T00:00:00Z",
    }
    pods = [{"name": "a", "status": "Error"}, {"name": "b", "status": "Running"}]
    out = compile_expression(extract).evaluate({"input": {"pods": pods, "logs": list(range(60))}, "ctx": ctx})
    assert out == {
        "error_pods": [{"name": "a", "status": "Error"}],
        "error_count": 1,
        "recent_logs": list(range(10, 60)),
        "namespace": "prod",
        "original_task": "triage",
    }
    out = compile_expression(extract).evaluate({"input": {"pods": []}, "ctx": ctx})
    assert out["recent_logs"] == [] and out["error_count"] == 0

    report = """
      {
        "title": "Incident Analysis Report",
        "summary": input.cause if input.get("cause") else "Unknown",
        "details": {
          "root_cause": input.get("cause", "Unknown"),
          "confidence": input.get("confidence", 0),
          "evidence": input.get("evidence", []),
          "affected_pods": ctx.steps.extract.output.error_count
        },
        "metadata": {
          "namespace": ctx.workflow.input.namespace,
          "analyzed_at": ctx._timestamp
        }
      }
    """
    out = compile_expression(report).evaluate({"input": {"confidence": 0.7}, "ctx": ctx})
    assert out == {
        "title": "Incident Analysis Report",
        "summary": "Unknown",
        "details": {
            "root_cause": "Unknown",
            "confidence": 0.7,
            "evidence": [],
            "affected_pods": 1,
        },
        "metadata": {"namespace": "prod", "analyzed_at": "2025-01-01T00:00:00Z"},
    }


def test_results_are_plain_python() -> None:
    out = ev("{'t': (1, 2), 'n': None, 'b': True, 'f': 1.5, 'l': [a]}", a={"x": [1]})
    assert out == {"t": [1, 2], "n": None, "b": True, "f": 1.5, "l": [{"x": [1]}]}
    assert type(out["t"]) is list


def test_results_are_fresh_copies() -> None:
    ctx = {"a": {"b": [1, 2]}}
    for source in ("ctx.a", "ctx.a.b", "ctx['a']"):  # fast path
        result = ev(source, ctx=ctx)
        result.clear() if isinstance(result, dict) else result.append(9)
    ev("ctx.a.b.append(3)", ctx=ctx)  # mutation inside Starlark stays there
    assert ctx == {"a": {"b": [1, 2]}}


def test_pruned_and_fast_paths_keep_error_semantics() -> None:
    ctx = {"steps": {"a": {"status": "ok"}}, "big": list(range(1000))}
    assert ev("ctx.steps.a.status == 'ok'", ctx=ctx) is True
    with pytest.raises(ExpressionError, match='Key `"missing"` was not found'):
        ev("ctx.steps.missing.status == 'ok'", ctx=ctx)
    with pytest.raises(ExpressionError, match='Key `"missing"` was not found'):
        ev("ctx.steps.missing", ctx=ctx)  # fast path falls back to Starlark for the error
    with pytest.raises(ExpressionError, match="not supported for types `NoneType`"):
        ev("a.b.c", a={"b": None})
    assert ev("ctx.big[-1]", ctx=ctx) == 999
    assert ev("len(ctx.big) + len(ctx)", ctx=ctx) == 1002


def test_builtins_win_over_context_keys() -> None:
    names = {"len": 5, "type": "alert", "items": [1, 2]}
    assert compile_expression("len(items)").evaluate(names) == 2
    assert compile_expression("type(items)").evaluate(names) == "list"
    assert compile_expression("hasattr(ctx, 'type')").evaluate({"ctx": names}) is True
    assert compile_expression("ctx.type").evaluate({"ctx": names}) == "alert"


def test_free_names() -> None:
    compiled = compile_expression("[p for p in input.pods if p.x > limit] + [len(q)]")
    assert set(compiled.free_names) == {"input", "limit", "q"}
    # the resolver gives up on top-level assignments; the fallback still finds the names
    assert compile_expression("x = a.b\nx.c").evaluate({"a": {"b": {"c": 3}}}) == 3


def test_unknown_name_is_named() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression("result.error_rate > limit").evaluate({"result": {"error_rate": 1}})
    err = info.value
    assert err.kind == "unknown_name" and err.unknown_name == "limit"
    assert "unknown name 'limit'" in str(err)
    assert "visible names: [result]" in str(err)
    assert err.names == ["result"]
    assert err.expression == "result.error_rate > limit"
    with pytest.raises(ExpressionError, match="unknown name 'ghost'") as info:
        ev("ghost.x", ctx={})  # fast path
    assert info.value.unknown_name == "ghost"


def test_unknown_names_fail_even_when_short_circuited() -> None:
    # Starlark resolves names before running: a missing name is an error on every path.
    with pytest.raises(ExpressionError, match="unknown name 'b'"):
        ev("a > 1 or b > 2", a=5)
    assert ev("a > 1 or ctx.get('b', 0) > 2", a=5, ctx={}) is True  # the optional-key idiom


def test_runtime_error_names_the_expression() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression("1 // x", label="switch s1 condition 0").evaluate({"x": 0})
    assert info.value.kind == "runtime"
    assert str(info.value).startswith("switch s1 condition 0 '1 // x': ")
    assert "visible names: [x]" in str(info.value)


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("x +", "Parse error"),
        ("a ==", "Parse error"),
        ("def f(): return 1", "`def` is not allowed"),
        ("lambda x: x", "`lambda` is not allowed"),
        ("load('//x.star', 'y')", "`load` is not allowed"),
        ("f'{x}'", "f-strings"),
        ("for x in [1]: pass", "cannot be used outside `def`"),
        ("if x: y", "cannot be used outside `def`"),
        ("while True: pass", "reserved keyword"),
        ("", "is empty"),
    ],
)
def test_rejected_at_construction(source: str, needle: str) -> None:
    with pytest.raises(ExpressionError, match=needle) as info:
        CompiledExpression(source)
    assert info.value.kind == "syntax"


def test_no_debug_or_print_builtins() -> None:
    for name in ("print", "debug", "breakpoint"):
        with pytest.raises(ExpressionError, match=f"unknown name '{name}'"):
            ev(f"{name}(1)")
    assert ev("json.encode({'a': [1]})") == '{"a":[1]}'


@pytest.mark.parametrize(
    "source",
    [
        "[x for x in range(100000000)]",
        "len([1 for x in range(100000) for y in range(100000)])",
        "[[y for y in range(10000)] for x in range(10000)]",
    ],
)
def test_time_bound(source: str) -> None:
    started = time.monotonic()
    with pytest.raises(ExpressionError, match="timed out after 0.05s") as info:
        compile_expression(source).evaluate({}, timeout_s=0.05)
    assert info.value.kind == "timeout"
    assert time.monotonic() - started < 1.0


def test_non_json_input_and_result() -> None:
    with pytest.raises(ExpressionError, match="value of 'a' is not JSON-compatible") as info:
        ev("str(a.x)", a={"x": object()})
    assert info.value.kind == "input"
    with pytest.raises(ExpressionError) as info:
        ev("range(3)")
    assert info.value.kind == "result"


def test_dedent_and_cache() -> None:
    assert ev("\n    1 +\\\n    2\n") == 3
    assert compile_expression("a.b") is compile_expression("a.b")


def test_truthy() -> None:
    for value in (True, 1, 0.5, "x", [0], {"a": 1}):
        assert truthy(value)
    for value in (False, 0, 0.0, "", [], {}, None):
        assert not truthy(value)


# --------------------------------------------------------------------------- templates


CTX: dict[str, Any] = {
    "namespace": "prod",
    "ip": "10.0.0.1",
    "count": 3,
    "ratio": 0.25,
    "flag": True,
    "nothing": None,
    "config": {"services_to_check": ["api", "db"], "metrics": {"p99": 120}},
    "analysis": {"risk_score": 0.9, "reason": "scanner"},
    "approval": {"approved": False, "reason": "too risky"},
    "workflow": {"id": "wf", "input": {"namespace": "prod"}},
    "steps": {},
}


def test_typed_single_template() -> None:
    assert render("{{ count }}", CTX) == 3
    assert render("  {{ ctx.config }}  ", CTX) == CTX["config"]
    assert render("{{ config.services_to_check }}", CTX) == ["api", "db"]
    assert render("{{ nothing }}", CTX) is None
    assert render("{{ flag }}", CTX) is True
    assert render("{{ count * 2 + 1 }}", CTX) == 7
    assert render('{{ {"a": {"b": count}} }}', CTX) == {"a": {"b": 3}}  # inner }} is fine


def test_mixed_string_rendering() -> None:
    text = (
        "ns={{ ctx.namespace }} n={{count}} r={{ ratio }} f={{ flag }} z={{ nothing }} "
        "l={{ config.services_to_check }} d={{ config.metrics }}"
    )
    assert render(text, CTX) == ('ns=prod n=3 r=0.25 f=true z=null l=["api", "db"] d={"p99": 120}')


def test_station_example_forms() -> None:
    assert render("Block {{ip}} now", CTX) == "Block 10.0.0.1 now"
    assert render("namespace {{ ctx.namespace }}", CTX) == "namespace prod"
    assert render("risk {{analysis.risk_score}}: {{analysis.reason}}", CTX) == "risk 0.9: scanner"
    tpl = "({{approval.reason if hasattr(approval, 'reason') else 'Low risk'}})"
    assert render(tpl, CTX) == "(too risky)"
    assert render(tpl, {**CTX, "approval": {"approved": False}}) == "(Low risk)"
    assert render("{{ ctx.workflow.input.namespace }}", CTX) == "prod"


def test_nested_input_walk() -> None:
    value = {
        "agent_task": "Check {{ service.name }} in {{ ctx.namespace }}",
        "params": {"count": "{{ count }}", "list": ["{{ _index }}", "plain", 5, None]},
        "literal": "no templates here",
        "number": 1.5,
    }
    original = copy.deepcopy(value)
    out = render(value, CTX, extra={"service": {"name": "api"}, "_index": 2})
    assert out == {
        "agent_task": "Check api in prod",
        "params": {"count": 3, "list": [2, "plain", 5, None]},
        "literal": "no templates here",
        "number": 1.5,
    }
    assert value == original  # input untouched


def test_extra_names_override_context_keys_but_not_ctx() -> None:
    extra = {"namespace": "staging", "ctx": "ignored"}
    assert render("{{ namespace }}/{{ ctx.namespace }}", CTX, extra=extra) == "staging/prod"


def test_unknown_name_in_template() -> None:
    with pytest.raises(TemplateError) as info:
        render("{{ x }}", CTX)
    assert str(info.value) == "unknown name 'x' in template '{{ x }}'"
    assert info.value.unknown_name == "x"
    with pytest.raises(TemplateError, match=r"unknown name 'service' in template '\{\{service"):
        render({"a": ["Check {{service.name}} please"]}, CTX)


def test_template_failures() -> None:
    with pytest.raises(TemplateError, match=r"template '\{\{ analysis.missing \}\}' failed"):
        render("x {{ analysis.missing }}", CTX)
    with pytest.raises(TemplateError, match="does not compile"):
        render("{{ 1 + }}", CTX)
    with pytest.raises(TemplateError, match="unclosed"):
        render("oops {{ count", CTX)
    with pytest.raises(TemplateError, match="does not compile"):
        render("{{ lambda: 1 }}", CTX)


def test_plain_strings_are_untouched() -> None:
    text = "no braces { here }"
    assert render(text, CTX) is text
    assert render(["a", 1, {"b": "c"}], CTX) == ["a", 1, {"b": "c"}]


def test_templates_compile_once() -> None:
    assert compile_template("a {{ b }}") is compile_template("a {{ b }}")
    assert compile_template("{{ b }}").single and not compile_template("a {{ b }}").single
    assert not compile_template("{{ a }}{{ b }}").single
    assert render("{{ count }}{{ count }}", CTX) == "33"


_EXAMPLES = Path("/work/shared/reference/station-examples")


@pytest.mark.skipif(not _EXAMPLES.is_dir(), reason="station examples not available")
def test_all_station_example_expressions_compile() -> None:
    yaml = pytest.importorskip("yaml")
    seen = 0

    def visit(node: Any) -> None:
        nonlocal seen
        if isinstance(node, dict):
            for key, val in node.items():
                if key in ("if", "expression") and isinstance(val, str):
                    compile_expression(val)
                    seen += 1
                visit(val)
        elif isinstance(node, list):
            for item in node:
                visit(item)
        elif isinstance(node, str) and "{{" in node:
            compile_template(node)
            seen += 1

    for path in sorted(_EXAMPLES.glob("*.yaml")):
        visit(yaml.safe_load(path.read_text()))
    assert seen > 20
