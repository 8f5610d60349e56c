"""A tiny HTTP agent for the example environment: speaks the agent protocol `agent.run` uses.

`make run` starts it beside the daemon so the hello workflow completes on a fresh clone without an
LLM key. It is an example of the protocol, not part of the engine.
"""

from __future__ import annotations

from aiohttp import web


async def greeter(request: web.Request) -> web.Response:
    body = await request.json()
    variables = body.get("variables") or {}
    name = variables.get("name") or "world"
    return web.json_response({
        "greeting": f"Hello, {name}!",
        "task": body.get("task"),
        "idempotencyKey": request.headers.get("Idempotency-Key"),
    })


def build_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/agents/greeter", greeter)
    return app


def serve(host: str = "127.0.0.1", port: int = 8588) -> None:
    web.run_app(build_app(), host=host, port=port, print=lambda *_: None)
