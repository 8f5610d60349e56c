"""The MCP servers of an environment as its files say (station_wf/mcp/servers.py), and the agent
file's `tools:`/`max_steps:` checks: every bad input is an error naming the file and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from station_wf.agents.catalog import AgentFileError, parse_agent_text
from station_wf.agents.toolbox import agent_key, function_name
from station_wf.mcp.servers import McpConfigError, load_servers


def _env(tmp_path: Path, template: object | None = None, variables: str | None = None,
         files: dict[str, object] | None = None) -> Path:
    env = tmp_path / "env"
    env.mkdir(exist_ok=True)
    if template is not None:
        (env / "template.json").write_text(template if isinstance(template, str) else json.dumps(template))
    if variables is not None:
        (env / "variables.yml").write_text(variables)
    for name, body in (files or {}).items():
        (env / "mcp-servers").mkdir(exist_ok=True)
        (env / "mcp-servers" / name).write_text(body if isinstance(body, str) else json.dumps(body))
    return env


def test_template_and_server_files_with_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFANA_TOKEN", "from-env")
    env = _env(tmp_path, {"name": "x", "mcpServers": {"k8s": {
        "command": "kubectl-mcp", "args": ["--region", "{{ .AWS_REGION }}", 3], "env": {"CLUSTER": "{{CLUSTER}}"}}}},
        'AWS_REGION: "us-east-1"\nCLUSTER: prod\n',
        {"grafana.json": {"url": "https://grafana.example/mcp", "headers": {"Authorization": "Bearer {{ .GRAFANA_TOKEN }}"}},
         "more.json": {"mcpServers": {"git": {"command": "git-mcp", "cwd": "."}}}})
    servers = load_servers(env)
    assert sorted(servers) == ["git", "grafana", "k8s"]
    assert servers["k8s"].args == ("--region", "us-east-1", "3") and servers["k8s"].env == {"CLUSTER": "prod"}
    assert servers["k8s"].transport == "stdio" and servers["grafana"].transport == "http"
    assert servers["grafana"].headers == {"Authorization": "Bearer from-env"}  # the daemon's environment
    assert servers["git"].cwd == str(env.resolve())
    before = servers["k8s"].fingerprint
    (env / "variables.yml").write_text('AWS_REGION: "eu-west-1"\nCLUSTER: prod\n')
    assert load_servers(env)["k8s"].fingerprint != before  # an edit restarts the server at its next use


@pytest.mark.parametrize(("template", "files", "message"), [
    ({"mcpServers": {"a": {"command": "x", "env": {"K": "{{ .MISSING_VAR_20 }}"}}}}, {}, "'MISSING_VAR_20'"),
    ({"mcpServers": {"a": {"command": "x", "url": "http://h/mcp"}}}, {}, "exactly one of 'command'"),
    ({"mcpServers": {"a": {"url": "ftp://h"}}}, {}, "mcpServers.a.url must be an http(s) URL"),
    ({"mcpServers": {"a": {"url": "http://h/sse", "type": "sse"}}}, {}, "only streamable HTTP"),
    ({"mcpServers": {"a": {"command": "x", "args": "not-a-list"}}}, {}, "mcpServers.a.args"),
    ({"mcpServers": {"bad name!": {"command": "x"}}}, {}, "a server name may contain only"),
    ({"mcpServers": ["x"]}, {}, "mcpServers must be an object"),
    ('{"mcpServers": {,}}', {}, "line 1 column"),
    ({"mcpServers": {"a": {"command": "x"}}}, {"a.json": {"command": "y"}}, "already defined in"),
])
def test_bad_definitions_name_the_file_and_field(tmp_path: Path, template: object, files: dict[str, object],
                                                 message: str) -> None:
    env = _env(tmp_path, template, files=files)
    with pytest.raises(McpConfigError) as err:
        load_servers(env)
    assert message in str(err.value) and str(env) in str(err.value)


def test_no_files_no_servers_and_a_bad_variables_file(tmp_path: Path) -> None:
    assert load_servers(_env(tmp_path)) == {}
    assert load_servers(_env(tmp_path, {"name": "no servers"})) == {}
    with pytest.raises(McpConfigError, match="variables.yml: must be a mapping"):
        load_servers(_env(tmp_path, {"mcpServers": {}}, "- a\n- b\n"))


AGENT = """---
model: openai/tiny
{front}
---
Hi.
"""


@pytest.mark.parametrize(("front", "message"), [
    ("tools: __get_pods", "a.prompt at line 3"),  # dotpromptz checks the field's type itself
    ("tools: [1, 2]", "a.prompt at line 3"),
    ("tools: ['  ']", "'tools' must be a list of tool names"),
    ("max_steps: 0", "'max_steps' must be an integer from 1 to 1000"),
    ("max_steps: many", "'max_steps' must be an integer"),
])
def test_agent_tools_and_max_steps_are_checked_at_load(front: str, message: str) -> None:
    with pytest.raises(AgentFileError, match=message):
        parse_agent_text(AGENT.format(front=front), "a.prompt")


def test_agent_tools_load_and_names_map() -> None:
    spec = parse_agent_text(AGENT.format(front='tools: ["__get_pods", "grafana/query", "__get_pods"]\nmax_steps: 3'),
                            "a.prompt")
    assert spec.tools == ("__get_pods", "grafana/query") and spec.max_steps == 3
    assert spec.to_dict()["tools"] == ["__get_pods", "grafana/query"] and spec.to_dict()["maxSteps"] == 3
    assert function_name("__get_pods") == "get_pods" and function_name("grafana/query") == "grafana__query"
    assert agent_key("Data Processor") == agent_key("data-processor") == "data_processor"
