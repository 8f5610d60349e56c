"""The tool loop in-process (AgentRunExecutor over a real stdio MCP server and the fake model), for what
the model can get wrong: an unknown tool, arguments that are not JSON, too many calls in one turn, and
agent files whose tools cannot work. Each is told to the model or fails the step clearly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from station_wf.agents.catalog import AgentCatalog
from station_wf.agents.executor import AgentRunExecutor
from station_wf.agents.tool_loop import MAX_CALLS_PER_TURN
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
