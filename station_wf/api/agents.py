"""`GET /api/v1/agents` and `GET /api/v1/agents/{name}`: the environment's agent files as the daemon sees them.

Read from the catalog (the files), not the database: the catalog re-scans on change, so the API
shows exactly what the next `agent.run` will use, content hash included. `?environment=` (or
`name@env`) looks at another environment under the same directory.

Handlers raise `ServiceError`; the app's wrapper renders it. `agent_handlers()` yields
`(path, handler(request, state), methods)` for the app's route table; `agent_routes()` mounts the
same handlers as plain Starlette routes, on their own, for an in-process app (tests) that brings its
own ServiceError handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from station_wf.agents.catalog import AgentCatalog, AgentFileError, split_agent_ref
from station_wf.api.http import SafeJSONResponse
from station_wf.errors import ServiceError, invalid, not_found

CatalogFactory = Callable[[], AgentCatalog]
StateHandler = Callable[[Request, Any], Awaitable[Response]]


def _catalog(request: Request, factory: CatalogFactory, env: str | None = None) -> AgentCatalog:
    base = factory()
    env = env or request.query_params.get("environment") or None
    if env is None:
        return base
    try:
        return base.sibling(env)
    except AgentFileError as exc:
        raise invalid(str(exc), {"environment": env}) from None


def agent_handlers(catalog_factory: CatalogFactory) -> list[tuple[str, StateHandler, list[str]]]:
    async def list_agents(request: Request, state: Any = None) -> Response:
        catalog = _catalog(request, catalog_factory)
        agents = [spec.to_dict(template=False) for spec in catalog.all()]
        return SafeJSONResponse({
            "environment": catalog.environment,
            "agents": agents,
            "errors": list(catalog.errors),
        })

    async def get_agent(request: Request, state: Any = None) -> Response:
        name, env = split_agent_ref(request.path_params["name"])
        catalog = _catalog(request, catalog_factory, env)
        spec = catalog.get(name)
        if spec is None:
            why = catalog.broken.get(name)
            if why:
                raise ServiceError(422, "agent_invalid", f"agent {name!r} does not load: {why}", {"name": name})
            raise not_found("agent", name)
        return SafeJSONResponse({"agent": spec.to_dict()})

    return [
        ("/api/v1/agents", list_agents, ["GET"]),
        ("/api/v1/agents/{name}", get_agent, ["GET"]),
    ]


def agent_routes(catalog_factory: CatalogFactory) -> list[Route]:
    """Plain Starlette routes; their endpoints raise ServiceError (mount with an exception handler)."""
    routes: list[Route] = []
    for path, handler, methods in agent_handlers(catalog_factory):
        async def endpoint(request: Request, handler: StateHandler = handler) -> Response:
            return await handler(request, None)

        routes.append(Route(path, endpoint, methods=methods))
    return routes
