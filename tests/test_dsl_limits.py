"""Load-time limits (issue 11): hostile definitions are refused with file, line and path, quickly,
without recursion errors, and before anything can reach the Starlark evaluator or the scheduler."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from station_wf.dsl import limits
from station_wf.dsl.loader import normalize_definition, parse_definition
from station_wf.dsl.problems import DefinitionError
from station_wf.dsl.validate import validate_text
from station_wf.expr.approvers import load_problems, rendered_problem
from station_wf.expr.limits import (
    MAX_EXPRESSION_DEPTH,
    expression_depth,
    expression_problem,
    value_depth_exceeds,
)
from station_wf.expr.paths import PathError, set_path


def errors(text: str, source: str = "wf.workflow.yaml") -> list[dict[str, Any]]:
    result = validate_text(text, source)
    assert result["valid"] is False, "expected the definition to be refused"
    return list(result["errors"])


def one_state(state: dict[str, Any], **top: Any) -> str:
    return json.dumps({"id": "w", "start": state["name"], "states": [state], **top})


def transform(expression: str) -> str:
    return (f"id: w\nstart: t\nstates:\n  - name: t\n    type: transform\n"
            f"    expression: {json.dumps(expression)}\n    end: true\n")


# -- expressions and templates ---------------------------------------------------------------------

@pytest.mark.parametrize("expression", [
    "[" * 3000 + "1" + "]" * 3000,                    # brackets: starlark-rust segfaults from ~2,500
    "+".join(["1"] * 5000),                            # a 5,000-deep left-leaning tree
    "+".join(["1"] * 200),                             # under the size limit, still too deep
    "len(" + "[" * 300 + "1" + "]" * 300 + ") > 0",    # past Python's 200-paren parser limit
    " < ".join(["1"] * 100),                           # comparison chain
    "x" + ".a" * 100,                                  # attribute chain
    "x" + "[0]" * 100,                                 # index chain
    "f" + "()" * 100,                                  # call chain
    "not " * 100 + "x",                                # unary chain
])
def test_deep_or_long_expressions_are_refused_with_line_and_path(expression: str) -> None:
    [problem] = errors(transform(expression))
    assert problem["path"] == "states[0].expression" and problem["line"] == 6 and problem["file"] == "wf.workflow.yaml"
    assert "nested too deeply" in problem["message"] or "bytes long" in problem["message"]


def test_expression_depth_counts_brackets_and_operators_not_siblings() -> None:
    assert expression_depth("x > 0.05") == 2
    assert expression_depth("[1+1, 2+2, 3+3]") == 3  # siblings do not add up
    assert expression_depth("{'a': [1, 2], 'b': 'a(((('}") == 3  # brackets in strings do not count
    assert expression_depth("# only ( a comment") == 1
    real = "len(steps.check.output.items) > 0 and ctx.workflow.input['env'] == 'prod' or x in [1, 2]"
    assert expression_depth(real) < 20 and expression_problem(real) is None
    assert expression_problem("1" + "+1" * (MAX_EXPRESSION_DEPTH - 2)) is None  # exactly at the limit
    assert expression_problem("1" + "+1" * MAX_EXPRESSION_DEPTH) is not None
    assert "bytes long" in str(expression_problem("'" + "a" * 5000 + "'"))


def test_a_switch_condition_is_bounded_too() -> None:
    text = one_state({"name": "s", "type": "switch", "defaultNext": "e",
                      "conditions": [{"if": "[" * 3000 + "]" * 3000 + " != 0", "next": "e"}]})
    text = text.replace('"states": [', '"states": [{"name": "e", "type": "inject", "data": {}, "end": true}, ', 1)
    text = text.replace('"start": "s"', '"start": "s"')
    problems = [p for p in validate_text(text)["errors"] if "conditions" in p["path"]]
    assert problems and problems[0]["path"] == "states[1].conditions[0].if"


@pytest.mark.parametrize("where", ["task", "variables"])
def test_templates_in_any_input_are_bounded(where: str) -> None:
    deep = "{{ " + "+".join(["1"] * 500) + " }}"
    payload: dict[str, Any] = {"agent": "a", "task": "hi"}
    payload["task" if where == "task" else "variables"] = deep if where == "task" else {"x": ["ok", deep]}
    text = one_state({"name": "t", "type": "operation", "action": "agent.run", "input": payload, "end": True})
    [problem] = errors(text, "wf.workflow.json")
    expected = "states[0].input.task" if where == "task" else "states[0].input.variables.x[1]"
    assert problem["path"] == expected and "nested too deeply" in problem["message"] and problem["line"] == 1


def test_template_searches_and_counts_are_bounded() -> None:
    for task in ("{{ " + "}}" * 200_000, "{{ " + "(}}" * 130_000, "{{ a }}" * 70_000):
        text = one_state({"name": "t", "type": "operation", "action": "agent.run",
                          "input": {"agent": "a", "task": task}, "end": True})
        started = time.monotonic()
        [problem] = errors(text)
        assert time.monotonic() - started < 2.0
        assert problem["path"] == "states[0].input.task"
        assert "bytes long" in problem["message"] or "'{{' templates; the limit is 256" in problem["message"]
    ok = one_state({"name": "t", "type": "operation", "action": "agent.run",
                    "input": {"agent": "a", "task": "{{ a }}" * 256}, "end": True})
    assert validate_text(ok)["valid"] is True


def test_approval_message_template_is_bounded() -> None:
    text = one_state({"name": "a", "type": "human_approval", "message": "{{ " + "[" * 500 + "]" * 500 + " }}",
                      "end": True})
    [problem] = errors(text)
    assert problem["path"] == "states[0].message" and "nested too deeply" in problem["message"]


def test_a_comment_only_expression_is_a_clear_error_not_a_crash() -> None:
    for expression in ("#", "# nothing here"):
        [problem] = errors(transform(expression))
        assert problem["path"] == "states[0].expression" and "only a comment" in problem["message"]


# -- the document ----------------------------------------------------------------------------------

def merge_bomb(levels: int) -> str:
    lines = ["x0: &x0 {k0: 1}"]
    lines += [f"x{i}: &x{i} {{<<: [*x{i - 1}, *x{i - 1}], k{i}: {i}}}" for i in range(1, levels)]
    lines.append(f"id: mb\nstart: s\nstates:\n  - {{ name: s, type: inject, data: *x{levels - 1}, end: true }}")
    return "\n".join(lines)


@pytest.mark.parametrize("levels", [22, 40])
def test_merge_key_bomb_is_refused_in_well_under_a_second(levels: int) -> None:
    text = merge_bomb(levels)
    assert len(text) < 1600
    started = time.monotonic()
    [problem] = errors(text)
    assert time.monotonic() - started < 0.5
    assert "merge keys expand to more than" in problem["message"]


def test_ordinary_merge_keys_still_work() -> None:
    text = ("metadata: {base: &base {data: {a: 1}, end: true}}\nid: w\nstart: s\n"
            "states:\n  - {<<: *base, name: s, type: inject}\n")
    assert parse_definition(text)["states"]["s"]["data"] == {"a": 1}


def nested_parallel(levels: int) -> dict[str, Any]:
    state: dict[str, Any] = {"name": "leaf", "type": "inject", "data": {}, "end": True}
    for i in range(levels):
        state = {"name": f"p{i}", "type": "parallel", "end": True, "branches": [{"name": "b", "states": [state]}]}
    return {"id": "deep", "start": state["name"], "states": [state]}


def nested_yaml(levels: int) -> str:
    out, indent = "id: deep\nstart: p0\nstates:\n", ""
    for i in range(levels):
        out += (f"{indent}- name: p{i}\n{indent}  type: parallel\n{indent}  end: true\n"
                f"{indent}  branches:\n{indent}  - name: b\n{indent}    states:\n")
        indent += "    "
    return out + f"{indent}- {{name: t, type: inject, data: {{}}, end: true}}\n"


@pytest.mark.parametrize("levels", [33, 200])
def test_deep_block_nesting_is_a_clean_error_on_validate_and_create(levels: int) -> None:
    doc = nested_parallel(levels)
    for problem in (errors(json.dumps(doc))[0], errors(nested_yaml(levels))[0]):
        assert "nest" in problem["message"] and "RecursionError" not in problem["message"]
    with pytest.raises(DefinitionError) as err:  # the API's create path: an already-parsed body
        normalize_definition(doc, source="request body")
    assert "nest more than 32 levels" in str(err.value)


def test_block_nesting_up_to_the_limit_loads() -> None:
    defn = normalize_definition(nested_parallel(limits.MAX_BLOCK_DEPTH))
    assert defn["start"] == f"p{limits.MAX_BLOCK_DEPTH - 1}"


def test_deeply_nested_data_is_refused_not_a_recursion_error() -> None:
    data: Any = 1
    for _ in range(5000):
        data = [data]
    doc = {"id": "w", "start": "s", "states": [{"name": "s", "type": "inject", "data": {"v": data}, "end": True}]}
    with pytest.raises(DefinitionError, match="nested too deeply"):
        normalize_definition(doc)


def test_too_many_states_counting_every_level() -> None:
    chain = [{"name": f"s{i}", "type": "inject", "data": {}, "next": f"s{i + 1}"} for i in range(limits.MAX_STATES)]
    chain.append({"name": f"s{limits.MAX_STATES}", "type": "inject", "data": {}, "end": True})
    [problem] = errors(json.dumps({"id": "w", "start": "s0", "states": chain}))
    assert "more than 1000 states" in problem["message"]
    branches = [{"name": f"b{i}", "states": [{"name": "x", "type": "inject", "data": {}, "end": True}]}
                for i in range(limits.MAX_STATES)]
    wide = one_state({"name": "p", "type": "parallel", "branches": branches, "end": True})
    assert "more than 1000 states" in errors(wide)[0]["message"]


def test_document_size_cap() -> None:
    text = "id: w\n# " + "x" * limits.MAX_DOCUMENT_BYTES + "\n"
    [problem] = errors(text)
    assert problem["message"] == f"the definition is larger than {limits.MAX_DOCUMENT_BYTES} bytes"


# -- numbers and cron ------------------------------------------------------------------------------

@pytest.mark.parametrize(("field", "value"), [
    ("duration", "1" * 5000), ("duration", "NaN"), ("duration", "inf"), ("duration", "-5s"),
    ("duration", "400d"), ("durationSeconds", 1e300), ("durationSeconds", 10**30),
])
def test_durations_must_be_finite_and_at_most_a_year(field: str, value: Any) -> None:
    [problem] = errors(one_state({"name": "z", "type": "sleep", field: value, "end": True}))
    assert problem["path"] == f"states[0].{field}" and problem["line"] == 1


@pytest.mark.parametrize("text", [
    '{"id": "w", "start": "z", "states": [{"name": "z", "type": "sleep", "durationSeconds": NaN, "end": true}]}',
    '{"id": "w", "start": "z", "states": [{"name": "z", "type": "sleep", "durationSeconds": Infinity, "end": true}]}',
    "id: w\nstart: z\nstates:\n  - {name: z, type: sleep, durationSeconds: .inf, end: true}\n",
    "id: w\nstart: z\nstates:\n  - {name: z, type: inject, data: {a: .nan}, end: true}\n",
    "id: w\nstart: z\nstates:\n  - {name: z, type: inject, data: {a: 99999999999999999999}, end: true}\n",
])
def test_nan_infinity_and_huge_integers_are_refused_anywhere(text: str) -> None:
    [problem] = errors(text)
    assert problem["path"].startswith("states[0].")


@pytest.mark.parametrize(("key", "value"), [
    ("timeoutSeconds", 1e12), ("retry", {"maxAttempts": 10**6}), ("retry", {"maxAttempts": 3, "backoffRate": 1e9}),
    ("retry", {"maxAttempts": 3, "maxBackoffSeconds": 1e15}),
])
def test_numeric_fields_have_sane_maximums(key: str, value: Any) -> None:
    state = {"name": "a", "type": "agent", "agent": "x", key: value, "end": True}
    [problem] = errors(one_state(state))
    assert problem["path"].startswith(f"states[0].{key}") and "at most" in problem["message"]


CRON = "id: w\nstart: t\nschedules:\n  - cron: '{cron}'\n    timezone: {tz}\nstates:\n  - {{name: t, type: inject, data: {{}}, end: true}}\n"


def test_cron_macros_load() -> None:
    defn = parse_definition(CRON.format(cron="@daily", tz="Europe/Berlin"))
    assert defn["schedules"][0]["cron"] == "@daily" and defn["schedules"][0]["timezone"] == "Europe/Berlin"


@pytest.mark.parametrize("cron", ["99 * * * *", "*/0 * * * *", "0 0 31 2 *", "0-99999 * * * *", "L * * * *",
                                  "0 0 ? * MON#5", "x y z w v", "@sometimes", "* * * *"])
def test_cron_the_scheduler_cannot_parse_is_refused_with_line(cron: str) -> None:
    [problem] = errors(CRON.format(cron=cron, tz="UTC"))
    assert problem["path"] == "schedules[0].cron" and problem["line"] == 4
    assert problem["message"].startswith("invalid cron expression")


def test_unknown_time_zone_is_refused() -> None:
    [problem] = errors(CRON.format(cron="@hourly", tz="Mars/Olympus"))
    assert problem["path"] == "schedules[0].timezone" and problem["line"] == 5


def test_the_loader_has_no_cron_parser_of_its_own() -> None:
    from station_wf.dsl import loader

    assert not hasattr(loader, "_CRON_FIELD_RE") and not hasattr(loader, "_known_timezone")


# -- approvers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("approvers", ["user:alice", "", [1], ["a b"], "user:{{ who }}", {"user": "a"}, ["user:"]])
def test_approvers_must_be_a_list_of_user_or_team_strings(approvers: Any) -> None:
    for state in ({"name": "a", "type": "human_approval", "approvers": approvers, "end": True},
                  {"name": "a", "type": "operation", "action": "human.approval", "input": {"approvers": approvers},
                   "end": True}):
        problems = errors(one_state(state))
        assert all("approvers" in p["path"] for p in problems), problems


@pytest.mark.parametrize("approvers", [["user:alice", "team:ops"], ["admin"], "{{ who }}", ["user:{{ who }}", "team:sre"]])
def test_valid_approvers_load(approvers: Any) -> None:
    state = {"name": "a", "type": "operation", "action": "human.approval", "input": {"approvers": approvers}, "end": True}
    assert normalize_definition({"id": "w", "start": "a", "states": [state]})["states"]["a"]["input"]["approvers"] == approvers


def test_a_literal_empty_list_means_anyone_like_leaving_it_out() -> None:
    for state in ({"name": "a", "type": "human_approval", "approvers": [], "end": True},
                  {"name": "a", "type": "operation", "action": "human.approval", "input": {"approvers": []},
                   "end": True}):
        defn = normalize_definition({"id": "w", "start": "a", "states": [state]})
        assert "approvers" not in defn["states"]["a"]["input"]


def test_rendered_approvers_rule() -> None:
    assert rendered_problem(["user:alice"]) is None
    assert "a string" in str(rendered_problem("user:alice"))
    assert "empty list" in str(rendered_problem([]))
    assert "int" in str(rendered_problem([1]))
    assert rendered_problem("") is not None and rendered_problem(None) is not None
    assert load_problems("{{ a }}{{ b }}") != []


# -- reserved ids and paths ------------------------------------------------------------------------

@pytest.mark.parametrize("wf_id", [".", "..", "..."])
def test_dot_only_workflow_ids_are_refused(wf_id: str) -> None:
    [problem] = errors(json.dumps({"id": wf_id, "start": "s", "states": [
        {"name": "s", "type": "inject", "data": {}, "end": True}]}))
    assert problem["path"] == "id"


@pytest.mark.parametrize("path", ["workflow", "workflow.id", "ctx.workflow", "$.workflow.input", "steps", "ctx.steps"])
def test_result_paths_over_the_engine_keys_are_refused(path: str) -> None:
    [problem] = errors(one_state({"name": "t", "type": "transform", "expression": "1", "resultPath": path, "end": True}))
    assert problem["path"] == "states[0].resultPath" and "overwrite" in problem["message"]


def test_steps_below_and_other_paths_are_fine() -> None:
    for path in ("steps.t", "result", "ctx.out.x", "ctx"):
        normalize_definition({"id": "w", "start": "t", "states": [
            {"name": "t", "type": "transform", "expression": "{}", "resultPath": path, "end": True}]})


def test_inject_into_the_root_may_not_carry_engine_keys() -> None:
    [problem] = errors(one_state({"name": "i", "type": "inject", "data": {"steps": 1, "x": 2}, "end": True}))
    assert problem["path"] == "states[0].data" and "'steps'" in problem["message"]
    normalize_definition({"id": "w", "start": "i", "states": [
        {"name": "i", "type": "inject", "data": {"steps": 1}, "resultPath": "cfg", "end": True}]})


def test_a_root_merge_never_overwrites_workflow_or_steps() -> None:
    context = {"workflow": {"id": "w"}, "steps": {"a": 1}, "x": 0}
    for reserved in ({"steps": 1}, {"workflow": {"id": "evil"}}):
        with pytest.raises(PathError, match="engine owns"):
            set_path(context, "ctx", {**reserved, "x": 5})
        assert context == {"workflow": {"id": "w"}, "steps": {"a": 1}, "x": 0}  # nothing half-merged
    set_path(context, "$", {"x": 5, "y": 6})
    assert context["x"] == 5 and context["steps"] == {"a": 1}


def test_value_depth() -> None:
    deep: Any = {}
    for _ in range(1000):
        deep = {"a": deep}
    assert value_depth_exceeds(deep, 64) and not value_depth_exceeds({"a": [{"b": 1}]}, 3)
    assert value_depth_exceeds({"a": [{"b": 1}]}, 2)


def test_workflow_ids_and_input_schemas_are_bounded() -> None:
    """An id is a URL segment and a file name; a schema's meta-check grows fast with its size (fuzz)."""
    long_id = errors(json.dumps({"id": "w" * 201, "start": "s",
                                 "states": [{"name": "s", "type": "inject", "data": {}, "end": True}]}), "wf.json")
    assert any("over the limit of 200" in e["message"] for e in long_id), long_id
    huge = {"id": "s", "inputSchema": {"type": "object", "allOf": [{"type": "object"}] * 5000}, "start": "s",
            "states": [{"name": "s", "type": "inject", "data": {}, "end": True}]}
    started = time.monotonic()
    found = errors(json.dumps(huge), "wf.json")
    assert any("more than 2000 objects and lists" in e["message"] for e in found), found
    assert time.monotonic() - started < 2.0
    assert limits.schema_size_problem({"type": "object", "properties": {"a": {"type": "string"}}}) is None
