"""Definition-load checks of agents: missing agents are errors, schema mismatches along static wiring warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from station_wf.agents.catalog import AgentCatalog
from station_wf.agents.flow_check import check_definition_agents
from station_wf.dsl.loader import load_definition_file, parse_definition

REPO = Path(__file__).resolve().parents[1]

EXTRACTOR = """---
model: openai/m
output:
  schema:
    type: object
    properties:
      count: { type: string }
      level: { type: string, enum: [low, high, extreme] }
      tags: { type: array, items: { type: string } }
      note: { type: string }
    required: [count, level, tags]
    additionalProperties: false
---
Extract.
"""

REPORTER = """---
model: openai/m
input:
  schema:
    type: object
    properties:
      count: { type: integer }
      level: { type: string, enum: [low, high] }
      tags: { type: array, items: { type: string } }
      note: { type: string }
      missing: { type: string }
      region: { type: string }
    required: [count, note, region]
---
Report.
"""


@pytest.fixture
def catalog(tmp_path: Path) -> AgentCatalog:
    agents = tmp_path / "default" / "agents"
    agents.mkdir(parents=True)
    (agents / "extractor.prompt").write_text(EXTRACTOR)
    (agents / "reporter.prompt").write_text(REPORTER)
    return AgentCatalog(tmp_path, "default")


def flow(body: str) -> dict:
    return parse_definition("id: f\nstart: a\nstates:\n" + body)


WIRED = """
  - name: a
    type: operation
    action: agent.run
    input: { agent: extractor, task: go }
    next: b
  - name: b
    type: operation
    action: agent.run
    input:
      agent: reporter
      task: report
      variables:
        count: "{{ steps.a.count }}"
        level: "{{ steps.a.level }}"
        tags: "{{ steps.a.tags }}"
        note: "{{ steps.a.note }}"
        missing: "{{ steps.a.nothere }}"
        region: "eu-{{ steps.a.count }}"
    end: true
"""


def test_mismatched_schemas_warn_with_both_files_and_paths(catalog: AgentCatalog) -> None:
    errors, warnings = check_definition_agents(flow(WIRED), catalog)
    assert errors == []
    text = "\n".join(warnings)
    assert len(warnings) == 4, text
    count = next(w for w in warnings if "variables.count" in w)
    assert "extractor.prompt, output.schema.properties.count" in count
    assert "reporter.prompt, input.schema.properties.count" in count
    assert "count: produces string, needs integer" in count
    assert "state 'b'" in count and "state 'a'" in count
    level = next(w for w in warnings if "variables.level" in w)
    assert "['extreme']" in level
    note = next(w for w in warnings if "variables.note" in w)
    assert "output.schema.properties.note" in note and "'note' is optional in the output schema" in note
    missing = next(w for w in warnings if "variables.missing" in w)
    assert "no property 'nothere'" in missing
    # `tags` matches; `region` is a composed string, not static wiring: no warning for either
    assert not any("variables.tags" in w or "variables.region" in w for w in warnings)


def test_required_nested_properties_and_whole_result_wiring(tmp_path: Path) -> None:
    agents = tmp_path / "default" / "agents"
    agents.mkdir(parents=True)
    (agents / "a.prompt").write_text(
        "---\nmodel: openai/m\noutput:\n  schema:\n    type: object\n    properties:\n"
        "      user: {type: object, properties: {name: {type: string}}}\n---\nA\n")
    (agents / "b.prompt").write_text(
        "---\nmodel: openai/m\ninput:\n  schema:\n    type: object\n    properties:\n"
        "      who: {type: object, properties: {name: {type: string}, email: {type: string}},"
        " required: [name, email]}\n    required: [who]\n---\nB\n")
    defn = flow("""
  - {name: a, type: operation, action: agent.run, input: {agent: a}, resultPath: data.first, next: b}
  - {name: b, type: operation, action: agent.run, input: {agent: b, variables: {who: "{{ data.first.user }}"}}, end: true}
""")
    errors, warnings = check_definition_agents(defn, AgentCatalog(tmp_path, "default"))
    assert errors == []
    assert len(warnings) == 3, warnings
    assert any("'user' is optional in the output schema" in w for w in warnings)
    assert any("who.email: required, but the output schema does not declare it" in w for w in warnings)
    assert any("who.name: required, but optional in the output schema" in w for w in warnings)
    assert all("output.schema.properties.user" in w for w in warnings)


def test_missing_agent_is_an_error_naming_the_state(catalog: AgentCatalog) -> None:
    defn = flow("""
  - name: a
    type: parallel
    branches:
      - name: left
        states:
          - {name: ask, type: agent, agent: ghost, prompt: hi, end: true}
      - name: right
        states:
          - {name: ok, type: operation, action: agent.run, input: {agent: extractor}, end: true}
    next: b
  - {name: b, type: operation, action: agent.run, input: {agent: "reporter@elsewhere"}, next: c}
  - {name: c, type: operation, input: {task: agent.run, agent: phantom, agent_task: "do it"}, end: true}
""")
    errors, warnings = check_definition_agents(defn, catalog)
    assert len(errors) == 3, errors
    assert "state 'a.left.ask'" in errors[0] and "'ghost' not found" in errors[0]
    assert "'reporter@elsewhere' not found" in errors[1] and "elsewhere/agents" in errors[1]
    assert "state 'c'" in errors[2] and "'phantom' not found" in errors[2]


def test_static_variables_are_checked_against_the_input_schema(catalog: AgentCatalog) -> None:
    defn = flow("""
  - name: a
    type: operation
    action: agent.run
    input: {agent: reporter, variables: {count: "many", note: "{{ x }}"}}
    end: true
""")
    errors, warnings = check_definition_agents(defn, catalog)
    assert errors == []
    assert any("requires input.schema.properties.region" in w for w in warnings)
    assert any("variables.count = 'many'" in w and "is not of type 'integer'" in w for w in warnings)
    assert not any("variables.note" in w for w in warnings)


def test_compatible_wiring_and_dynamic_names_are_quiet(catalog: AgentCatalog) -> None:
    defn = flow("""
  - name: a
    type: operation
    action: agent.run
    input: { agent: extractor }
    next: b
  - name: b
    type: operation
    action: agent.run
    input:
      agent: reporter
      variables: { count: 3, note: "{{ steps.a.level }}", tags: "{{ steps.a.tags }}", region: eu }
    next: c
  - {name: c, type: operation, action: agent.run, input: {agent: "{{ which }}"}, end: true}
""")
    assert check_definition_agents(defn, catalog) == ([], [])


def test_example_environment_is_clean() -> None:
    catalog = AgentCatalog(REPO / "environments", "default")
    for file in sorted((REPO / "environments" / "default" / "workflows").glob("*.workflow.yaml")):
        assert check_definition_agents(load_definition_file(file), catalog) == ([], []), file


def test_summarizer_into_triage_is_compatible() -> None:
    catalog = AgentCatalog(REPO / "environments", "default")
    defn = flow("""
  - {name: a, type: operation, action: agent.run, input: {agent: summarizer, variables: {text: "{{ log }}"}}, next: b}
  - {name: b, type: operation, action: agent.run, input: {agent: triage, variables: {summary: "{{ steps.a.summary }}"}}, end: true}
""")
    assert check_definition_agents(defn, catalog) == ([], [])
    bad = flow("""
  - {name: a, type: operation, action: agent.run, input: {agent: summarizer, variables: {text: "{{ log }}"}}, next: b}
  - {name: b, type: operation, action: agent.run, input: {agent: triage, variables: {summary: "{{ steps.a.bullets }}"}}, end: true}
""")
    _, warnings = check_definition_agents(bad, catalog)
    assert len(warnings) == 1 and "produces array, needs string" in warnings[0]
    assert "summarizer.prompt, output.schema.properties.bullets" in warnings[0]
    assert "triage.prompt, input.schema.properties.summary" in warnings[0]
