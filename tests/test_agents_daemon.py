"""Through the real daemon: a workflow whose steps call `openai/` agents served by the fake LLM."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Daemon
from tests.fake_llm import FakeLLM, running_llm

SUMMARIZER = """---
model: openai/tiny
metadata:
  name: summarizer
input:
  schema:
    type: object
    properties:
      text: { type: string }
    required: [text]
output:
  schema:
    type: object
    properties:
      summary: { type: string }
    required: [summary]
---
Summarize: {{text}}
"""

TRIAGE = """---
model: openai/tiny
metadata:
  name: triage
input:
  schema:
    summary: string
output:
  schema:
    severity(enum): [low, high]
---
Rate: {{summary}}
"""

WORKFLOW = """
id: incident
version: "1.0"
inputSchema:
  type: object
  properties: { log: { type: string } }
  required: [log]
start: summarize
states:
  - name: summarize
    type: operation
    action: agent.run
    input:
      agent: summarizer
      task: "Summarize the incident"
      variables: { text: "{{ log }}" }
    next: rate
  - name: rate
    type: agent
    agent: triage
    prompt: "How bad is it?"
    input: { summary: "{{ steps.summarize.summary }}" }
    resultPath: verdict
    end: true
"""


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with running_llm() as server:
        yield server


def test_workflow_with_openai_agents_completes(daemon: Daemon, llm: FakeLLM) -> None:
    (daemon.agents_dir / "summarizer.prompt").write_text(SUMMARIZER)
    (daemon.agents_dir / "triage.prompt").write_text(TRIAGE)
    daemon.add_workflow("incident", WORKFLOW)
    daemon.env["OPENAI_BASE_URL"] = llm.base_url
    llm.answer({"summary": "disk full on db-1"}, {"severity": "high"})
    daemon.start()
    try:
        run = daemon.start_run("incident", {"log": "ERROR db-1: no space left on device"})
        done = daemon.wait_status(run["id"], "COMPLETED")
        context = done["context"]
        assert context["steps"]["summarize"] == {"summary": "disk full on db-1"}
        assert context["verdict"] == {"severity": "high"}
    finally:
        daemon.stop()
    first, second = llm.requests
    assert first.messages("system") == ["Summarize: ERROR db-1: no space left on device"]
    assert first.messages("user") == ["Summarize the incident"]
    assert second.messages("system") == ["Rate: disk full on db-1"]
    assert second.body["response_format"]["json_schema"]["schema"]["properties"]["severity"]["enum"] == ["low", "high"]
    keys = [r.headers.get("Idempotency-Key") for r in llm.requests]
    assert all(keys) and keys[0] != keys[1]


RETRYING = """
id: retrying
start: summarize
states:
  - name: summarize
    type: operation
    action: agent.run
    input:
      agent: summarizer
      task: "Summarize"
      variables: { text: "{{ log }}" }
    retry: { maxAttempts: 2, backoffSeconds: 0.1 }
    end: true
"""


def test_invalid_output_is_retried_then_fails(daemon: Daemon, llm: FakeLLM) -> None:
    (daemon.agents_dir / "summarizer.prompt").write_text(SUMMARIZER)
    daemon.add_workflow("retrying", RETRYING)
    daemon.env["OPENAI_BASE_URL"] = llm.base_url
    llm.answer({"summary": 42}, "no JSON here")
    daemon.start()
    try:
        run = daemon.start_run("retrying", {"log": "x"})
        done = daemon.wait_status(run["id"], "FAILED")
    finally:
        daemon.stop()
    attempts = [s for s in done["steps"] if s["stateName"] == "summarize"]
    assert [s["attempt"] for s in attempts] == [1, 2]
    assert all(s["error"]["type"] == "validation" for s in attempts)
    keys = [r.headers["Idempotency-Key"] for r in llm.requests]
    assert keys == [attempts[0]["idempotencyKey"], attempts[1]["idempotencyKey"]] and keys[0] != keys[1]
