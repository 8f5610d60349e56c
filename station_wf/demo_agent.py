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


# Canned answers for the incident-triage example's agents (any other name echoes its task).
CANNED = {
    "k8s-pod-checker": {"pods": [{"name": "api-7f9c", "ready": True}, {"name": "api-5d2a", "ready": False}]},
    "slo-analyzer": {"error_rate": 0.08, "window": "15m"},
    "k8s-remediator": {"restarted": ["api-5d2a"]},
    "notification-sender": {"sent": True},
}


async def canned(request: web.Request) -> web.Response:
    body = await request.json()
    name = request.match_info["name"]
    return web.json_response(CANNED.get(name, {"agent": name, "task": body.get("task")}))


def build_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/agents/greeter", greeter)
    app.router.add_post("/agents/{name}", canned)
    return app


def serve(host: str = "127.0.0.1", port: int = 8588) -> None:
    web.run_app(build_app(), host=host, port=port, print=lambda *_: None)
