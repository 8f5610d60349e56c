"""`GET /api/v1/agents[/{name}]` and `station-wf agents list|show|run`, over real files and a real LLM server."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from station_wf.agents.catalog import AgentCatalog
from station_wf.api.agents import agent_routes
from station_wf.cli_agents import add_agents_commands
from station_wf.errors import ServiceError
from tests.fake_llm import FakeLLM, Reply, running_llm

NOTE = """---
model: openai/note-model
metadata:
  name: note
config: { temperature: 0 }
input:
  schema:
    topic: string
output:
  schema:
    title: string
---
Write a note about {{topic}}.
"""


@pytest.fixture
def envs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    agents = tmp_path / "environments" / "default" / "agents"
    agents.mkdir(parents=True)
    (agents / "note.prompt").write_text(NOTE)
    (agents / "broken.prompt").write_text("---\nmodel: openai/x\ninput:\n  schema: 5\n---\nHi\n")
    (tmp_path / "environments" / "other" / "agents").mkdir(parents=True)
    (tmp_path / "environments" / "other" / "agents" / "elsewhere.prompt").write_text("---\nendpoint: http://127.0.0.1:9/x\n---\n")
    monkeypatch.setenv("STATION_ENVIRONMENTS_DIR", str(tmp_path / "environments"))
    monkeypatch.delenv("STATION_ENVIRONMENT", raising=False)
    return tmp_path / "environments"


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLM]:
    with running_llm() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        yield server


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return JSONResponse({"error": {"code": exc.code, "message": exc.message, "details": exc.details}}, exc.status)


async def test_api_lists_and_shows_agents(envs: Path) -> None:
    catalog = AgentCatalog(envs, "default")
    app = Starlette(routes=agent_routes(lambda: catalog), exception_handlers={ServiceError: _service_error})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        listing = (await client.get("/api/v1/agents")).json()
        assert [a["name"] for a in listing["agents"]] == ["note"]
        assert "template" not in listing["agents"][0]
        assert len(listing["errors"]) == 1 and "broken.prompt" in listing["errors"][0]

        one = (await client.get("/api/v1/agents/note")).json()["agent"]
        assert one["model"] == "openai/note-model" and one["endpoint"] is None
        assert one["inputSchema"]["properties"]["topic"] == {"type": "string"}
        assert one["outputSchema"]["required"] == ["title"]
        assert one["config"] == {"temperature": 0}
        assert one["contentHash"].startswith("sha256:") and one["sourceFile"].endswith("note.prompt")
        assert one["template"] == "Write a note about {{topic}}."

        missing = await client.get("/api/v1/agents/ghost")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        broken = await client.get("/api/v1/agents/broken")
        assert broken.status_code == 422 and "input.schema" in broken.json()["error"]["message"]

        other = await client.get("/api/v1/agents/elsewhere@other")
        assert other.status_code == 200 and other.json()["agent"]["environment"] == "other"
        listed = (await client.get("/api/v1/agents", params={"environment": "other"})).json()
        assert [a["name"] for a in listed["agents"]] == ["elsewhere"]
        bad_env = await client.get("/api/v1/agents", params={"environment": "../etc"})
        assert bad_env.status_code == 400


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="station-wf")
    add_agents_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_list_and_show(envs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("agents", "list") == 1  # a broken file is a failure worth an exit code
    out, err = capsys.readouterr()
    assert out.startswith("note\topenai/note-model\tsha256:")
    assert err.count("\n") == 1 and "broken.prompt" in err
    assert cli("agents", "show", "note") == 0
    assert json.loads(capsys.readouterr().out)["name"] == "note"
    assert cli("agents", "show", "ghost") == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("station-wf: unknown agent 'ghost'") and err.count("\n") == 1
    assert cli("agents", "list", "--env", "other", "--json") == 0
    assert [a["name"] for a in json.loads(capsys.readouterr().out)["agents"]] == ["elsewhere"]


def test_cli_run_prints_output_and_metadata(envs: Path, llm: FakeLLM, capsys: pytest.CaptureFixture[str]) -> None:
    llm.answer({"title": "Rust"})
    assert cli("agents", "run", "note", "--input", '{"topic": "rust"}', "--task", "be brief") == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["output"] == {"title": "Rust"}
    assert printed["metadata"]["prompt"] == "Write a note about rust."
    assert printed["metadata"]["usage"]["total_tokens"] == 18
    [req] = llm.requests
    assert req.messages("user") == ["be brief"] and req.headers["Idempotency-Key"].endswith(":agents-run:1")
    assert "Authorization" not in req.headers  # no key configured: none sent (Ollama needs none)


def test_cli_run_errors_are_one_line(envs: Path, llm: FakeLLM, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("agents", "run", "note", "--input", '{"topic": 5}') == 1
    err = capsys.readouterr().err
    assert err.startswith("station-wf: agent 'note': validation:") and err.count("\n") == 1
    assert llm.requests == []
    assert cli("agents", "run", "note", "--input", "{nope") == 1
    assert "--input is not JSON" in capsys.readouterr().err
    llm.answer(Reply(hold=True))
    assert cli("agents", "run", "note", "--input", '{"topic": "x"}', "--timeout", "0.5") == 1
    err = capsys.readouterr().err
    assert "timeout" in err and err.count("\n") == 1
