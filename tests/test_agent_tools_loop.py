"""The tool loop in-process (AgentRunExecutor over a real stdio MCP server and the fake model), for what
the model can get wrong: an unknown tool, arguments that are not JSON, too many calls in one turn, and
agent files whose tools cannot work. Each is told to the model or fails the step clearly."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from station_wf.agents.catalog import AgentCatalog
from station_wf.agents.executor import AgentRunExecutor
from station_wf.agents.tool_loop import EXCERPT_CHARS, MAX_CALLS_PER_TURN
from station_wf.executors.base import StepCall, StepError
from tests.conftest import REPO
from tests.fake_llm import Reply, calls, running_llm, tool_call

OPS = """---
model: openai/tiny
tools: ["__get_pods", "get_pods", "ops/restart_pod"]
max_steps: 3
---
Work.
"""

HTTP_WITH_TOOLS = """---
endpoint: http://127.0.0.1:9/agents/x
tools: ["__get_pods"]
---
Remote.
"""

SELF = """---
model: openai/tiny
tools: ["__agent_selfish"]
---
Me.
"""

NO_TOOL = """---
model: openai/tiny
tools: ["__no_such_tool"]
---
Nothing.
"""

MISSING = """---
model: openai/tiny
tools: ["__no_such_tool", "__agent_nobody"]
---
Nothing.
"""


def _call(agent: str, n: int = 1) -> StepCall:
    return StepCall(run_id="run-1", step_id=f"s{n}", attempt=1, idempotency_key=f"run-1:s{n}:1", state_name="s",
                    action="agent.run", input={"agent": agent, "task": "go"}, timeout_seconds=30)


async def test_what_the_model_gets_wrong_is_told_to_it_and_bad_files_fail(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / "environments" / "default"
    (env / "agents").mkdir(parents=True)
    (env / "template.json").write_text(json.dumps({"mcpServers": {"ops": {
        "command": sys.executable, "args": ["-m", "tests.mcp_servers.ops_server"], "cwd": str(REPO)}}}))
    for name, text in {"ops": OPS, "remote": HTTP_WITH_TOOLS, "selfish": SELF, "missing": MISSING,
                       "no-tool": NO_TOOL}.items():
        (env / "agents" / f"{name}.prompt").write_text(text)
    executor = AgentRunExecutor(AgentCatalog(tmp_path / "environments", "default"))
    with running_llm() as llm:
        monkeypatch.setenv("OPENAI_BASE_URL", llm.base_url)
        try:
            no_args = Reply(content=None, tool_calls=[{"name": "get_pods", "arguments": {}}], finish_reason="tool_calls")
            llm.answer(calls(tool_call("drop_database")), no_args, "done")
            llm.default = lambda req: Reply(content="unused")
            result = await executor.execute(_call("ops"))
            assert result.output == {"response": "done"}
            unknown, missing_arg = result.metadata["toolCalls"]
            assert "unknown tool 'drop_database'" in unknown["error"] and "get_pods" in unknown["error"]
            assert missing_arg["error"] and "namespace" in missing_arg["error"]  # the server refused the call
            first = llm.requests[0]
            assert first.tool_names() == ["get_pods", "ops__restart_pod"]  # two spellings of get_pods, one function
            told = [m for m in llm.requests[1].body["messages"] if m["role"] == "tool"]
            assistant = [m for m in llm.requests[1].body["messages"] if m["role"] == "assistant"]
            assert told[0]["tool_call_id"] == assistant[0]["tool_calls"][0]["id"] and told[0]["content"].startswith("error:")

            llm.answer(calls(*[tool_call("get_pods", {"namespace": "x"})] * (MAX_CALLS_PER_TURN + 1)))
            with pytest.raises(StepError, match=f"at most {MAX_CALLS_PER_TURN}"):
                await executor.execute(_call("ops", 2))

            for agent, message, kind in [("remote", "need an OpenAI-compatible model", "validation"),
                                         ("selfish", "is the agent itself", "validation"),
                                         ("missing", "no agent of environment 'default' is named so", "validation"),
                                         ("no-tool", r"none of the MCP servers .* offers 'no_such_tool' \(servers: ops\)",
                                          "validation")]:
                before = len(llm.requests)
                with pytest.raises(StepError, match=message) as err:
                    await executor.execute(_call(agent, 3))
                assert err.value.type == kind and len(llm.requests) == before  # the model is never asked
        finally:
            await executor.close()


WHO = """---
model: openai/tiny
tools: ["__whoami", "__get_pods"]
max_steps: 4
---
Who.
"""


def _env(tmp_path: Path, agents: dict[str, str]) -> AgentRunExecutor:
    env = tmp_path / "environments" / "default"
    (env / "agents").mkdir(parents=True)
    (env / "template.json").write_text(json.dumps({"mcpServers": {"ops": {
        "command": sys.executable, "args": ["-m", "tests.mcp_servers.ops_server"], "cwd": str(REPO)}}}))
    for name, text in agents.items():
        (env / "agents" / f"{name}.prompt").write_text(text)
    return AgentRunExecutor(AgentCatalog(tmp_path / "environments", "default"))


async def test_the_tool_call_key_names_the_call_not_only_its_place(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Review M2: a redelivered attempt whose model asks for another call at the same (turn, n) gets another
    key; the same call (arguments in any key order) gets the same key."""
    executor = _env(tmp_path, {"who": WHO})
    with running_llm() as llm:
        monkeypatch.setenv("OPENAI_BASE_URL", llm.base_url)
        try:
            keys = []
            for arguments in ({"namespace": "a", "x": 1}, {"x": 1, "namespace": "a"}, {"namespace": "b", "x": 1}):
                llm.answer(calls(tool_call("get_pods", arguments)), "done")
                result = await executor.execute(_call("who"))  # one step key: a redelivery of the attempt
                (entry,) = result.metadata["toolCalls"]
                keys.append(entry["idempotencyKey"])
            assert keys[0] == keys[1] != keys[2]
            assert all(k.startswith("run-1:s1:1:tool:who:1:0:") for k in keys)
            llm.answer(calls(tool_call("whoami")), "done")
            (entry,) = (await executor.execute(_call("who"))).metadata["toolCalls"]
            assert entry["idempotencyKey"] not in keys  # another tool at the same place
            assert json.loads(entry["excerpt"])["meta"]["io.station/idempotencyKey"] == entry["idempotencyKey"]
        finally:
            await executor.close()


async def test_what_a_call_tells_the_audit_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review M4: an error text of any size (here a model's 300 000-character tool name) reaches the audit, its
    events and SSE cut to the excerpt size."""
    executor = _env(tmp_path, {"who": WHO})
    with running_llm() as llm:
        monkeypatch.setenv("OPENAI_BASE_URL", llm.base_url)
        try:
            llm.answer(calls(tool_call("x" * 300_000)), "done")
            (entry,) = (await executor.execute(_call("who"))).metadata["toolCalls"]
            assert "unknown tool 'xxx" in entry["error"] and "characters in all" in entry["error"]
            assert len(entry["error"]) < EXCERPT_CHARS + 100 and len(entry["tool"]) < EXCERPT_CHARS + 100
            (told,) = [m for m in llm.requests[1].body["messages"] if m["role"] == "tool"]
            assert len(told["content"]) < 2000
        finally:
            await executor.close()


async def test_a_step_holds_bounded_conversations_and_tool_calls(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Review M5: past STATION_AGENT_MAX_TOOL_CALLS or STATION_AGENT_CONVERSATION_MAX_BYTES the step fails
    (agent_limit) with what it did so far, and the call past the limit is not run."""
    executor = _env(tmp_path, {"who": WHO, "boss": '---\nmodel: openai/tiny\ntools: ["__agent_who"]\n---\nBoss.\n'})
    executor.max_tool_calls = 2
    with running_llm() as llm:
        monkeypatch.setenv("OPENAI_BASE_URL", llm.base_url)
        try:
            llm.answer(calls(*[tool_call("get_pods", {"namespace": f"n{i}"}) for i in range(3)]))
            with pytest.raises(StepError, match="made 2 tool calls") as err:
                await executor.execute(_call("who"))
            assert err.value.type == "agent_limit" and err.value.details["limit"] == "tool_calls"
            assert [c["arguments"]["namespace"] for c in err.value.metadata["toolCalls"]] == ["n0", "n1"]

            with llm._lock:
                llm.script.clear()
            llm.answer(calls(tool_call("agent_who", {"task": "look"})),
                       calls(*[tool_call("get_pods", {"namespace": f"m{i}"}) for i in range(3)]))
            with pytest.raises(StepError, match="made 2 tool calls") as err:  # the limit is the step's, not a
                await executor.execute(_call("boss", 3))                     # failure the boss is told about
            assert err.value.metadata["agent"] == "boss" and len(err.value.metadata["toolCalls"]) == 2

            executor.max_tool_calls, executor.conversation_max_bytes = 256, 4000
            before = len(llm.requests)
            llm.answer(calls(tool_call("get_pods", {"namespace": "n" * 5000})))
            with pytest.raises(StepError, match="conversation reached .* STATION_AGENT_CONVERSATION_MAX_BYTES") as err:
                await executor.execute(_call("who", 2))
            assert err.value.type == "agent_limit" and "toolCalls" not in err.value.metadata  # nothing was run
            assert len(llm.requests) == before + 1
        finally:
            await executor.close()


async def test_stopping_a_server_keeps_the_callers_cancel_and_function_names_never_collide(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review L6: a caller cancelled while a server stops (a step waiting on a restart) stays cancelled; two
    different tools whose function names would be the same fail the step naming both."""
    server = {"command": sys.executable, "args": ["-m", "tests.mcp_servers.ops_server"], "cwd": str(REPO)}
    env = tmp_path / "environments" / "default"
    (env / "agents").mkdir(parents=True)
    (env / "template.json").write_text(json.dumps({"mcpServers": {"o.p": server, "o_p": server}}))
    (env / "agents" / "twins.prompt").write_text('---\nmodel: openai/tiny\ntools: ["o.p/get_pods", "o_p/get_pods"]\n'
                                                 '---\nTwins.\n')
    executor = AgentRunExecutor(AgentCatalog(tmp_path / "environments", "default"))
    with running_llm() as llm:
        monkeypatch.setenv("OPENAI_BASE_URL", llm.base_url)
        try:
            with pytest.raises(StepError, match=r"tools 'o.p/get_pods' and 'o_p/get_pods' .* 'o_p__get_pods'") as err:
                await executor.execute(_call("twins"))
            assert err.value.type == "validation" and not llm.requests  # the model is never asked

            handle = await executor.pool.handle("default", executor.pool.servers("default")["o.p"])
            stopping = asyncio.ensure_future(handle.stop())
            await asyncio.sleep(0.01)  # inside stop(), waiting on the server to go
            assert not stopping.done()
            stopping.cancel()
            with pytest.raises(asyncio.CancelledError):
                await stopping
        finally:
            await executor.close()
