"""agent.run against a real Chat Completions server on 127.0.0.1 (tests/fake_llm.py): what is sent,
what comes back, schema checks on both sides, idempotency keys, timeout and cancellation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from station_wf.agents.catalog import AgentCatalog
from station_wf.agents.executor import AgentRunExecutor
from station_wf.executors.base import StepCall, StepError, StepResult
from tests.conftest import AgentServer
from tests.fake_llm import FakeLLM, Reply, running_llm

SUMMARIZER = """---
model: openai/test-model
metadata:
  name: summarizer
config:
  temperature: 0.2
  maxOutputTokens: 300
input:
  schema:
    type: object
    properties:
      text: { type: string, minLength: 1 }
      maxBullets: { type: integer }
    required: [text]
output:
  schema:
    type: object
    properties:
      summary: { type: string }
      bullets: { type: array, items: { type: string } }
    required: [summary, bullets]
---
Summarize for {{audience}} in at most {{maxBullets}} bullets:
{{text}}
"""

CHATTY = """---
model: openai/chat-model
---
You are a pirate. Answer about {{topic}}.
"""

ROLES = """---
model: openai/roles-model
---
{{role "system"}}
You speak {{lang}}.
{{role "user"}}
Context: {{context}}
"""


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLM]:
    with running_llm() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        yield server


@pytest.fixture
def env_dir(tmp_path: Path) -> Path:
    agents = tmp_path / "environments" / "default" / "agents"
    agents.mkdir(parents=True)
    (agents / "summarizer.prompt").write_text(SUMMARIZER)
    (agents / "chatty.prompt").write_text(CHATTY)
    (agents / "roles.prompt").write_text(ROLES)
    return tmp_path / "environments"


@pytest.fixture
async def executor(env_dir: Path) -> AsyncIterator[AgentRunExecutor]:
    ex = AgentRunExecutor(AgentCatalog(env_dir, "default"))
    yield ex
    await ex.close()


def step(agent: str, task: Any = "Summarize the incident", variables: dict[str, Any] | None = None,
         attempt: int = 1, timeout: float | None = None) -> StepCall:
    return StepCall(
        run_id="run-1", step_id="step-a", attempt=attempt, idempotency_key=f"run-1:step-a:{attempt}",
        state_name="summarize", action="agent.run",
        input={"agent": agent, "task": task, "variables": variables if variables is not None else {}},
        timeout_seconds=timeout,
    )


GOOD = {"summary": "Disk full on db-1.", "bullets": ["disk at 100%", "writes failing"]}


async def test_rendered_prompt_response_format_and_headers_as_sent(executor: AgentRunExecutor, llm: FakeLLM) -> None:
    llm.answer(GOOD)
    result = await executor.execute(step("summarizer", variables={"text": "db-1 disk full", "maxBullets": 2,
                                                                  "audience": "SREs"}))
    [req] = llm.requests
    assert req.path == "/v1/chat/completions"
    assert req.headers["Idempotency-Key"] == "run-1:step-a:1"
    assert req.headers["Authorization"] == "Bearer sk-test"
    body = req.body
    assert body["model"] == "test-model"
    assert body["temperature"] == 0.2 and body["max_tokens"] == 300
    assert body["messages"] == [
        {"role": "system", "content": "Summarize for SREs in at most 2 bullets:\ndb-1 disk full"},
        {"role": "user", "content": "Summarize the incident"},
    ]
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "summarizer" and fmt["json_schema"]["strict"] is False
    assert fmt["json_schema"]["schema"]["required"] == ["summary", "bullets"]

    assert isinstance(result, StepResult)
    assert result.output == GOOD
    meta = result.metadata
    assert meta["provider"] == "openai" and meta["model"] == "test-model" and meta["agent"] == "summarizer"
    assert meta["agentHash"].startswith("sha256:")
    assert meta["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    assert isinstance(meta["latencyMs"], int) and meta["latencyMs"] >= 0
    assert meta["prompt"] == "Summarize for SREs in at most 2 bullets:\ndb-1 disk full"
    json.dumps(meta)  # stored with the step: must be JSON


async def test_json_in_a_code_fence_is_parsed(executor: AgentRunExecutor, llm: FakeLLM) -> None:
    llm.answer("```json\n" + json.dumps(GOOD) + "\n```")
    result = await executor.execute(step("summarizer", variables={"text": "x"}))
    assert result.output == GOOD


async def test_text_answer_without_output_schema_is_response(executor: AgentRunExecutor, llm: FakeLLM) -> None:
    llm.answer("Arr, the sea be wide.")
    result = await executor.execute(step("chatty", task="Tell me", variables={"topic": "the sea"}))
    assert result.output == {"response": "Arr, the sea be wide."}
    body = llm.requests[0].body
    assert "response_format" not in body
    assert body["messages"][0] == {"role": "system", "content": "You are a pirate. Answer about the sea."}


async def test_json_object_without_output_schema_is_structured(executor: AgentRunExecutor, llm: FakeLLM) -> None:
    llm.answer({"mood": "salty"}, "42")
    assert (await executor.execute(step("chatty", variables={"topic": "x"}))).output == {"mood": "salty"}
    assert (await executor.execute(step("chatty", variables={"topic": "x"}))).output == {"response": "42"}


async def test_explicit_roles_are_kept_and_the_task_appended(executor: AgentRunExecutor, llm: FakeLLM) -> None:
    llm.answer("oui")
    result = await executor.execute(step("roles", task="Say yes", variables={"lang": "French", "context": "tests"}))
    assert llm.requests[0].body["messages"] == [
        {"role": "system", "content": "You speak French."},
        {"role": "user", "content": "Context: tests"},
        {"role": "user", "content": "Say yes"},
    ]
    assert result.metadata["messages"] == llm.requests[0].body["messages"][:2] + [{"role": "user", "content": "Say yes"}]


async def test_without_task_the_prompt_is_the_user_turn(executor: AgentRunExecutor, llm: FakeLLM) -> None:
    llm.answer("ok")
    await executor.execute(step("chatty", task=None, variables={"topic": "rum"}))
    assert llm.requests[0].body["messages"] == [{"role": "user", "content": "You are a pirate. Answer about rum."}]


async def test_a_typed_task_is_sent_as_text(executor: AgentRunExecutor, llm: FakeLLM) -> None:
    llm.answer("a", "b")
    await executor.execute(step("chatty", task=7, variables={"topic": "x"}))  # "{{ item }}" keeps its type
    await executor.execute(step("chatty", task={"id": 1, "ok": True}, variables={"topic": "x"}))
    assert [r.messages("user") for r in llm.requests] == [["7"], ['{"id": 1, "ok": true}']]


async def test_invalid_output_is_a_validation_error_every_attempt(executor: AgentRunExecutor, llm: FakeLLM) -> None:
    llm.answer({"summary": 3}, "not json at all")
    with pytest.raises(StepError) as first:
        await executor.execute(step("summarizer", variables={"text": "x"}, attempt=1))
    assert first.value.type == "validation"
    assert first.value.details["schema"] == "output"
    assert any("summary" in e for e in first.value.details["errors"])
    assert first.value.metadata["usage"]["total_tokens"] == 18  # the failed call's cost is still recorded
    with pytest.raises(StepError) as second:  # the engine's retry: a new attempt, a new call
        await executor.execute(step("summarizer", variables={"text": "x"}, attempt=2))
    assert second.value.type == "validation" and "not JSON" in str(second.value)
    assert [r.headers["Idempotency-Key"] for r in llm.requests] == ["run-1:step-a:1", "run-1:step-a:2"]


async def test_input_schema_violation_never_reaches_the_server(executor: AgentRunExecutor, llm: FakeLLM) -> None:
    for bad in ({}, {"text": ""}, {"text": "x", "maxBullets": "three"}):
        with pytest.raises(StepError) as err:
            await executor.execute(step("summarizer", variables=bad))
        assert err.value.type == "validation" and err.value.details["schema"] == "input"
    assert llm.requests == []


async def test_idempotency_key_is_stable_across_a_redelivery(executor: AgentRunExecutor, llm: FakeLLM) -> None:
    llm.answer(GOOD, GOOD)
    call = step("summarizer", variables={"text": "x"}, attempt=3)
    await executor.execute(call)
    await executor.execute(call)  # the same attempt delivered again
    keys = [r.headers["Idempotency-Key"] for r in llm.wait_requests(2)]
    assert keys == ["run-1:step-a:3", "run-1:step-a:3"]


async def test_cancellation_closes_the_connection(executor: AgentRunExecutor, llm: FakeLLM) -> None:
    llm.answer(Reply(hold=True))
    task = asyncio.create_task(executor.execute(step("summarizer", variables={"text": "x"})))
    await asyncio.to_thread(llm.wait_requests, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(llm.requests[0].disconnected.wait, 5), "the server never saw the connection close"


async def test_worker_timeout_closes_the_connection(executor: AgentRunExecutor, llm: FakeLLM) -> None:
    llm.answer(Reply(hold=True))
    with pytest.raises(TimeoutError):  # exactly how the worker bounds a step
        await asyncio.wait_for(executor.execute(step("summarizer", variables={"text": "x"})), 0.5)
    assert await asyncio.to_thread(llm.requests[0].disconnected.wait, 5)


async def test_step_timeout_bounds_the_request_itself(executor: AgentRunExecutor, llm: FakeLLM) -> None:
    llm.answer(Reply(hold=True))
    with pytest.raises(StepError) as err:
        await executor.execute(step("summarizer", variables={"text": "x"}, timeout=0.5))
    assert err.value.type == "timeout"
    assert await asyncio.to_thread(llm.requests[0].disconnected.wait, 5)


async def test_http_error_carries_status_and_body(executor: AgentRunExecutor, llm: FakeLLM) -> None:
    llm.answer(Reply(status=429, error_body={"error": {"message": "slow down"}}))
    with pytest.raises(StepError) as err:
        await executor.execute(step("summarizer", variables={"text": "x"}))
    assert err.value.type == "agent_error"
    assert err.value.details["status"] == 429 and "slow down" in err.value.details["body"]


async def test_per_agent_base_url_and_key_env(env_dir: Path, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens there
    monkeypatch.setenv("MY_LLM_KEY", "k-123")
    (env_dir / "default" / "agents" / "local.prompt").write_text(
        f"---\nmodel: openai/m\nbaseUrl: {llm.base_url}\napiKeyEnv: MY_LLM_KEY\n---\nHi\n")
    ex = AgentRunExecutor(AgentCatalog(env_dir, "default"))
    try:
        llm.answer("hello")
        assert (await ex.execute(step("local"))).output == {"response": "hello"}
        assert llm.requests[0].headers["Authorization"] == "Bearer k-123"
        monkeypatch.delenv("MY_LLM_KEY")
        with pytest.raises(StepError) as err:
            await ex.execute(step("local"))
        assert "MY_LLM_KEY" in str(err.value) and len(llm.requests) == 1
    finally:
        await ex.close()


async def test_agent_at_env_looks_in_that_environment(env_dir: Path, executor: AgentRunExecutor, llm: FakeLLM) -> None:
    other = env_dir / "staging" / "agents"
    other.mkdir(parents=True)
    (other / "chatty.prompt").write_text(CHATTY.replace("openai/chat-model", "openai/staging-model"))
    llm.answer("a", "b")
    await executor.execute(step("chatty@staging", variables={"topic": "x"}))
    await executor.execute(step("chatty", variables={"topic": "x"}))
    assert [r.body["model"] for r in llm.requests] == ["staging-model", "chat-model"]
    for bad in ("chatty@nowhere", "chatty@../default", "ghost"):
        with pytest.raises(StepError) as err:
            await executor.execute(step(bad))
        assert err.value.type == "validation"


async def test_unknown_provider_and_broken_file_are_clear(env_dir: Path, executor: AgentRunExecutor) -> None:
    agents = env_dir / "default" / "agents"
    (agents / "gem.prompt").write_text("---\nmodel: vertexai/gemini\n---\nHi\n")
    (agents / "broken.prompt").write_text("---\nmodel: [unclosed\n---\nHi\n")
    with pytest.raises(StepError, match="no provider for model prefix 'vertexai'"):
        await executor.execute(step("gem"))
    with pytest.raises(StepError, match="does not load: .*broken.prompt at line 2"):
        await executor.execute(step("broken"))


async def test_edited_agent_file_is_picked_up(env_dir: Path, executor: AgentRunExecutor, llm: FakeLLM,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("station_wf.agents.catalog.STALE_CHECK_S", 0.0)
    llm.answer("a", "b")
    first = await executor.execute(step("chatty", variables={"topic": "x"}))
    path = env_dir / "default" / "agents" / "chatty.prompt"
    path.write_text(CHATTY.replace("You are a pirate.", "You are a parrot."))
    second = await executor.execute(step("chatty", variables={"topic": "x"}))
    assert first.metadata["agentHash"] != second.metadata["agentHash"]
    assert llm.requests[1].body["messages"][0]["content"].startswith("You are a parrot.")


async def test_http_endpoint_protocol_is_kept(env_dir: Path, agent_server: AgentServer) -> None:
    agents = env_dir / "default" / "agents"
    (agents / "greeter.prompt").write_text(
        f"---\nendpoint: {agent_server.url('greeter')}\ninput:\n  schema:\n    type: object\n"
        f"    properties: {{name: {{type: string}}}}\n    required: [name]\n"
        f"output:\n  schema:\n    type: object\n    required: [greeting]\n---\nGreet {{{{name}}}}\n")
    ex = AgentRunExecutor(AgentCatalog(env_dir, "default"))
    try:
        agent_server.behave("greeter", reply={"greeting": "Hello, Ada!"})
        call = step("greeter", task="say hi", variables={"name": "Ada"})
        result = await ex.execute(call)
        assert result.output == {"greeting": "Hello, Ada!"}
        assert result.metadata["provider"] == "http" and "prompt" not in result.metadata
        [sent] = agent_server.calls
        assert sent.idempotency_key == "run-1:step-a:1"
        assert sent.body == {"agent": "greeter", "task": "say hi", "input": call.input, "variables": {"name": "Ada"},
                             "runId": "run-1", "stepId": "step-a", "attempt": 1}
        await ex.execute(step("greeter", task=3, variables={"name": "Bo"}))
        assert agent_server.calls[-1].body["task"] == 3  # passed through with its type, as before
        with pytest.raises(StepError) as err:  # the input schema guards HTTP agents too
            await ex.execute(step("greeter", variables={}))
        assert err.value.type == "validation" and len(agent_server.calls) == 2
        agent_server.behave("greeter", reply={"nope": 1})
        with pytest.raises(StepError, match="output schema"):
            await ex.execute(call)
        agent_server.behave("greeter", status=503, reply={"busy": True})
        with pytest.raises(StepError) as err:
            await ex.execute(call)
        assert err.value.details["status"] == 503 and "busy" in err.value.details["body"]
    finally:
        await ex.close()


def test_example_agents_load_and_render() -> None:
    catalog = AgentCatalog(Path(__file__).resolve().parents[1] / "environments", "default")
    assert catalog.errors == []
    models = {spec.name: spec.model for spec in catalog.all()}
    assert sum(1 for m in models.values() if m and m.startswith("openai/")) >= 2
    triage = catalog.get("triage")
    assert triage is not None and triage.output_schema is not None
    assert triage.output_schema["properties"]["severity"]["enum"] == ["low", "medium", "high", "critical"]
    assert triage.input_schema is not None and triage.input_schema["required"] == ["summary"]
