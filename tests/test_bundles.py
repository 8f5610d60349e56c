"""Bundles through the real CLI and a real daemon: create -> install -> re-install (idempotent) ->
upgrade, the bundle and its workflow versions in `GET /api/v1/bundles`, an invalid bundle that changes
nothing (files or database), Station's own bundle layout (template.json with mcpServers, Station
agents, variables.yml), an archive escaping its folder, and a file that is not the bundle's."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from station_wf.integrations.bundles import BundleError, Installed
from station_wf.integrations.bundles import install as install_bundle
from tests.conftest import Daemon

HELLO = """\
id: b_hello
start: a
states:
  - {name: a, type: inject, data: {greeting: "hi"}, next: ask}
  - name: ask
    type: switch
    conditions: [{if: "greeting == 'hi'", next: done}]
    defaultNext: done
  - {name: done, type: inject, data: {done: true}, end: true}
"""
USES_AGENT = """\
id: b_triage
start: triage
states:
  - name: triage
    type: operation
    action: agent.run
    input: {agent: b-triager, task: "triage {{ service }}"}
    end: true
"""
GONE = "id: b_gone\nstart: a\nstates:\n  - {name: a, type: inject, data: {}, end: true}\n"
AGENT = "---\nmetadata:\n  name: b-triager\nendpoint: http://127.0.0.1:9/agents/b-triager\n---\nTriage it.\n"

STATION_AGENT = """\
---
metadata:
  name: "Cost Inventory"
  description: "Catalogs services and tags"
  tags: ["finops", "inventory"]
model: gpt-4o-mini
max_steps: 10
app: "finops"
app_type: "inventory"
output:
  format: json
  schema:
    type: object
    required: ["items"]
    properties:
      items: {type: array, items: {type: object}}
tools:
  - "__get_cost_and_usage"
---

{{role "system"}}
You catalog cloud resources.

{{role "user"}}
{{userInput}}
"""
STATION_FLOW = """\
id: st-inventory
name: Inventory
start: collect
states:
  - id: collect
    type: agent
    agent: cost-inventory
    task: "Inventory for {{ account }}"
    transition: done
  - id: done
    type: transform
    expression: "{'count': 1}"
    end: true
"""


def install(d: Daemon, src: Path) -> Installed:
    """The installer in this process (what `bundle install` runs; the CLI itself is tested below)."""
    target = d.process_env().get("STATION_DATABASE_URL") or d.data_dir / "station-wf.db"
    return install_bundle(src, d.root / "environments", "default", target)


def refused(d: Daemon, src: Path) -> str:
    with pytest.raises(BundleError) as caught:
        install(d, src)
    return "\n".join(caught.value.problems)


def cli(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "station_wf.cli", *args], env=d.process_env(), cwd=d.root,
                          capture_output=True, text=True, timeout=60)


def write_bundle(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def bundles(d: Daemon, **params: str) -> list[dict[str, Any]]:
    resp = d.request("GET", "/api/v1/bundles", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()["bundles"]


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("bundles")
    (root / "environments" / "default" / "agents").mkdir(parents=True)
    daemon = Daemon(root, None, {})
    daemon.add_workflow("own", GONE.replace("b_gone", "own_flow"))
    yield daemon
    if daemon.proc is not None and daemon.proc.poll() is None:
        daemon.kill()  # test_webhooks_out checks the clean stop


def test_round_trip_reinstall_and_upgrade(d: Daemon, tmp_path: Path) -> None:
    src = write_bundle(tmp_path / "sre", {
        "template.json": json.dumps({"name": "sre-playbooks", "version": "1.0.0", "description": "SRE flows"}),
        "agents/b-triager.prompt": AGENT, "mcp-servers/kubectl.json": json.dumps({"command": "kubectl-mcp"}),
        "workflows/hello.workflow.yaml": HELLO, "workflows/triage.workflow.yaml": USES_AGENT,
        "workflows/gone.workflow.yaml": GONE, "variables.yml": "NAMESPACE: prod\n", "README.md": "not installed\n"})
    archive = tmp_path / "sre.tar.gz"
    made = cli(d, "bundle", "create", str(src), "-o", str(archive))
    assert made.returncode == 0, made.stderr
    assert "README.md" in made.stderr and archive.is_file()
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["agents/b-triager.prompt", "mcp-servers/kubectl.json", "template.json",
                                          "variables.yml", "workflows/gone.workflow.yaml", "workflows/hello.workflow.yaml",
                                          "workflows/triage.workflow.yaml"]
    first = cli(d, "bundle", "install", str(archive), "--env", "default")
    assert first.returncode == 0, first.stderr
    assert "workflow   b_hello v1" in first.stdout and "installed bundle sre-playbooks 1.0.0" in first.stdout
    env = d.root / "environments" / "default"
    assert (env / "agents" / "b-triager.prompt").read_text() == AGENT
    assert (env / "workflows" / "hello.workflow.yaml").read_text() == HELLO
    assert "NAMESPACE: prod" in (env / "variables.yml").read_text()
    before = tree(env)
    again = install(d, archive)
    assert again.written == [] and again.removed == [] and again.report.registered == []
    assert tree(env) == before

    d.start()
    (listed,) = bundles(d)
    assert listed["name"] == "sre-playbooks" and listed["version"] == "1.0.0" and listed["agents"] == ["b-triager"]
    assert {(w["id"], w["version"]) for w in listed["workflows"]} == {("b_hello", 1), ("b_triage", 1), ("b_gone", 1)}
    assert listed["mcpServers"] == ["kubectl.json"]
    assert [b["name"] for b in bundles(d, workflowId="b_hello")] == ["sre-playbooks"]
    assert bundles(d, workflowId="own_flow") == []
    assert d.request("GET", "/api/v1/workflows/b_hello").json()["bundle"] == {"name": "sre-playbooks", "version": "1.0.0"}
    assert d.request("GET", "/api/v1/workflows/own_flow").json()["bundle"] is None
    run = d.start_run("b_hello")
    assert run["status"] == "COMPLETED", run

    write_bundle(src, {"template.json": json.dumps({"name": "sre-playbooks", "version": "1.1.0"}),
                       "workflows/hello.workflow.yaml": HELLO.replace('"hi"', '"hello"')})
    (src / "workflows" / "gone.workflow.yaml").unlink()
    upgrade = install(d, src)
    assert upgrade.removed == ["workflows/gone.workflow.yaml"] and {"id": "b_hello", "version": 2, "file":
                                                                    "workflows/hello.workflow.yaml"} in upgrade.workflows
    (listed,) = bundles(d)
    assert listed["version"] == "1.1.0"
    assert {(w["id"], w["version"]) for w in listed["workflows"]} == {("b_hello", 2), ("b_triage", 1)}
    assert d.request("GET", "/api/v1/workflows/b_gone").json()["status"] == "disabled"


def test_invalid_bundle_changes_nothing(d: Daemon, tmp_path: Path) -> None:
    src = write_bundle(tmp_path / "bad", {
        "template.json": json.dumps({"name": "bad-bundle"}),
        "agents/broken.prompt": "---\nmodel: [not, a, string\n---\nx\n",
        "workflows/ok.workflow.yaml": HELLO.replace("b_hello", "bad_ok"),
        "workflows/typo.workflow.yaml": "id: bad_typo\nstart: a\nstates:\n  - {name: a, type: inject, data: {}, end: true,"
                                        " colour: red}\n",
        "workflows/agentless.workflow.yaml": USES_AGENT.replace("b_triage", "bad_agentless").replace("b-triager", "nobody"),
    })
    env = d.root / "environments" / "default"
    before = tree(env)
    before_bundles = bundles(d) if d.proc is not None else None
    out = cli(d, "bundle", "install", str(src))
    assert out.returncode == 1
    err = out.stderr
    assert "typo.workflow.yaml:4" in err and "colour" in err                       # file, line, field
    assert "agentless.workflow.yaml" in err and "'nobody'" in err                  # an agent nobody provides
    assert "broken.prompt" in err and "nothing was written" in err
    assert tree(env) == before
    if before_bundles is not None:
        assert bundles(d) == before_bundles
        assert d.request("GET", "/api/v1/workflows/bad_ok").status_code == 404
    assert "no such bundle" in refused(d, tmp_path / "nope.tar.gz")


def test_station_bundle_layout_installs_as_it_is(d: Daemon, tmp_path: Path) -> None:
    src = write_bundle(tmp_path / "finops", {
        "template.json": json.dumps({"name": "aws-finops", "description": "FinOps bundle",
                                     "mcpServers": {"aws-cost-explorer": {"command": "stn", "args": ["mock", "aws"]}}}),
        "agents/cost-inventory.prompt": STATION_AGENT,
        "variables.yml": "# FinOps variables\nAWS_REGION: \"us-east-1\"\nNAMESPACE: staging\n",
        "workflows/inventory.workflow.yaml": STATION_FLOW,
    })
    install(d, src)
    env = d.root / "environments" / "default"
    assert json.loads((env / "mcp-servers" / "aws-finops.json").read_text())["mcpServers"]["aws-cost-explorer"]["command"] == "stn"
    variables = (env / "variables.yml").read_text()
    assert "AWS_REGION: us-east-1" in variables and "NAMESPACE: prod" in variables  # the value already set wins
    if d.proc is None:
        d.start()
    (listed,) = [b for b in bundles(d) if b["name"] == "aws-finops"]
    assert listed["agents"] == ["cost-inventory"] and listed["version"] == "0.0.0"
    assert listed["workflows"] == [{"id": "st-inventory", "version": 1}]
    agent = d.request("GET", "/api/v1/agents/cost-inventory")
    assert agent.status_code == 200, agent.text
    assert d.request("GET", "/api/v1/workflows/st-inventory").json()["status"] == "active"


def test_unsafe_archive_and_foreign_file_are_refused(d: Daemon, tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        for name, data in (("template.json", b'{"name": "evil"}'), ("../escaped.txt", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert "only plain files" in refused(d, evil)
    assert not (tmp_path / "escaped.txt").exists()
    env = d.root / "environments" / "default"
    before = tree(env)
    clash = write_bundle(tmp_path / "clash", {"template.json": json.dumps({"name": "clash"}),
                                              "workflows/own.workflow.yaml": GONE.replace("b_gone", "clash_flow")})
    problems = refused(d, clash)
    assert "would overwrite" in problems and "own.workflow.yaml" in problems
    dup = write_bundle(tmp_path / "dup", {"template.json": json.dumps({"name": "dup"}),
                                          "workflows/other.workflow.yaml": GONE.replace("b_gone", "own_flow")})
    assert "already defined by" in refused(d, dup)
    assert tree(env) == before
