"""The definition loader: real Station files load as their authors meant, and bad files fail precisely."""

from __future__ import annotations

import json
import pickle
import textwrap
from pathlib import Path
from typing import Any

import pytest

from station_wf.dsl.loader import iter_states, load_definition_file, normalize_definition, parse_definition
from station_wf.dsl.problems import DefinitionError, Problem
from station_wf.dsl.spec import WORKFLOW_FILE_SUFFIXES

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "station-examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.workflow.yaml")) if EXAMPLES.is_dir() else []
needs_examples = pytest.mark.skipif(not EXAMPLES.is_dir(), reason=f"Station examples not found at {EXAMPLES}")


def example(name: str) -> dict[str, Any]:
    return load_definition_file(EXAMPLES / f"{name}.workflow.yaml")


def parse(text: str, source: str | None = "wf.workflow.yaml") -> dict[str, Any]:
    return parse_definition(textwrap.dedent(text), source=source)


def problems_of(text: str, source: str | None = "wf.workflow.yaml") -> list[Problem]:
    with pytest.raises(DefinitionError) as info:
        parse(text, source)
    return info.value.problems


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


# ---- the Station examples --------------------------------------------------------------------------


@needs_examples
def test_all_seven_examples_are_present() -> None:
    assert len(EXAMPLE_FILES) == 7


@needs_examples
@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_loads_and_is_plain_json(path: Path) -> None:
    defn = load_definition_file(path)
    assert json.loads(json.dumps(defn)) == defn
    assert defn["start"] in defn["states"]
    assert path.name.endswith(WORKFLOW_FILE_SUFFIXES)
    for _scope, state in iter_states(defn):
        assert {"name", "type", "next", "end"} <= state.keys()
        assert state["type"] in {"operation", "inject", "switch", "parallel", "foreach", "transform"}


@needs_examples
def test_switch_routing_station_operation_becomes_agent_run() -> None:
    defn = example("e2e-switch-routing")
    critical = defn["states"]["critical_response"]
    assert critical["type"] == "operation"
    assert critical["action"] == "agent.run"
    assert critical["input"] == {
        "agent": "alert-investigator",
        "task": "CRITICAL ALERT: {{ alert.alert_name }} from {{ alert.source }}. Current value "
        "{{ alert.current_value }} exceeds threshold {{ alert.threshold }}. Investigate immediately and "
        "prepare incident response.",
    }
    assert critical["next"] == "escalate" and critical["end"] is False
    route = defn["states"]["route_by_severity"]
    assert route["dataPath"] == "alert.severity"
    assert route["conditions"][0] == {"if": "_value == 'critical'", "next": "critical_response"}
    assert route["defaultNext"] == "low_severity_response"
    assert route["next"] is None and route["end"] is False
    assert defn["versionLabel"] == "1.0"


@needs_examples
def test_cron_state_becomes_a_schedule_and_moves_start() -> None:
    defn = example("e2e-cron-with-agents")
    assert defn["start"] == "inject_config"
    assert "schedule" not in defn["states"]
    assert defn["schedules"] == [
        {
            "cron": "*/3 * * * *",
            "timezone": "UTC",
            "enabled": True,
            "input": {"check_type": "periodic_health", "namespace": "production", "alert_threshold": 0.05},
        }
    ]
    assert defn["states"]["analyze_health"]["end"] is True


@needs_examples
def test_approval_demo_human_approval() -> None:
    defn = example("approval-demo")
    ask = defn["states"]["ask_approval"]
    assert ask["type"] == "operation" and ask["action"] == "human.approval"
    assert ask["input"]["timeoutSeconds"] == 3600
    assert ask["input"]["approvers"] == ["admin"]
    assert ask["input"]["message"].startswith("Please approve this demo workflow")
    assert ask["resultPath"] == "approval" and ask["next"] == "check_result"
    assert defn["states"]["greet"]["next"] == "ask_approval"  # `transition` is `next`


@needs_examples
def test_slack_example_prompt_is_task_and_message() -> None:
    defn = example("slack-approval-escalation")
    analyze = defn["states"]["analyze_ip"]
    assert analyze["action"] == "agent.run"
    assert analyze["input"]["agent"] == "security-analyzer"
    assert analyze["input"]["task"].startswith("Analyze the following IP address")
    approval = defn["states"]["request_approval"]
    assert approval["action"] == "human.approval"
    assert set(approval["input"]) == {"message", "onReject", "onTimeout"}
    assert approval["input"]["onReject"] == "continue"  # handle_approval routes on the decision (DESIGN 4)


@needs_examples
def test_dataflow_agent_without_task_and_transform() -> None:
    defn = example("dataflow-transform")
    assert defn["states"]["investigate"]["input"] == {"agent": "k8s-investigator", "task": None}
    assert "input.pods" in defn["states"]["extract_critical"]["expression"]
    assert defn["inputSchema"]["required"] == ["task", "namespace"]


@needs_examples
def test_foreach_and_parallel_scopes() -> None:
    foreach = example("e2e-foreach-services")["states"]["check_each_service"]
    assert foreach["itemName"] == "service" and foreach["maxConcurrency"] == 2
    assert foreach["itemsPath"] == "ctx.services"
    assert foreach["iterator"]["start"] == "health_check"
    assert foreach["iterator"]["states"]["health_check"]["input"]["agent"] == "k8s-deployment-checker"

    defn = example("e2e-parallel-diagnostics")
    gather = defn["states"]["gather_diagnostics"]
    assert [b["name"] for b in gather["branches"]] == ["kubernetes", "aws_logs", "grafana_metrics"]
    assert gather["branches"][0]["start"] == "k8s_check"
    assert gather["join"] == {"mode": "all", "atLeast": None}
    scopes = [(scope, state["name"]) for scope, state in iter_states(defn)]
    assert scopes == [
        ("", "init"),
        ("", "gather_diagnostics"),
        ("gather_diagnostics.kubernetes", "k8s_check"),
        ("gather_diagnostics.aws_logs", "aws_check"),
        ("gather_diagnostics.grafana_metrics", "grafana_check"),
        ("", "analyze_results"),
    ]


# ---- the canonical (PRD) dialect and normalization ---------------------------------------------------

PRD = """\
id: incident-triage
version: 1.10
inputSchema:
  type: object
  properties: {namespace: {type: string}}
  required: [namespace]
timeoutSeconds: 600
start: check_pods
states:
  - name: check_pods
    type: operation
    action: agent.run
    input: {agent: kubernetes-triage, task: "Check {{ ctx.namespace }}"}
    timeoutSeconds: 300
    retry: {maxAttempts: 3, backoffSeconds: 5}
    resultPath: steps.checkPods
    next: fan
  - name: fan
    type: parallel
    branches:
      - name: pods
        states:
          - {name: nap, type: timer, duration: 1h30m, next: inner}
          - name: inner
            type: foreach
            itemsPath: ctx.items
            iterator: {states: [{name: one, type: inject, data: {a: 1}, end: true}]}
            end: true
      - name: logs
        start: b
        states:
          - {name: a, type: sleep, durationSeconds: 2, end: true}
          - {name: b, type: operation, action: await, next: a}
    join: {atLeast: 1}
    next: guarded
  - name: guarded
    type: try
    try: [{name: risky, type: agent, agent: x, prompt: go, input: {k: v}, end: true}]
    catch: {states: [{name: recover, type: inject, data: {}, end: true}]}
    next: approve
  - name: approve
    type: operation
    action: human.approval
    input: {message: "ok?", timeoutSeconds: 60, onReject: continue}
    end: true
"""


def test_prd_dialect_normalizes() -> None:
    defn = parse(PRD)
    assert defn["versionLabel"] == "1.10"  # as written, not the float 1.1
    assert defn["timeoutSeconds"] == 600
    check = defn["states"]["check_pods"]
    assert check["retry"] == {
        "maxAttempts": 3, "backoffSeconds": 5, "backoffRate": 2, "maxBackoffSeconds": None, "jitter": False,
    }
    fan = defn["states"]["fan"]
    assert fan["join"] == {"mode": "atLeast", "atLeast": 1}
    pods, logs = fan["branches"]
    assert pods["states"]["nap"]["type"] == "sleep" and pods["states"]["nap"]["durationSeconds"] == 5400.0
    assert pods["states"]["inner"]["itemName"] == "item" and pods["states"]["inner"]["maxConcurrency"] == 1
    assert logs["start"] == "b" and logs["states"]["b"]["action"] == "signal.wait"
    guarded = defn["states"]["guarded"]
    assert guarded["try"]["start"] == "risky" and guarded["finally"] is None
    assert guarded["try"]["states"]["risky"]["input"] == {"agent": "x", "task": "go", "variables": {"k": "v"}}
    assert guarded["catch"]["states"]["recover"]["type"] == "inject"
    assert defn["states"]["approve"]["input"] == {"message": "ok?", "timeoutSeconds": 60, "onReject": "continue"}
    scopes = [(scope, state["name"]) for scope, state in iter_states(defn)]
    assert ("fan.pods.inner", "one") in scopes and ("fan.logs", "b") in scopes
    assert ("guarded.try", "risky") in scopes and ("guarded.catch", "recover") in scopes


def test_json_file_with_tabs_keeps_line_numbers() -> None:
    text = '{\n\t"id": "w",\n\t"start": "a",\n\t"states": [{"name": "a", "type": "inject", "data": 1, "next": "b"}]\n}'
    with pytest.raises(DefinitionError) as info:
        parse_definition(text, source="w.workflow.json")
    assert str(only(info.value.problems)) == "w.workflow.json:4:56: states[0].next: unknown state 'b' (states here: a)"


def test_json_file_must_be_strict_json() -> None:
    with pytest.raises(DefinitionError) as info:
        parse_definition('{"id": "w",\n "start": }', source="w.workflow.json")
    assert str(only(info.value.problems)) == "w.workflow.json:2:11: invalid JSON: Expecting value"


def test_unreadable_file_is_a_definition_error() -> None:
    missing = Path(__file__).with_name("no-such-file.workflow.yaml")
    with pytest.raises(DefinitionError) as info:
        load_definition_file(missing)
    assert str(info.value).startswith(f"{missing}: cannot read file:")


def test_top_level_schedules_and_yaml_merge_keys() -> None:
    defn = parse("""\
        id: nightly
        start: a
        metadata:
          base: &base {type: inject, end: true}
        schedules:
          - {cron: "0 3 * * *", timezone: Europe/Paris, input: {full: true}}
        states:
          - {<<: *base, name: a, data: {x: 1}}
        """)
    assert defn["schedules"] == [{"cron": "0 3 * * *", "timezone": "Europe/Paris", "enabled": True, "input": {"full": True}}]
    assert defn["states"]["a"]["end"] is True and defn["states"]["a"]["data"] == {"x": 1}


# ---- errors: exact line and path -------------------------------------------------------------------


def test_malformed_yaml_names_the_line() -> None:
    problem = only(problems_of("""\
        id: w
        start: a
        states:
          - name: a
            type: inject
           data: 1
        """))
    assert problem.line == 6 and problem.file == "wf.workflow.yaml"
    assert str(problem).startswith("wf.workflow.yaml:6:4: invalid YAML:")


def test_unknown_key_in_a_state() -> None:
    problem = only(problems_of("""\
        id: w
        start: a
        states:
          - name: a
            type: inject
            data: {}
            resultpath: x
            end: true
        """))
    assert (problem.line, problem.path) == (7, "states[0].resultpath")
    assert "unknown key 'resultpath'" in problem.message and "did you mean 'resultPath'?" in problem.message


def test_unknown_next_target_names_the_key_written() -> None:
    problem = only(problems_of("""\
        id: w
        start: a
        states:
          - id: a
            type: inject
            data: {}
            transition: b
          - id: c
            type: inject
            data: {}
            end: true
        """))
    assert str(problem) == "wf.workflow.yaml:7:5: states[0].transition: unknown state 'b' (states here: a, c)"


def test_next_must_stay_inside_its_branch() -> None:
    problem = only(problems_of("""\
        id: w
        start: p
        states:
          - name: p
            type: parallel
            branches:
              - name: one
                states:
                  - name: inside
                    type: inject
                    data: {}
                    next: p
            end: true
        """))
    assert (problem.line, problem.path) == (12, "states[0].branches[0].states[0].next")
    assert "unknown state 'p'" in problem.message


def test_duplicate_state_names() -> None:
    problem = only(problems_of("""\
        id: w
        start: a
        states:
          - name: a
            type: inject
            data: {}
            next: a
          - name: a
            type: inject
            data: {}
            end: true
        """))
    assert (problem.line, problem.path) == (8, "states[1].name")
    assert problem.message == "duplicate state name 'a' (first used at states[0])"


def test_missing_start() -> None:
    problem = only(problems_of("""\
        # a comment first
        id: w
        states:
          - {name: a, type: inject, data: {}, end: true}
        """))
    assert (problem.line, problem.path) == (2, "start")
    assert str(problem) == "wf.workflow.yaml:2:1: start: missing required key 'start'"


def test_end_with_next() -> None:
    problem = only(problems_of("""\
        id: w
        start: a
        states:
          - name: a
            type: inject
            data: {}
            next: b
            end: true
          - {name: b, type: inject, data: {}, end: true}
        """))
    assert (problem.line, problem.path) == (8, "states[0].end")
    assert "conflicts with 'next'" in problem.message


def test_bad_retry_key() -> None:
    problem = only(problems_of("""\
        id: w
        start: a
        states:
          - name: a
            type: operation
            action: agent.run
            input: {agent: x}
            retry:
              maxAttempts: 2
              retryOn: [timeout]
            end: true
        """))
    assert (problem.line, problem.path) == (10, "states[0].retry.retryOn")
    assert problem.message.startswith("unknown key 'retryOn' in retry")


def test_bad_join_at_least() -> None:
    problem = only(problems_of("""\
        id: w
        start: p
        states:
          - name: p
            type: parallel
            branches:
              - {name: one, states: [{name: x, type: inject, data: {}, end: true}]}
              - {name: two, states: [{name: y, type: inject, data: {}, end: true}]}
            join:
              mode: atLeast
              atLeast: 3
            end: true
        """))
    assert str(problem) == (
        "wf.workflow.yaml:11:7: states[0].join.atLeast: must be between 1 and 2 (the number of branches), got 3"
    )


def test_duplicate_yaml_key() -> None:
    problem = only(problems_of("""\
        id: w
        start: a
        states:
          - name: a
            type: inject
            data: {}
            data: {}
            end: true
        """))
    assert (problem.line, problem.path) == (7, "states[0].data")
    assert problem.message == "duplicate key 'data' (first defined on line 6)"


def test_unknown_action_and_agent_input() -> None:
    problems = problems_of("""\
        id: w
        start: a
        states:
          - name: a
            type: operation
            action: agent.walk
            next: b
          - name: b
            type: operation
            input: {task: agent.run, agent_task: hi}
            end: true
        """)
    assert [(p.line, p.path) for p in problems] == [(6, "states[0].action"), (10, "states[1].input.agent")]
    assert "known: agent.run, human.approval, signal.wait" in problems[0].message
    assert problems[1].message.startswith("missing required key 'agent'")


def test_cron_state_must_be_the_start() -> None:
    problem = only(problems_of("""\
        id: w
        start: a
        states:
          - {name: a, type: inject, data: {}, end: true}
          - name: tick
            type: cron
            cron: "*/5 * * * *"
            next: a
        """))
    assert (problem.line, problem.path) == (5, "states[1]")
    assert "must be the workflow's start state" in problem.message


def test_all_problems_are_collected_in_line_order() -> None:
    problems = problems_of("""\
        id: w
        start: a
        bogus: 1
        states:
          - name: a
            type: sleep
            duration: soon
            next: nowhere
          - name: s
            type: switch
            conditions: []
            end: true
        """)
    assert [(p.line, p.path) for p in problems] == [
        (3, "bogus"),
        (7, "states[0].duration"),
        (8, "states[0].next"),
        (11, "states[1].conditions"),
        (12, "states[1].end"),
    ]
    assert str(DefinitionError(problems)).count("\n") == 4


def test_invalid_input_schema() -> None:
    problem = only(problems_of("""\
        id: w
        inputSchema:
          type: object
          properties:
            n: {type: integr}
        start: a
        states:
          - {name: a, type: inject, data: {}, end: true}
        """))
    assert problem.path == "inputSchema.properties.n.type" and problem.line == 5
    assert problem.message.startswith("not a valid JSON Schema")


def test_top_level_must_be_a_mapping() -> None:
    problem = only(problems_of("- just\n- a list\n"))
    assert str(problem) == "wf.workflow.yaml:1:1: the top level must be a mapping, got list"


# ---- API bodies: no line numbers -------------------------------------------------------------------


def test_normalize_json_body_error_has_no_line() -> None:
    body = {
        "id": "api-wf",
        "start": "a",
        "states": [{"name": "a", "type": "operation", "action": "agent.run", "input": {"agent": 7}, "end": True}],
    }
    with pytest.raises(DefinitionError) as info:
        normalize_definition(body, source="api")
    problem = only(info.value.problems)
    assert problem.line is None
    assert str(problem) == "api: states[0].input.agent: must be a non-empty string, got number"
    restored = pickle.loads(pickle.dumps(info.value))
    assert restored.problems == info.value.problems


def test_normalize_json_body_ok_and_input_untouched() -> None:
    body = {"id": "api-wf", "start": "a", "states": [{"name": "a", "type": "inject", "data": {"x": [1]}, "end": True}]}
    snapshot = json.dumps(body)
    defn = normalize_definition(body)
    assert defn["states"]["a"]["data"] == {"x": [1]}
    defn["states"]["a"]["data"]["x"].append(2)
    assert json.dumps(body) == snapshot


def test_problem_without_file() -> None:
    assert str(Problem(None, 3, "states[0]", "bad")) == "line 3: states[0]: bad"
    assert str(Problem(None, None, "", "bad")) == "bad"
