"""Strict validation: one bad file per rule, each error located by file, line, column and path.

Also the JSON Schema shipped for editors (every real file validates, bad ones do not) and the
`validate_text` shape behind `POST /api/v1/workflows/validate`.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from station_wf.dsl.loader import parse_definition
from station_wf.dsl.problems import DefinitionError, Problem
from station_wf.dsl.schema import workflow_json_schema
from station_wf.dsl.validate import validate_text
from station_wf.expr.templates import TemplateError, compile_template

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO.parent / "shared" / "reference" / "station-examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.workflow.yaml")) if EXAMPLES.is_dir() else []
ENV_FILES = sorted((REPO / "environments" / "default" / "workflows").glob("*.workflow.y*ml"))
FILE = "bad.workflow.yaml"


def problems_of(text: str, source: str = FILE) -> list[Problem]:
    with pytest.raises(DefinitionError) as info:
        parse_definition(textwrap.dedent(text), source=source)
    return info.value.problems


def only(text: str, source: str = FILE) -> Problem:
    problems = problems_of(text, source)
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


def at(problem: Problem) -> tuple[int | None, int | None, str]:
    return problem.line, problem.column, problem.path


def written_at(text: str, problem: Problem) -> str:
    """The file text from the problem's position on, to the end of that line."""
    assert problem.line is not None and problem.column is not None
    return textwrap.dedent(text).splitlines()[problem.line - 1][problem.column - 1:]


# ---- unreachable states, at every nesting level ----------------------------------------------------


def test_unreachable_state_in_a_parallel_branch() -> None:
    text = """\
        id: w
        start: fan
        states:
          - name: fan
            type: parallel
            branches:
              - name: left
                states:
                  - {name: l1, type: inject, data: {}, end: true}
                  - {name: l2, type: inject, data: {}, end: true}
              - name: right
                states:
                  - {name: r1, type: inject, data: {}, end: true}
            end: true
        """
    problem = only(text)
    assert at(problem) == (10, 13, "states[0].branches[0].states[1]")
    assert problem.message == (
        "state 'l2' is unreachable: no 'next', condition or 'defaultNext' leads to it from the start state 'l1'"
    )
    assert str(problem).startswith(f"{FILE}:10:13: states[0].branches[0].states[1]: state 'l2' is unreachable")


def test_unreachable_state_at_the_top_level_and_via_switch_routes() -> None:
    problem = only("""\
        id: w
        start: route
        states:
          - name: route
            type: switch
            conditions:
              - {if: "x > 1", next: big}
            defaultNext: small
          - {name: big, type: inject, data: {}, end: true}
          - {name: small, type: inject, data: {}, end: true}
          - name: forgotten
            type: inject
            data: {}
            next: big
        """)
    assert at(problem) == (11, 5, "states[3]")
    assert "state 'forgotten' is unreachable" in problem.message and "start state 'route'" in problem.message


def test_unreachable_state_in_a_foreach_iterator_with_an_explicit_start() -> None:
    problem = only("""\
        id: w
        start: each
        states:
          - name: each
            type: foreach
            itemsPath: items
            iterator:
              start: second
              states:
                - {name: first, type: inject, data: {}, next: second}
                - {name: second, type: inject, data: {}, end: true}
            end: true
        """)
    assert at(problem) == (10, 11, "states[0].iterator.states[0]")
    assert "state 'first' is unreachable" in problem.message and "start state 'second'" in problem.message


def test_unreachable_state_in_a_catch_block() -> None:
    problem = only("""\
        id: w
        start: guarded
        states:
          - name: guarded
            type: try
            try: [{name: risky, type: inject, data: {}, end: true}]
            catch:
              - {name: recover, type: inject, data: {}, end: true}
              - {name: never, type: inject, data: {}, end: true}
            end: true
        """)
    assert at(problem) == (9, 9, "states[0].catch[1]")
    assert "state 'never' is unreachable" in problem.message


def test_no_unreachable_noise_while_a_target_is_unknown() -> None:
    """A typo in `next` would make every later state 'unreachable': only the typo is reported."""
    problem = only("""\
        id: w
        start: a
        states:
          - {name: a, type: inject, data: {}, next: bb}
          - {name: b, type: inject, data: {}, end: true}
        """)
    assert at(problem) == (4, 39, "states[0].next")
    assert problem.message == "unknown state 'bb' (states here: a, b)"


# ---- Starlark syntax -------------------------------------------------------------------------------


def test_bad_starlark_in_a_switch_condition_points_inside_the_string() -> None:
    text = """\
        id: w
        start: route
        states:
          - name: route
            type: switch
            dataPath: alert
            conditions:
              - if: "severity == 'high' and and count > 3"
                next: done
            defaultNext: done
          - {name: done, type: inject, data: {}, end: true}
        """
    problem = only(text)
    assert at(problem) == (8, 37, "states[0].conditions[0].if")
    assert problem.message == "condition has a Starlark syntax error: Parse error: unexpected keyword 'and' here"
    assert written_at(text, problem).startswith("and count > 3")


def test_lambda_in_a_condition_is_refused() -> None:
    problem = only("""\
        id: w
        start: route
        states:
          - name: route
            type: switch
            conditions:
              - condition: 'lambda x: x'
                next: done
          - {name: done, type: inject, data: {}, end: true}
        """)
    assert at(problem) == (7, 21, "states[0].conditions[0].condition")
    assert problem.message == "condition has a Starlark syntax error: `lambda` is not allowed in this dialect"


def test_assignment_in_a_condition_is_not_silently_false() -> None:
    text = """\
        id: w
        start: route
        states:
          - name: route
            type: switch
            conditions:
              - {if: "severity = 'high'", next: done}
            defaultNext: done
          - {name: done, type: inject, data: {}, end: true}
        """
    problem = only(text)
    assert at(problem) == (7, 24, "states[0].conditions[0].if")
    assert problem.message == "condition is an assignment, not an expression (did you mean '=='?)"
    assert written_at(text, problem).startswith("= 'high'")


def test_bad_starlark_in_a_transform_block_names_the_line_inside_the_block() -> None:
    text = """\
        id: w
        start: shape
        states:
          - name: shape
            type: transform
            expression: |
              {
                "errors": [p for p in input.pods if],
                "count": len(input.pods),
              }
            end: true
        """
    problem = only(text)
    assert at(problem) == (8, 44, "states[0].expression")
    assert problem.message == "expression has a Starlark syntax error: Parse error: unexpected symbol ']' here"
    assert written_at(text, problem) == "],"


# ---- templates -------------------------------------------------------------------------------------


def test_unclosed_template_in_a_station_agent_task() -> None:
    text = """\
        id: w
        start: ask
        states:
          - id: ask
            type: operation
            input:
              task: agent.run
              agent: helper
              agent_task: "Check {{ ctx.namespace }} and {{ service.name"
            end: true
        """
    problem = only(text)
    assert at(problem) == (9, 50, "states[0].input.agent_task")
    assert problem.message == "unclosed '{{' in template (no '}}' after it): '{{ service.name'"


def test_bad_template_expression_in_a_prompt() -> None:
    text = """\
        id: w
        start: ask
        states:
          - id: ask
            type: agent
            agent: helper
            prompt: "Block {{ip}} now? {{ analysis.risk score }}"
            end: true
        """
    problem = only(text)
    assert at(problem) == (7, 49, "states[0].prompt")
    assert problem.message == (
        "template '{{ analysis.risk score }}' has a Starlark syntax error: Parse error: unexpected identifier "
        "'score' here"
    )
    assert written_at(text, problem).startswith("score }}")


def test_bad_template_deep_in_operation_variables_and_in_an_approval_message() -> None:
    problems = problems_of("""\
        id: w
        start: ask
        states:
          - name: ask
            type: operation
            action: agent.run
            input:
              agent: helper
              variables:
                targets: ["ok {{ a }}", "{{ }}"]
            next: gate
          - name: gate
            type: human_approval
            message: "Approve {{ x = 1 }}?"
            end: true
        """)
    assert [at(p) for p in problems] == [
        (10, 34, "states[0].input.variables.targets[1]"),
        (14, 28, "states[1].message"),
    ]
    assert problems[0].message == "template '{{ }}' is empty"
    assert problems[1].message == "template '{{ x = 1 }}' is an assignment, not an expression (did you mean '=='?)"


def test_unknown_names_in_templates_and_conditions_are_run_data_not_errors() -> None:
    defn = parse_definition(textwrap.dedent("""\
        id: w
        start: ask
        states:
          - name: ask
            type: agent
            agent: "{{ ctx.agent_name }}"
            prompt: "{{ nobody.knows if hasattr(nobody, 'knows') else '}}' }} and {{ {'a': {'b': 1}} }}"
            next: route
          - name: route
            type: switch
            conditions: [{if: "undefined_thing > 3", next: done}]
            defaultNext: done
          - {name: done, type: inject, data: {}, end: true}
        """), source=FILE)
    assert defn["states"]["ask"]["input"]["agent"] == "{{ ctx.agent_name }}"


@pytest.mark.parametrize("template", [
    "plain", "{{ a }}", "{{ a", "x {{ a b }} y", "{{ '}}' }}", "{{ {'a': {'b': 1}} }}", "{{ }}", "{{ a }} {{",
    "{{ a }}}}", "{{{{ a }}", "{{ x = 1 }}", "{{ a\n  + b }}", "}} {{ a }}", "{{ lambda: 1 }}",
])
def test_load_time_template_check_agrees_with_the_engine(template: str) -> None:
    """The loader splits templates itself (parse only, fast); it must refuse exactly what the engine refuses,
    plus assignments, which the engine would render as None."""
    try:
        compile_template(template)
        engine_ok = True
    except TemplateError:
        engine_ok = False
    doc = {"id": "w", "start": "a", "states": [
        {"name": "a", "type": "agent", "agent": "x", "prompt": template, "end": True}]}
    try:
        parse_definition(json.dumps(doc), source="t.workflow.json")
        loader_ok = True
    except DefinitionError:
        loader_ok = False
    expected = engine_ok and "x = 1" not in template
    assert loader_ok == expected


# ---- paths -----------------------------------------------------------------------------------------


def test_unparseable_result_path() -> None:
    problem = only("""\
        id: w
        start: a
        states:
          - name: a
            type: inject
            data: {x: 1}
            resultPath: "steps[check"
            end: true
        """)
    assert at(problem) == (7, 5, "states[0].resultPath")
    assert problem.message == (
        "invalid path 'steps[check': unclosed '[' (expected a dot path like 'steps.check', 'items[0].name' or 'ctx')"
    )


def test_unparseable_items_data_and_summary_paths() -> None:
    problems = problems_of("""\
        id: w
        start: each
        states:
          - name: each
            type: foreach
            itemsPath: services..all
            iterator: {states: [{name: one, type: inject, data: {}, end: true}]}
            next: route
          - name: route
            type: switch
            dataPath: "a.[0]"
            conditions: [{if: "True", next: gate}]
          - name: gate
            type: human_approval
            summaryPath: "steps[name]"
            end: true
        """)
    assert [at(p) for p in problems] == [
        (6, 5, "states[0].itemsPath"),
        (11, 5, "states[1].dataPath"),
        (15, 5, "states[2].summaryPath"),
    ]
    assert "invalid path 'services..all': empty segment" in problems[0].message
    assert "invalid path 'a.[0]': '.' followed by '['" in problems[1].message
    assert "invalid path 'steps[name]': bad index [name]" in problems[2].message


def test_paths_the_engine_reads_are_accepted() -> None:
    defn = parse_definition(textwrap.dedent("""\
        id: w
        start: a
        states:
          - {name: a, type: inject, data: {}, resultPath: 'steps["odd.key"][-1]', next: b}
          - {name: b, type: inject, data: {}, resultPath: "$.x[0].y", next: c}
          - {name: c, type: inject, data: {}, resultPath: ctx, end: true}
        """), source=FILE)
    assert defn["states"]["a"]["resultPath"] == 'steps["odd.key"][-1]'


# ---- rules that existed before, now with columns ---------------------------------------------------


def test_next_and_end_together() -> None:
    problem = only("""\
        id: w
        start: a
        states:
          - {name: a, type: inject, data: {}, next: b, end: true}
          - {name: b, type: inject, data: {}, end: true}
        """)
    assert at(problem) == (4, 48, "states[0].end")
    assert problem.message == "'end: true' conflicts with 'next': a state either ends or goes on"


def test_unknown_key_with_did_you_mean() -> None:
    problem = only("""\
        id: w
        start: a
        states:
          - name: a
            type: foreach
            itemsPath: items
            maxConcurency: 2
            iterator: {states: [{name: one, type: inject, data: {}, end: true}]}
            end: true
        """)
    assert at(problem) == (7, 5, "states[0].maxConcurency")
    assert problem.message.startswith("unknown key 'maxConcurency' for a foreach state (did you mean 'maxConcurrency'?")


def test_duplicate_state_ids_in_a_branch() -> None:
    problem = only("""\
        id: w
        start: p
        states:
          - name: p
            type: parallel
            branches:
              - name: one
                states:
                  - {id: x, type: inject, data: {}, next: y}
                  - {id: y, type: inject, data: {}, end: true}
                  - {id: x, type: inject, data: {}, end: true}
            end: true
        """)
    assert at(problem) == (11, 14, "states[0].branches[0].states[2].id")
    assert problem.message == "duplicate state name 'x' (first used at states[0].branches[0].states[0])"


def test_unknown_state_inside_a_foreach() -> None:
    problem = only("""\
        id: w
        start: each
        states:
          - name: each
            type: foreach
            itemsPath: items
            iterator:
              states:
                - {name: one, type: inject, data: {}, next: each}
            end: true
        """)
    assert at(problem) == (9, 47, "states[0].iterator.states[0].next")
    assert problem.message == "unknown state 'each' (states here: one)"


def test_every_rule_is_reported_at_once_in_file_order() -> None:
    problems = problems_of("""\
        id: w
        start: a
        dialect: prd
        states:
          - name: a
            type: switch
            conditions: [{if: "x >", next: b}]
            defaultNext: b
          - {name: b, type: agent, agent: x, prompt: "{{ y", next: c, end: true}
          - {name: c, type: inject, data: {}, resultPath: "a..b", end: true}
          - {name: d, type: inject, data: {}, end: true, colour: red}
        """)
    assert [(p.line, p.path) for p in problems] == [
        (7, "states[0].conditions[0].if"),
        (9, "states[1].prompt"),
        (9, "states[1].end"),
        (10, "states[2].resultPath"),
        (11, "states[3]"),
        (11, "states[3].colour"),
    ]
    assert all(p.column is not None for p in problems)
    assert "unreachable" in problems[4].message


# ---- JSON sources ----------------------------------------------------------------------------------


def test_json_source_has_lines_and_columns() -> None:
    text = (
        '{\n'
        '  "id": "w",\n'
        '  "start": "a",\n'
        '  "states": [\n'
        '    {"name": "a", "type": "switch", "conditions": [{"if": "a ==", "next": "b"}], "defaultNext": "b"},\n'
        '    {"name": "b", "type": "inject", "data": {}, "end": true},\n'
        '    {"name": "c", "type": "inject", "data": {}, "end": true}\n'
        '  ]\n'
        '}\n'
    )
    with pytest.raises(DefinitionError) as info:
        parse_definition(text, source="w.workflow.json")
    first, second = info.value.problems
    assert at(first) == (5, 64, "states[0].conditions[0].if")
    assert "Starlark syntax error" in first.message
    assert at(second) == (7, 5, "states[2]")
    assert str(second).startswith("w.workflow.json:7:5: states[2]: state 'c' is unreachable")


def test_invalid_json_has_line_and_column() -> None:
    problem = only('{"id": "w",\n  "start": ,\n}', source="w.workflow.json")
    assert (problem.line, problem.column) == (2, 12)
    assert str(problem) == "w.workflow.json:2:12: invalid JSON: Expecting value"


def test_json_numbers_and_astral_characters_read_as_json_says() -> None:
    text = ('{"id": "w", "timeoutSeconds": 1e3, "start": "a", "states": '
            '[{"name": "a", "type": "inject", "data": {"s": "\\ud83d\\ude00"}, "end": true}]}')
    defn = parse_definition(text, source="w.workflow.json")
    assert defn["timeoutSeconds"] == 1000.0  # YAML 1.1 alone would read '1e3' as a string
    assert defn["states"]["a"]["data"] == {"s": "\U0001f600"}


def test_next_null_is_no_way_out() -> None:
    problem = only("""\
        id: w
        start: a
        states:
          - name: a
            type: inject
            data: {}
            next:
        """)
    assert at(problem) == (4, 5, "states[0]")
    assert problem.message == "state 'a' needs 'next' (or 'end: true')"


def test_problem_string_forms() -> None:
    assert str(Problem("f.yaml", 3, "states[0]", "bad", 7)) == "f.yaml:3:7: states[0]: bad"
    assert str(Problem(None, 3, "states[0]", "bad", 7)) == "line 3:7: states[0]: bad"
    assert str(Problem("f.yaml", 3, "", "bad")) == "f.yaml:3: bad"
    assert Problem("f.yaml", 3, "a", "bad", 2).to_dict() == {
        "file": "f.yaml", "line": 3, "column": 2, "path": "a", "message": "bad",
    }


# ---- the Station examples stay valid ---------------------------------------------------------------


@pytest.mark.skipif(not EXAMPLE_FILES, reason=f"Station examples not found at {EXAMPLES}")
@pytest.mark.parametrize("path", EXAMPLE_FILES + ENV_FILES, ids=lambda p: p.name)
def test_real_files_pass_every_check(path: Path) -> None:
    result = validate_text(path.read_text(encoding="utf-8"), str(path))
    assert result["valid"], result["errors"]


# ---- validate_text (POST /api/v1/workflows/validate) -----------------------------------------------


def test_validate_text_valid_yaml() -> None:
    text = "id: hi\nstart: a\nstates:\n  - {name: a, type: inject, data: {}, end: true}\n"
    assert validate_text(text, None) == {"valid": True, "errors": [], "workflowId": "hi", "dialect": "prd",
                                         "dialectReason": "no Station-only construct", "warnings": []}


def test_validate_text_invalid_keeps_the_id_and_every_error() -> None:
    text = "id: hi\nstart: a\nstates:\n  - {name: a, type: inject, data: {}, next: z}\n  - {name: b, typ: inject}\n"
    result = validate_text(text, "request body")
    assert result["valid"] is False and result["workflowId"] == "hi"
    assert result["errors"] == [
        {"file": "request body", "line": 4, "column": 39, "path": "states[0].next",
         "message": "unknown state 'z' (states here: a)"},
        {"file": "request body", "line": 5, "column": 5, "path": "states[1].type",
         "message": "missing required key 'type'"},
        {"file": "request body", "line": 5, "column": 15, "path": "states[1].typ",
         "message": "unknown key 'typ' in a state (did you mean 'type'?)"},
    ]
    json.dumps(result)  # plain JSON for the API


def test_validate_text_json_body_and_syntax_errors() -> None:
    body = json.dumps({"id": "j", "start": "a", "states": [{"name": "a", "type": "inject", "data": {}, "end": True}]})
    assert validate_text(body, None)["valid"] is True
    broken = validate_text("id: x\nstates: [\n", None)
    assert broken["valid"] is False and broken["workflowId"] is None
    assert broken["errors"][0]["line"] == 3 and broken["errors"][0]["message"].startswith("invalid YAML:")


# ---- the JSON Schema -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = workflow_json_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_schema_is_draft_2020_12_and_a_fresh_copy() -> None:
    schema = workflow_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "changed"
    assert workflow_json_schema()["title"] != "changed"


@pytest.mark.skipif(not EXAMPLE_FILES, reason=f"Station examples not found at {EXAMPLES}")
def test_schema_accepts_every_station_example_and_shipped_workflow(validator: Draft202012Validator) -> None:
    assert len(EXAMPLE_FILES) == 7 and ENV_FILES
    for path in EXAMPLE_FILES + ENV_FILES:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, f"{path.name}: {errors}"


def test_schema_accepts_the_prd_dialect(validator: Draft202012Validator) -> None:
    doc = yaml.safe_load("""
id: prd
version: 1.10
timeoutSeconds: 600
start: check
states:
  - name: check
    type: operation
    action: agent.run
    input: {agent: k8s, task: "Check {{ ctx.namespace }}", timeoutSeconds: "{{ ctx.t }}"}
    retry: {maxAttempts: 3, backoffSeconds: 5, jitter: true}
    resultPath: steps.check
    next: fan
  - name: fan
    type: parallel
    branches:
      - name: a
        states: [{name: nap, type: timer, duration: 1h30m, end: true}]
      - name: b
        start: w
        states: [{name: w, type: operation, action: await, input: {timeoutSeconds: 60}, end: true}]
    join: {atLeast: 1}
    next: approve
  - name: approve
    type: operation
    action: human.approval
    input: {message: "ok?", approvers: [ops], onReject: continue}
    end: true
""")
    assert not list(validator.iter_errors(doc))


def _minimal(**state: Any) -> dict[str, Any]:
    return {"id": "w", "start": "a", "states": [{"name": "a", **state}]}


@pytest.mark.parametrize(("doc", "needle"), [
    ({**_minimal(type="inject", data={}, end=True), "owner": "me"}, "'owner' was unexpected"),
    (_minimal(type="inject", data={}, end=True, resultpath="x"), "'resultpath' was unexpected"),
    (_minimal(type="switch", conditions=[{"if": "x", "next": "a"}], next="a"), "'next' was unexpected"),
    (_minimal(type="teleport", end=True), "is not one of"),
    (_minimal(type="inject", data={}, next="b", end=True), "should not be valid"),
    (_minimal(type="operation", action="agent.run", input={"agent": "x", "prompt": "hi"}, end=True),
     "'prompt' was unexpected"),
    ({"id": "w", "start": "a"}, "'states' is a required property"),
])
def test_schema_rejects_bad_documents(validator: Draft202012Validator, doc: dict[str, Any], needle: str) -> None:
    messages = [e.message for e in validator.iter_errors(doc)]
    messages += [c.message for e in validator.iter_errors(doc) for c in e.context]
    assert any(needle in m for m in messages), messages
