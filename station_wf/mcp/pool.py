"""The daemon's MCP client connections: one per configured server, started on first use, shared by every
step of the process, restarted when it has died, stopped with the daemon.

Each connection lives in a task of its own (the SDK's `Client` is an anyio context that must be entered
and left in one task); steps call tools on it from their own tasks. A server whose process has exited
is noticed before the next call and started again (a call in flight when it dies fails with
`ServerDied`: a tool call is never sent twice by us, the model decides what to do with the error).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from station_wf.mcp.servers import McpConfigError, ServerSpec, load_servers

if TYPE_CHECKING:
    from mcp import Client

log = logging.getLogger(__name__)
MAX_TOOL_PAGES = 20
STOP_GRACE_S = 5.0


class McpUnavailable(Exception):
    """A server that cannot be started, connected to or listed; the message names it."""


class ServerDied(Exception):
    """The server's connection closed while a call was in flight."""


@dataclass(frozen=True)
class ToolInfo:
    server: str
    name: str
    description: str
    input_schema: dict[str, Any]


class ServerHandle:
    """One running connection to one server."""

    def __init__(self, spec: ServerSpec, environment: str) -> None:
        self.spec = spec
        self.environment = environment
        self.client: Client | None = None
        self.tools: list[ToolInfo] = []
        self.error: BaseException | None = None
        self.started_at = time.monotonic()
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._http: Any = None

    def _client(self) -> Client:
        # The SDK is imported here, on first use: it costs a second of start-up that a daemon whose agents
        # use no tools (most of them, and every test daemon) should not pay.
        from mcp import Client, StdioServerParameters
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        spec = self.spec
        if spec.url:  # our own httpx client for the headers; closed with the connection (_serve)
            self._http = create_mcp_http_client(headers=spec.headers or None)
            return Client(streamable_http_client(spec.url, http_client=self._http), cache=None)
        params = StdioServerParameters(command=spec.command or "", args=list(spec.args), env=spec.env or None,
                                       cwd=spec.cwd)
        return Client(params, cache=None)

    async def start(self, timeout_s: float) -> None:
        self._task = asyncio.create_task(self._serve(), name=f"mcp:{self.environment}:{self.spec.name}")
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        except TimeoutError:
            await self.stop()
            raise McpUnavailable(f"MCP server {self.spec.name!r} ({self.spec.source}) did not start within "
                                 f"{timeout_s:g}s (STATION_MCP_START_TIMEOUT_SECONDS)") from None
        if self.error is not None or self.client is None:
            await self.stop()
            raise McpUnavailable(f"MCP server {self.spec.name!r} ({self.spec.source}) could not be started: "
                                 f"{_describe(self.error)}")

    async def _serve(self) -> None:
        try:
            async with self._client() as client:
                self.tools = await self._list(client)
                self.client = client
                self._ready.set()
                await self._stop.wait()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - any failure of the server is this handle's error
            self.error = exc
            if self.client is not None:
                log.warning("mcp: server %s of %s ended: %s", self.spec.name, self.environment, _describe(exc))
        finally:
            self.client = None if self.error is not None or self._stop.is_set() else self.client
            self._ready.set()
            if self._http is not None:
                await self._http.aclose()

    async def _list(self, client: Client) -> list[ToolInfo]:
        out: list[ToolInfo] = []
        cursor: str | None = None
        for _ in range(MAX_TOOL_PAGES):
            page = await client.list_tools(cursor=cursor)
            out += [ToolInfo(self.spec.name, t.name, t.description or "", dict(t.input_schema or {"type": "object"}))
                    for t in page.tools]
            cursor = page.next_cursor
            if not cursor:
                break
        return out

    @property
    def alive(self) -> bool:
        if self.client is None or self.error is not None or self._task is None or self._task.done():
            return False
        dispatcher = getattr(self.client.session, "_dispatcher", None)  # the SDK notes a closed transport here
        return not getattr(dispatcher, "_closed", False)

    async def call(self, tool: str, arguments: dict[str, Any], meta: dict[str, Any], timeout_s: float) -> Any:
        from mcp import MCPError
        from mcp.types import CONNECTION_CLOSED

        client = self.client
        if client is None:
            raise ServerDied(f"MCP server {self.spec.name!r} is not running")
        try:
            return await asyncio.wait_for(client.call_tool(tool, arguments, meta=meta), timeout_s)
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                self.error = exc  # not alive any more, whatever the SDK's internals say: the next use restarts it
            if not self.alive:
                raise ServerDied(f"MCP server {self.spec.name!r} went away during the call: {exc}") from None
            raise

    async def stop(self) -> None:
        self._stop.set()
        task = self._task
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), STOP_GRACE_S)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
        except BaseException:  # noqa: BLE001 - stopping never fails the caller
            pass


class McpPool:
    """The connections of every environment, keyed by (environment, server)."""

    def __init__(self, environments_dir: Path | str, start_timeout_s: float = 30.0) -> None:
        self.environments_dir = Path(environments_dir)
        self.start_timeout_s = start_timeout_s
        self._handles: dict[tuple[str, str], ServerHandle] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.starts = 0

    def servers(self, environment: str) -> dict[str, ServerSpec]:
        """The environment's servers as its files say now (re-read each time: edits apply at the next step)."""
        try:
            return load_servers(self.environments_dir / environment)
        except McpConfigError as exc:
            raise McpUnavailable(f"environment {environment!r}: {exc}") from None

    async def handle(self, environment: str, spec: ServerSpec) -> ServerHandle:
        key = (environment, spec.name)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            found = self._handles.get(key)
            if found is not None and found.alive and found.spec.fingerprint == spec.fingerprint:
                return found
            if found is not None:
                log.info("mcp: restarting server %s of %s (%s)", spec.name, environment,
                         "changed" if found.alive else "not running")
                await found.stop()
                self._handles.pop(key, None)
            fresh = ServerHandle(spec, environment)
            self.starts += 1
            await fresh.start(self.start_timeout_s)
            self._handles[key] = fresh
            return fresh

    async def close(self) -> None:
        handles, self._handles = list(self._handles.values()), {}
        await asyncio.gather(*(h.stop() for h in handles), return_exceptions=True)


def _describe(exc: BaseException | None) -> str:
    """The innermost useful message of an anyio exception group."""
    seen = 0
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions and seen < 10:
        exc = exc.exceptions[0]
        seen += 1
    if exc is None:
        return "unknown error"
    return f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__

