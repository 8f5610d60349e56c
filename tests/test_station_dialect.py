"""Station's dialect, field by field: the loader's rewrite and the data flow, through the real interpreter.

`Replay` (tests/test_interpreter.py) applies transitions the way the SQLite shell does, so each field's
run-time meaning is checked without a daemon; tests/test_station_daemon.py runs the shared examples
end to end.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest

from station_wf.core import history, model
from station_wf.dsl.loader import normalize_definition, parse_definition
from station_wf.dsl.problems import DefinitionError
from station_wf.dsl.station import decide_dialect, path_template, rewrite_literals
from tests.test_interpreter import Replay


def load(text: str, source: str = "wf.workflow.yaml") -> Any:
    return parse_definition(textwrap.dedent(text), source)


def run(text: str, run_input: dict[str, Any] | None = None, replies: dict[str, Any] | None = None,
        seen: list[tuple[str, dict[str, Any]]] | None = None) -> Replay:
    replies = replies or {}

    def execute(name: str, inp: dict[str, Any], attempt: int) -> Any:
        if seen is not None:
            seen.append((name, inp))
        reply = replies.get(name, {"from": name})
        if isinstance(reply, Exception):
            raise reply
        return reply(attempt) if callable(reply) else reply

    return Replay(load(text), run_input, execute).run()


# ---- the dialect ---------------------------------------------------------------------------------


def test_dialect_is_decided_and_explained() -> None:
    assert decide_dialect({"states": [{"name": "a", "type": "operation", "action": "agent.run"}]})[0] == "prd"
    assert decide_dialect({"states": [{"id": "a", "type": "inject"}]}) == ("station", "'id:' at states[0]")
    assert decide_dialect({"outputSchema": {}, "states": []})[0] == "station"
    assert decide_dialect({"workflowId": "x", "definition": {}})[0] == "station"
    assert decide_dialect({"dialect": "prd", "states": [{"id": "a"}]})[0] == "prd"
    defn = load("""\
        id: w
        start: a
        states:
          - {name: a, type: inject, data: {}, transition: b}
          - {name: b, type: inject, data: {}, end: true}
        """)
    assert defn.dialect == "station" and defn.dialect_reason == "'transition:' at states[0] (line 4)"
    assert defn["dialect"] == "station"
    prd = load("id: w\nstart: a\nstates:\n  - {name: a, type: inject, data: {}, end: true}\n")
    assert prd.dialect == "prd" and "dialect" not in prd  # the PRD's normalized form is unchanged


def test_prd_dialect_keeps_strict_unknown_keys() -> None:
    with pytest.raises(DefinitionError, match="unknown key 'colour'"):
        load("id: w\nstart: a\nstates:\n  - {name: a, type: inject, data: {}, end: true, colour: red}\n")


def test_station_ignored_key_is_a_warning_with_line_and_did_you_mean() -> None:
    defn = load("""\
        id: w
        start: a
        states:
          - id: a
            type: inject
            data: {x: 1}
            resutlPath: here
            transition: b
          - {id: b, type: inject, data: {}, end: true, colour: red}
        """)
    warnings = [str(w) for w in defn.warnings]
    assert warnings[0].startswith("wf.workflow.yaml:7:5: states[0].resutlPath: warning: unknown key 'resutlPath'")
    assert "did you mean 'resultPath'?" in warnings[0]
    assert warnings[1].startswith("wf.workflow.yaml:9:")
    assert "colour" in warnings[1]


def test_errors_stay_errors_for_what_cannot_run() -> None:
    with pytest.raises(DefinitionError, match="unknown state 'nowhere'"):
        load("id: w\nstart: a\nstates:\n  - {id: a, type: inject, data: {}, transition: nowhere}\n")
    with pytest.raises(DefinitionError, match="Starlark syntax error"):
        load("id: w\nstart: a\nstates:\n  - {id: a, type: transform, expression: 'x +', end: true}\n")


def test_names_that_can_never_resolve_are_warned() -> None:
    defn = load("""\
        id: w
        inputSchema: {type: object, properties: {service_name: {type: string}}}
        start: a
        states:
          - {id: a, type: agent, agent: x, task: "check {{ service_nme }} {{ service_name }}", transition: b}
          - {id: b, type: transform, expression: "a.ok", end: true}
        """)
    warnings = [str(w) for w in defn.warnings]
    assert len(warnings) == 1 and "name 'service_nme'" in warnings[0] and "did you mean 'service_name'?" in warnings[0]
    assert warnings[0].startswith("wf.workflow.yaml:5:")


# ---- expressions -------------------------------------------------------------------------------------


def test_true_false_null_are_python_literals_in_expressions() -> None:
    assert rewrite_literals('x == true and y != null or "true" == z.true') == 'x == True and y != None or "true" == z.true'
    r = run("""\
        id: w
        start: pick
        states:
          - id: pick
            type: switch
            conditions:
              - {if: "false", next: nope}
              - {if: true, next: yep}
          - {id: nope, type: inject, data: {took: no}, end: true}
          - {id: yep, type: transform, expression: "{'took': 'yes', 'n': null, 't': true}", end: true}
        """)
    assert r.status == model.COMPLETED and r.context["yep"] == {"took": "yes", "n": None, "t": True}


def test_transform_last_expression_is_its_output() -> None:
    r = run("""\
        id: w
        start: t
        states:
          - id: t
            type: transform
            expression: |
              # comments and assignments, as in Station's docs
              report = {"service": getattr(input, "service_name", "unknown")}
              report
            end: true
        """, {"service_name": "api"})
    assert r.status == model.COMPLETED and r.context["t"] == {"service": "api"}


# ---- data flow -------------------------------------------------------------------------------------


def test_every_output_is_at_steps_id_output_and_at_id_and_input_is_the_previous_output() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    r = run("""\
        id: w
        start: first
        states:
          - {id: first, type: agent, agent: a1, transition: second}
          - {id: second, type: transform, expression: "{'pods': input.pods, 'again': steps.first.output.pods, 'top': first.pods}", transition: third}
          - {id: third, type: agent, agent: a2, task: "count {{ input.pods }}", end: true}
        """, {"task": "investigate", "ns": "prod"}, {"first": {"pods": 3}}, seen)
    assert r.status == model.COMPLETED
    assert seen[0] == ("first", {"agent": "a1", "task": "investigate", "variables": {"task": "investigate", "ns": "prod"}})
    assert r.context["steps"]["first"] == {"output": {"pods": 3}} and r.context["first"] == {"pods": 3}
    assert r.context["second"] == {"pods": 3, "again": 3, "top": 3}
    assert seen[1][1]["task"] == "count 3"
    assert history.rebuild_context([(k, p) for k, p, _ in r.events]) == r.context


def test_output_map_and_input_map_with_dollar_paths() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    r = run("""\
        id: w
        start: look
        states:
          - id: look
            type: agent
            agent: logs
            input:
              service: "$.input.service_name"
              window: 60
            output:
              log_analysis: "$.result"
              severity: "$.result.severity"
              missing: "$.result.nope"
            transition: use
          - id: use
            type: agent
            agent: next
            input: {sev: "$.severity", whole: "$.log_analysis.summary"}
            end: true
        """, {"service_name": "api"}, {"look": {"severity": "high", "summary": "oom"}}, seen)
    assert r.status == model.COMPLETED
    assert seen[0][1]["variables"] == {"service": "api", "window": 60}
    assert r.context["log_analysis"] == {"severity": "high", "summary": "oom"} and r.context["severity"] == "high"
    assert "missing" not in r.context  # Station skips a mapping that does not resolve
    assert seen[1][1]["variables"] == {"sev": "high", "whole": "oom"}
    assert path_template("$.steps.check-pods.output") == "{{ ctx.steps['check-pods'].output }}"


def test_input_path_and_output_path() -> None:
    r = run("""\
        id: w
        start: a
        states:
          - {id: a, type: agent, agent: x, outputPath: "$.data.inner", transition: b}
          - {id: b, type: transform, inputPath: "$.deep", expression: "input.v * 2", end: true}
        """, {}, {"a": {"data": {"inner": {"deep": {"v": 21}}}}})
    assert r.status == model.COMPLETED
    assert r.context["a"] == {"deep": {"v": 21}} and r.context["b"] == 42


def test_result_path_under_steps_is_also_a_step_slot() -> None:
    r = run("""\
        id: w
        start: x
        states:
          - {id: x, type: transform, expression: "{'n': 1}", resultPath: steps.extract, next: y}
          - {id: y, type: transform, expression: "ctx.steps.extract.output.n + steps.extract.n", end: true}
        """)
    assert r.status == model.COMPLETED and r.context["y"] == 2


# ---- parallel and foreach -------------------------------------------------------------------------


def test_parallel_branch_that_is_one_agent_call_and_merge_aggregation() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    r = run("""\
        id: w
        start: fan
        states:
          - id: fan
            type: parallel
            branches:
              - {name: kubernetes, agent: k8s-investigator}
              - {name: logs, agent: log-analyzer}
            outputAggregation: merge
            output: {investigation: "$.branches"}
            end: true
        """, {"task": "look"}, {"kubernetes": {"pods": 1}, "logs": {"lines": 2}}, seen)
    assert r.status == model.COMPLETED
    assert sorted(a["agent"] for _, a in seen) == ["k8s-investigator", "log-analyzer"]
    assert all(a["task"] == "look" for _, a in seen)
    assert r.context["fan"] == {"kubernetes": {"pods": 1}, "logs": {"lines": 2}}
    assert r.context["investigation"] == r.context["fan"]


def test_parallel_array_aggregation() -> None:
    r = run("""\
        id: w
        start: fan
        states:
          - id: fan
            type: parallel
            branches:
              - {name: a, agent: one}
              - {name: b, agent: two}
            outputAggregation: array
            end: true
        """, {}, {"a": {"v": 1}, "b": {"v": 2}})
    assert r.context["fan"] == {"results": [{"v": 1}, {"v": 2}]}


def test_foreach_with_agent_directly_and_item_variable() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    r = run("""\
        id: w
        start: each
        states:
          - id: each
            type: foreach
            itemsPath: "$.services"
            itemVariable: svc
            agent: health-checker
            task: "check {{ svc.name }}"
            maxConcurrency: 2
            output: {all_results: "$.iterations"}
            end: true
        """, {"services": [{"name": "api"}, {"name": "db"}]}, {"call": lambda attempt: {"ok": True}}, seen)
    assert r.status == model.COMPLETED
    assert sorted(a["task"] for _, a in seen) == ["check api", "check db"]
    assert r.context["each"] == {"results": [{"ok": True}, {"ok": True}], "count": 2}
    assert r.context["all_results"] == r.context["each"]["results"]


def test_foreach_merge_aggregation() -> None:
    r = run("""\
        id: w
        start: each
        states:
          - id: each
            type: foreach
            itemsPath: items
            itemName: it
            outputAggregation: merge
            iterator:
              states:
                - {id: one, type: transform, expression: "{it: _index}", end: true}
            end: true
        """, {"items": ["a", "b"]})
    assert r.status == model.COMPLETED and r.context["each"] == {"a": 0, "b": 1}


# ---- agent step shorthands ---------------------------------------------------------------------------


def test_operation_agent_run_and_agent_task_spellings() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    r = run("""\
        id: w
        start: a
        states:
          - {id: a, type: operation, operation: agent.run, input: {agent: x, agent_task: "one"}, transition: b}
          - {id: b, type: operation, input: {task: agent.run, agent: y, agentTask: "two"}, transition: c}
          - {id: c, type: agent, agent: z, agentTask: "three", transition: d}
          - {name: d, type: operation, operation: agent.run, input: {agent: w, task: "four"}, end: true}
        """, {}, {}, seen)
    assert r.status == model.COMPLETED
    assert [(a["agent"], a["task"]) for _, a in seen] == [("x", "one"), ("y", "two"), ("z", "three"), ("w", "four")]


def test_timeout_and_retry_max_attempts_backoff_retry_on() -> None:
    defn = load("""\
        id: w
        start: a
        states:
          - id: a
            type: agent
            agent: x
            timeout: 2m
            retry: {max_attempts: 3, backoff: fixed, retry_on: [timeout]}
            end: true
        """)
    state = defn["states"]["a"]
    assert state["timeoutSeconds"] == 120
    assert state["retry"]["maxAttempts"] == 3 and state["retry"]["backoffRate"] == 1
    assert state["dataflow"]["retryOn"] == ["timeout"]
    text = json.dumps({"id": "w", "start": "a", "states": [
        {"id": "a", "type": "agent", "agent": "x", "retry": {"max_attempts": 3, "retry_on": ["timeout"]}, "end": True}]})
    calls: list[int] = []

    def flaky(kind: str) -> Any:
        def execute(name: str, inp: dict[str, Any], attempt: int) -> Any:
            calls.append(attempt)
            if attempt == 1:
                raise RuntimeError(kind)
            return {"ok": attempt}
        return execute

    r = Replay(parse_definition(text), {}, flaky("boom")).run()
    assert r.status == model.FAILED and calls == [1]  # agent_error is not in retry_on: not retried
    retried = parse_definition(text.replace('"timeout"', '"agent_error"'))
    calls.clear()
    assert Replay(retried, {}, flaky("boom")).run().status == model.COMPLETED and calls == [1, 2]


def test_approval_title_and_timeout_on_human_approval() -> None:
    defn = load("""\
        id: w
        start: ask
        states:
          - id: ask
            type: human_approval
            approval_title: "Rollback Approval Required"
            message: "Roll back {{ service }}?"
            approvers: [oncall-sre]
            timeout: 30m
            end: true
        """)
    payload = defn["states"]["ask"]["input"]
    assert payload["message"] == "Rollback Approval Required\n\nRoll back {{ service }}?"
    assert payload["timeoutSeconds"] == 1800 and payload["approvers"] == ["oncall-sre"]


def test_cron_timezone_enabled() -> None:
    defn = load("""\
        id: w
        start: tick
        states:
          - {id: tick, type: cron, cron: "0 9 * * 1-5", timezone: "Europe/Paris", enabled: false, input: {k: 1}, transition: go}
          - {id: go, type: inject, data: {}, end: true}
        """)
    assert defn["schedules"] == [{"cron": "0 9 * * 1-5", "timezone": "Europe/Paris", "enabled": False, "input": {"k": 1}}]
    assert defn["start"] == "go"


# ---- outputSchema -------------------------------------------------------------------------------------


OUTPUT_SCHEMA = """\
    id: w
    outputSchema:
      type: object
      required: [root_cause]
      properties: {root_cause: {type: string}}
    start: a
    states:
      - {id: a, type: agent, agent: x, end: true}
    """


def test_output_schema_passes_when_the_final_output_matches() -> None:
    r = run(OUTPUT_SCHEMA, {}, {"a": {"root_cause": "oom"}})
    assert r.status == model.COMPLETED


def test_output_schema_fails_the_run_with_a_clear_error() -> None:
    r = run(OUTPUT_SCHEMA, {}, {"a": {"root_cause": 7}})
    assert r.status == model.FAILED and r.error["type"] == "output_schema"
    assert "does not match its outputSchema at root_cause" in r.error["message"]
    assert "7 is not of type 'string'" in r.error["message"]


# ---- the API-payload form -----------------------------------------------------------------------------


def test_api_payload_form_loads_from_text_and_from_a_body() -> None:
    body = {"workflowId": "payload-wf", "name": "Payload", "description": "d",
            "definition": {"start": "a", "states": [{"id": "a", "type": "inject", "data": {"x": 1}, "end": True}]}}
    from_text = parse_definition(json.dumps(body, indent=2), "p.workflow.json")
    assert from_text["id"] == "payload-wf" and from_text["name"] == "Payload" and from_text["description"] == "d"
    assert from_text.dialect_reason.startswith("Station's API-payload form")
    from_body = normalize_definition(body)
    assert from_body["id"] == "payload-wf" and list(from_body["states"]) == ["a"]
    with pytest.raises(DefinitionError) as info:
        parse_definition(json.dumps({**body, "definition": {"start": "a", "states": [
            {"id": "a", "type": "inject", "data": {}, "transition": "zz"}]}}, indent=2), "p.workflow.json")
    assert str(info.value.problems[0]).startswith("p.workflow.json:")  # lines still point into the file


def test_transform_program_with_top_level_for_and_if() -> None:
    """Station's multi-service-health summary: a `for` loop at the top, the last expression the output."""
    r = run("""\
        id: w
        start: summarize
        states:
          - id: summarize
            type: transform
            expression: |
              healthy = 0
              unhealthy = 0
              results = []
              for item in all_results:
                  if hasattr(item, "health") and item.health.status == "healthy":
                      healthy = healthy + 1
                  else:
                      unhealthy = unhealthy + 1
                  results.append({"service": item.service.name, "status": getattr(item.health, "status", "unknown")})
              {"total_services": len(all_results), "healthy_count": healthy, "unhealthy_count": unhealthy,
               "details": results}
            end: true
        """, {"all_results": [{"service": {"name": "api"}, "health": {"status": "healthy"}},
                              {"service": {"name": "db"}, "health": {"status": "degraded"}}]})
    assert r.status == model.COMPLETED, r.error
    assert r.context["summarize"] == {"total_services": 2, "healthy_count": 1, "unhealthy_count": 1,
                                      "details": [{"service": "api", "status": "healthy"},
                                                  {"service": "db", "status": "degraded"}]}
    with pytest.raises(DefinitionError, match="cannot be used outside"):  # the PRD keeps one expression
        load("id: w\nstart: t\nstates:\n  - name: t\n    type: transform\n    expression: |\n"
             "      for x in []:\n          pass\n      1\n    end: true\n")
