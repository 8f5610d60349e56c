"""Agents cannot be turned against the daemon (issue 11): real HTTP servers on 127.0.0.1 play a
redirecting, huge, deep or silent agent, and the real executor must fail the step cleanly and quickly."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from station_wf.agents.catalog import MAX_SIBLINGS, AgentCatalog, AgentFileError, parse_agent_text
from station_wf.agents.executor import AgentRunExecutor
from station_wf.agents.providers import AgentLimits
from station_wf.executors.base import StepCall, StepError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Servers:
    """aiohttp apps on 127.0.0.1 in the test's own loop; each records the requests it got."""

    def __init__(self) -> None:
        self.runners: list[web.AppRunner] = []
        self.hits: dict[str, list[str]] = {}

    async def serve(self, name: str, handler: Handler) -> str:
        self.hits[name] = []

        async def record(request: web.Request) -> web.StreamResponse:
            self.hits[name].append(f"{request.method} {request.path}")
            return await handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        for runner in self.runners:
            await runner.cleanup()


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    s = Servers()
    yield s
    await s.close()


def write_agent(env_dir: Path, name: str, front: str) -> None:
    agents = env_dir / "default" / "agents"
    agents.mkdir(parents=True, exist_ok=True)
    (agents / f"{name}.prompt").write_text(f"---\n{front}\n---\nHello {{{{who}}}}\n")


def call(agent: str, timeout: float | None = None) -> StepCall:
    return StepCall(run_id="r1", step_id="s1", attempt=1, idempotency_key="r1:s1:1", state_name="ask",
                    action="agent.run", input={"agent": agent, "task": "t", "variables": {"who": "x"}},
                    timeout_seconds=timeout)


async def run_agent(env_dir: Path, agent: str, limits: AgentLimits | None = None,
                    timeout: float | None = None) -> Any:
    executor = AgentRunExecutor(AgentCatalog(env_dir, "default"), limits)
    try:
        return await asyncio.wait_for(executor.execute(call(agent, timeout)), 20)
    finally:
        await executor.close()


def chat(content: str) -> dict[str, Any]:
    return {"model": "m", "choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}


# -- redirects -------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_no_agent_follows_a_redirect_to_another_host(tmp_path: Path, servers: Servers, status: int) -> None:
    async def metadata(_: web.Request) -> web.Response:
        return web.json_response({"secret": "INTERNAL-METADATA-CONTENT"})

    internal = await servers.serve("internal", metadata)

    async def redirect(_: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": internal + "/internal-metadata"})

    agent = await servers.serve("agent", redirect)
    write_agent(tmp_path, "http", f"endpoint: {agent}/agents/http")
    write_agent(tmp_path, "chat", f"model: openai/m\nbaseUrl: {agent}/v1")
    for name in ("http", "chat"):
        with pytest.raises(StepError) as err:
            await run_agent(tmp_path, name)
        assert f"HTTP {status}" in str(err.value) and "redirects are not followed" in str(err.value)
        assert "INTERNAL-METADATA" not in json.dumps(err.value.details)
    assert servers.hits["internal"] == []  # never reached
    assert len(servers.hits["agent"]) == 2


# -- response size ---------------------------------------------------------------------------------

@pytest.mark.parametrize("chunked", [False, True])
async def test_a_huge_answer_fails_the_step_without_reading_it_all(tmp_path: Path, servers: Servers,
                                                                   chunked: bool) -> None:
    sent = {"bytes": 0}

    async def flood(request: web.Request) -> web.StreamResponse:
        total = 64 * 1024 * 1024
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if chunked:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = total
        await resp.prepare(request)
        block = b" " * (256 * 1024)
        try:
            while sent["bytes"] < total:
                await resp.write(block)
                sent["bytes"] += len(block)
        except (ConnectionResetError, ConnectionError):
            pass
        return resp

    agent = await servers.serve("agent", flood)
    write_agent(tmp_path, "big", f"endpoint: {agent}/agents/big")
    limits = AgentLimits(max_response_bytes=1024 * 1024)
    with pytest.raises(StepError) as err:
        await run_agent(tmp_path, "big", limits)
    assert err.value.type == "response_too_large" and "more than 1048576 bytes" in str(err.value)
    assert "STATION_AGENT_MAX_RESPONSE_BYTES" in str(err.value)
    assert sent["bytes"] < 32 * 1024 * 1024  # the client hung up long before the end


async def test_an_answer_under_the_cap_is_read_whole(tmp_path: Path, servers: Servers) -> None:
    body = {"text": "y" * 500_000}

    async def fine(_: web.Request) -> web.Response:
        return web.json_response(body)

    agent = await servers.serve("agent", fine)
    write_agent(tmp_path, "ok", f"endpoint: {agent}/agents/ok")
    result = await run_agent(tmp_path, "ok", AgentLimits(max_response_bytes=1024 * 1024))
    assert result.output == body


# -- nesting ---------------------------------------------------------------------------------------

def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [65, 500, 990, 50_000])
async def test_deeply_nested_json_fails_the_step_cleanly(tmp_path: Path, servers: Servers, depth: int) -> None:
    async def deep_http(_: web.Request) -> web.Response:
        return web.Response(text=nested(depth), content_type="application/json")

    async def deep_chat(_: web.Request) -> web.Response:
        return web.json_response(chat(nested(depth)))

    http_url = await servers.serve("http", deep_http)
    chat_url = await servers.serve("chat", deep_chat)
    write_agent(tmp_path, "h", f"endpoint: {http_url}/agents/h")
    write_agent(tmp_path, "c", f"model: openai/m\nbaseUrl: {chat_url}/v1")
    for name in ("h", "c"):
        with pytest.raises(StepError) as err:
            await run_agent(tmp_path, name)
        assert err.value.type == "validation" and "nested more than 64 levels" in str(err.value)


async def test_json_at_the_depth_limit_is_accepted(tmp_path: Path, servers: Servers) -> None:
    async def ok(_: web.Request) -> web.Response:
        return web.Response(text=nested(63), content_type="application/json")

    url = await servers.serve("http", ok)
    write_agent(tmp_path, "h", f"endpoint: {url}/agents/h")
    assert "a" in (await run_agent(tmp_path, "h")).output


# -- a peer that never answers ---------------------------------------------------------------------

async def test_a_silent_peer_is_cut_by_the_read_timeout_without_a_step_timeout(tmp_path: Path) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def tarpit(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # accept, read nothing, answer nothing

    server = await asyncio.start_server(tarpit, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        write_agent(tmp_path, "slow", f"endpoint: http://127.0.0.1:{port}/agents/slow")
        write_agent(tmp_path, "slowchat", f"model: openai/m\nbaseUrl: http://127.0.0.1:{port}/v1")
        for name in ("slow", "slowchat"):
            started = time.monotonic()
            with pytest.raises(StepError) as err:
                await run_agent(tmp_path, name, AgentLimits(read_timeout_s=0.5), timeout=None)
            assert err.value.type == "timeout" and "STATION_AGENT_READ_TIMEOUT_SECONDS" in str(err.value)
            assert time.monotonic() - started < 5
        assert len(accepted) == 2
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


def test_default_limits_match_the_settings() -> None:
    from station_wf.config import Settings, settings_from_env

    assert AgentLimits.from_settings(Settings()) == AgentLimits()
    assert AgentLimits().max_response_bytes == 4 * 1024 * 1024
    custom = settings_from_env({"STATION_AGENT_MAX_RESPONSE_BYTES": "1000", "STATION_AGENT_READ_TIMEOUT_SECONDS": "7"})
    limits = AgentLimits.from_settings(custom)
    assert limits.max_response_bytes == 1000 and limits.read_timeout_s == 7.0
    with pytest.raises(ValueError, match="must be > 0"):
        settings_from_env({"STATION_AGENT_MAX_RESPONSE_BYTES": "0"}).validate()


# -- apiKeyEnv -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["STATION_API_TOKEN", "STATION_ANYTHING_KEY", "station_api_key", "HOME", "PATH",
                                  "AWS_SECRET_ACCESS_KEY_ID", "MY KEY"])
def test_api_key_env_must_name_a_key_variable_and_never_station(name: str) -> None:
    with pytest.raises(AgentFileError) as err:
        parse_agent_text(f"---\nmodel: openai/m\napiKeyEnv: {name}\n---\nHi\n", "/envs/default/agents/x.prompt")
    assert str(err.value).startswith("/envs/default/agents/x.prompt: apiKeyEnv:")


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "MY_LLM_KEY", "GROQ_TOKEN", "A1_API_KEY"])
def test_api_key_env_allowed_names(name: str) -> None:
    spec = parse_agent_text(f"---\nmodel: openai/m\napiKeyEnv: {name}\n---\nHi\n", "x.prompt")
    assert spec.api_key_env == name


async def test_station_token_is_never_sent_even_from_a_spec_made_by_hand(tmp_path: Path, servers: Servers,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    async def capture(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response(chat("hi"))

    url = await servers.serve("chat", capture)
    monkeypatch.setenv("STATION_API_TOKEN", "admin-secret-token-123456")
    write_agent(tmp_path, "steal", f"model: openai/m\nbaseUrl: {url}/v1\napiKeyEnv: STATION_API_TOKEN")
    catalog = AgentCatalog(tmp_path, "default")
    assert catalog.get("steal") is None and "apiKeyEnv" in catalog.broken["steal"]
    with pytest.raises(StepError, match="does not load: .*apiKeyEnv"):
        await run_agent(tmp_path, "steal")
    # The provider refuses too, for specs built any other way.
    from dataclasses import replace

    from station_wf.agents.providers import AgentRequest
    from station_wf.agents.providers.openai_chat import OpenAIChatProvider

    spec = replace(parse_agent_text(f"---\nmodel: openai/m\nbaseUrl: {url}/v1\n---\nHi\n", "x.prompt"),
                   api_key_env="STATION_API_TOKEN")
    request = AgentRequest(call=call("x"), spec=spec, agent_ref="x", model="m", task="t", variables={}, prompt=None)
    with pytest.raises(StepError) as err:
        OpenAIChatProvider().endpoint(request)
    assert err.value.type == "configuration" and seen == []


# -- the catalog cache -----------------------------------------------------------------------------

def test_sibling_catalogs_are_bounded_and_missing_environments_not_cached(tmp_path: Path) -> None:
    root = AgentCatalog(tmp_path, "default")
    for i in range(200):
        root.sibling(f"nowhere-{i}")
    assert len(root._siblings) == 0
    for i in range(MAX_SIBLINGS + 10):
        (tmp_path / f"env{i}" / "agents").mkdir(parents=True)
        root.sibling(f"env{i}")
    assert len(root._siblings) == MAX_SIBLINGS
    assert "env0" not in root._siblings and f"env{MAX_SIBLINGS + 9}" in root._siblings
    again = root.sibling(f"env{MAX_SIBLINGS + 9}")
    assert again is root.sibling(f"env{MAX_SIBLINGS + 9}")  # a cached one is reused
