"""`ApiState`: what handlers may use, handed in by the daemon. Handlers reach the system only through
these services (never `store/` or `engine/` directly), so the face stays a face."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.routing import Route

from station_wf.agents.catalog import AgentCatalog
from station_wf.api.auth import TokenTable
from station_wf.api.door import LoopbackPolicy
from station_wf.services.control import ControlService
from station_wf.services.definitions import DefinitionService
from station_wf.services.events import EventHub
from station_wf.services.idempotency import IdempotencyStore
from station_wf.services.offload import DEFAULT as DEFAULT_OFFLOADER
from station_wf.services.offload import Offloader
from station_wf.services.runs import RunService
from station_wf.services.schedules import ScheduleService


class ApiState:
    """The services, the writer's health, and the HTTP limits; explicit so the API never reaches into
    the daemon's internals."""

    def __init__(self, runs: RunService, definitions: DefinitionService, writer: Any,
                 readiness: Callable[[], dict[str, bool]], tokens: TokenTable, control: ControlService,
                 hub: EventHub, sse_ping: float = 15.0, extra_routes: list[Route] | None = None,
                 agents: AgentCatalog | None = None, offloader: Offloader | None = None,
                 loopback: LoopbackPolicy | None = None, max_sse: int = 256, body_timeout: float = 30.0,
                 schedules: ScheduleService | None = None, integrations: Any = None) -> None:
        self.runs = runs
        self.definitions = definitions
        self.writer = writer  # for /healthz only: writes go through the services
        self.readiness = readiness
        self.tokens = tokens
        self.control = control
        self.hub = hub
        self.sse_ping = sse_ping
        self.idempotency = IdempotencyStore(writer)
        self.schedules = schedules or ScheduleService(writer, runs.readers)
        self.extra_routes = extra_routes or []
        self.agents = agents
        self.offloader = offloader or DEFAULT_OFFLOADER
        self.loopback = loopback
        self.max_sse = max_sse
        self.body_timeout = body_timeout
        self.integrations = integrations  # station_wf/integrations/wiring.py (issue 19)
