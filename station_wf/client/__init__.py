"""A typed Python client for station-wf's REST API: `Client` (blocking) and `AsyncClient` (asyncio),
with the same methods, one request/response layer (`calls`), typed documents (`types`), one error
type (`ApiError`) and SSE streams that reconnect from the last event id (`StreamEvent`).

    from station_wf.client import Client, ApiError
    api = Client("http://127.0.0.1:8587", token=None)
    run = api.start_run("incident-triage", {"service": "api"})
    run = api.wait_run(run["id"], timeout=60)
"""

from station_wf.client.aio import AsyncClient
from station_wf.client.base import Options
from station_wf.client.calls import Call
from station_wf.client.errors import ApiError
from station_wf.client.sse import TERMINAL_EVENTS, StreamEvent
from station_wf.client.sync import Client
from station_wf.client.types import (
    TERMINAL_STATUSES,
    Agent,
    AgentList,
    Approval,
    BatchItem,
    BatchResult,
    Event,
    EventPage,
    Run,
    RunPage,
    Schedule,
    Signal,
    Step,
    SyncStatus,
    Validation,
    Workflow,
    is_terminal,
)

__all__ = [
    "TERMINAL_EVENTS", "TERMINAL_STATUSES", "Agent", "AgentList", "ApiError", "Approval", "AsyncClient", "BatchItem",
    "BatchResult", "Call", "Client", "Event", "EventPage", "Options", "Run", "RunPage", "Schedule", "Signal", "Step",
    "StreamEvent", "SyncStatus", "Validation", "Workflow", "is_terminal",
]
