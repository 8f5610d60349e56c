"""A scripted OpenAI-compatible Chat Completions server on 127.0.0.1, for agent tests.

Runs in its own thread and event loop, so both async unit tests and a daemon subprocess can call
it. It records every request (path, headers, JSON body) and answers from a script of `Reply`s
(then from `default`). A `hold` reply never answers; the server notes when the client drops
the connection, which is how tests see that cancellation really closes the socket.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from station_wf.bus.nats_server import free_port


@dataclass
class Reply:
    """One scripted answer. `content` dicts/lists are sent as JSON text."""

    content: Any = "ok"
    status: int = 200
    error_body: Any = None
    hold: bool = False
    delay: float = 0.0
    usage: dict[str, int] = field(default_factory=lambda: {"prompt_tokens": 11, "completion_tokens": 7,
                                                            "total_tokens": 18})
    finish_reason: str = "stop"
    tool_calls: list[dict[str, Any]] | None = None  # [{"name": ..., "arguments": {...}}]: the model asks for tools


def tool_call(name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "arguments": arguments or {}}


def calls(*requested: dict[str, Any]) -> Reply:
    """A turn in which the model asks for these tool calls (and says nothing else)."""
    return Reply(content=None, tool_calls=list(requested), finish_reason="tool_calls")


@dataclass
class LLMRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    disconnected: threading.Event = field(default_factory=threading.Event)

    def messages(self, role: str) -> list[str]:
        return [m["content"] for m in self.body.get("messages", []) if m.get("role") == role]

    def tool_names(self) -> list[str]:
        return [t["function"]["name"] for t in self.body.get("tools") or []]


class FakeLLM:
    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[LLMRequest] = []
        self.script: deque[Reply] = deque()
        self.default: Callable[[LLMRequest], Reply] = lambda req: Reply()
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="fake-llm", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def answer(self, *replies: Reply | Any) -> None:
        """Queue answers; a bare value is `Reply(content=value)`."""
        with self._lock:
            self.script.extend(r if isinstance(r, Reply) else Reply(content=r) for r in replies)

    def wait_requests(self, count: int, timeout: float = 10.0) -> list[LLMRequest]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.01)
        raise AssertionError(f"fake LLM got {len(self.requests)} requests, wanted {count}")

    # -- server ------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        rec = LLMRequest(request.path, dict(request.headers), body)
        with self._lock:
            self.requests.append(rec)
            reply = self.script.popleft() if self.script else None
        if reply is None:
            reply = self.default(rec)
        if reply.hold:
            while not self.release.is_set() and not self._stop.is_set():
                transport = request.transport
                if transport is None or transport.is_closing():
                    rec.disconnected.set()
                    break
                await asyncio.sleep(0.01)
            return web.json_response({"error": "held"}, status=503)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.status >= 300:
            return web.json_response(reply.error_body or {"error": {"message": "scripted failure"}},
                                     status=reply.status)
        content = reply.content if isinstance(reply.content, str) or reply.content is None else json.dumps(reply.content)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reply.tool_calls is not None:
            message["tool_calls"] = [
                {"id": f"call_{len(self.requests)}_{i}", "type": "function",
                 "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments") or {})}}
                for i, c in enumerate(reply.tool_calls)]
        return web.json_response({
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
            "usage": reply.usage,
        })

    def _main(self) -> None:
        async def main() -> None:
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self._handle)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._ready.set()
            while not self._stop.is_set():
                await asyncio.sleep(0.02)
            await runner.cleanup()

        asyncio.new_event_loop().run_until_complete(main())

    def start(self) -> FakeLLM:
        self._thread.start()
        assert self._ready.wait(10), "fake LLM did not start"
        return self

    def stop(self) -> None:
        self.release.set()
        self._stop.set()
        self._thread.join(10)


@contextmanager
def running_llm() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    try:
        yield server
    finally:
        server.stop()
