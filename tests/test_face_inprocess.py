"""The API in-process (httpx.ASGITransport) over the real services and a real SQLite file, no NATS and
no subprocess: the face's own wiring, fast. Crash and delivery behaviour stay with the daemon tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from station_wf.api.app import build_app
from station_wf.api.auth import TokenTable
from station_wf.api.state import ApiState
from station_wf.services.control import ControlService
from station_wf.services.definitions import DefinitionService, sync_database
from station_wf.services.events import EventHub
from station_wf.services.isolated import IsolatedPool
from station_wf.services.runs import RunService
from station_wf.store.db import SqliteReaders, Writer
from station_wf.store.definitions import DefinitionCache
from station_wf.store.events import LIST_FIELDS

SCHEDULED = {
    "id": "nightly", "start": "a",
    "schedules": [{"cron": "*/5 * * * *", "timezone": "UTC", "input": {}}],
    "states": [{"name": "a", "type": "inject", "data": {"ok": True}, "end": True}],
}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    writer = Writer(tmp_path / "face.db")
    writer.start()
    readers = SqliteReaders(tmp_path / "face.db")
    await readers.open()
    cache = DefinitionCache()
    commits: list[int] = []
    runs = RunService(writer, readers, on_commit=lambda: commits.append(1), definitions=cache)
    control = ControlService(writer, readers, cache, runs, lambda: None, lambda run_id: 0)
    isolated = IsolatedPool(workers=1)
    state = ApiState(runs, DefinitionService(readers, writer, isolated=isolated), writer, lambda: {"sqlite": True}, TokenTable({}),
                     control, EventHub(readers))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(state)), base_url="http://127.0.0.1") as c:
            yield c
    finally:
        isolated.close()
        await readers.close()
        writer.close()


async def test_definitions_are_written_by_their_service(client: httpx.AsyncClient) -> None:
    created = await client.post("/api/v1/workflows", json=SCHEDULED)
    assert created.status_code == 201 and created.json()["version"] == 1
    again = await client.post("/api/v1/workflows", json=SCHEDULED)
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    changed = {**SCHEDULED, "states": [{**SCHEDULED["states"][0], "data": {"ok": False}}]}
    put = await client.put("/api/v1/workflows/nightly", json={k: v for k, v in changed.items() if k != "id"})
    assert put.status_code == 200 and put.json()["version"] == 2  # the URL's id stands in for a missing one
    mismatch = await client.put("/api/v1/workflows/nightly", json={**changed, "id": "other"})
    assert mismatch.status_code == 400 and mismatch.json()["error"]["details"] == {"id": "other"}
    missing = await client.put("/api/v1/workflows/ghost", json={**changed, "id": "ghost"})
    assert missing.status_code == 404
    gone = await client.delete("/api/v1/workflows/nightly")
    assert gone.status_code == 200 and gone.json()["status"] == "disabled"
    versions = (await client.get("/api/v1/workflows/nightly/versions")).json()["versions"]
    assert [v["version"] for v in versions] == [2, 1]


async def test_schedules_through_their_service(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/v1/workflows", json=SCHEDULED)).status_code == 201
    listed = (await client.get("/api/v1/workflow-schedules", params={"workflowId": "nightly"})).json()["schedules"]
    assert [(s["id"], s["enabled"]) for s in listed] == [("nightly:0", True)] and listed[0]["nextFireAt"]
    assert (await client.get("/api/v1/workflow-schedules", params={"workflowId": "other"})).json() == {"schedules": []}
    off = (await client.post("/api/v1/workflow-schedules/nightly:0/disable")).json()
    assert off["enabled"] is False and off["nextFireAt"] is None
    on = (await client.post("/api/v1/workflow-schedules/nightly:0/enable")).json()
    assert on["enabled"] is True and on["nextFireAt"]
    unknown = await client.post("/api/v1/workflow-schedules/nope:0/enable")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == {"code": "not_found", "message": "schedule 'nope:0' not found",
                                       "details": {"id": "nope:0"}, "request_id": unknown.headers["x-request-id"]}


async def test_a_keyed_start_is_answered_once_and_its_events_have_the_one_shape(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/v1/workflows", json=SCHEDULED)).status_code == 201
    body = {"workflowId": "nightly", "input": {}}
    first = await client.post("/api/v1/workflow-runs", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    again = await client.post("/api/v1/workflow-runs", json=body, headers={"Idempotency-Key": "k1"})
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    other = await client.post("/api/v1/workflow-runs", json={**body, "input": {"x": 1}}, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    ghost = {"workflowId": "ghost", "input": {}}
    lost = await client.post("/api/v1/workflow-runs", json=ghost, headers={"Idempotency-Key": "k2", "X-Request-Id": "r-1"})
    assert lost.status_code == 404 and lost.json()["error"]["request_id"] == "r-1"
    replay = await client.post("/api/v1/workflow-runs", json=ghost, headers={"Idempotency-Key": "k2", "X-Request-Id": "r-2"})
    assert replay.status_code == 404 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["error"]["request_id"] == "r-2" and replay.headers["x-request-id"] == "r-2"  # this request's id
    run_id = first.json()["run"]["id"]
    events = (await client.get(f"/api/v1/workflow-runs/{run_id}/events")).json()["events"]
    assert events[0]["type"] == "run.created" and tuple(events[0]) == LIST_FIELDS  # then its start, in the same transaction
    listed = (await client.get("/api/v1/workflow-runs", params={"status": "PENDING,COMPLETED"})).json()["runs"]
    assert [r["id"] for r in listed] == [run_id]
    assert (await client.get("/api/v1/workflow-runs", params={"status": ","})).json()["runs"] == []  # IN (): nothing
    assert (await client.get("/api/v1/workflow-runs/nope/events")).status_code == 404


def test_sync_runs_through_the_service(tmp_path: Path) -> None:
    workflows = tmp_path / "envs" / "default" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "hello.workflow.yaml").write_text("id: hello\nstart: a\nstates:\n  - { name: a, type: inject, data: {}, end: true }\n")
    (workflows / "broken.workflow.yaml").write_text("id: broken\nstart: nowhere\nstates: []\n")
    report = sync_database(tmp_path / "s.db", tmp_path / "envs", "default")
    assert [r["workflowId"] for r in report.registered] == ["hello"] and len(report.errors) == 1
    assert sync_database(tmp_path / "s.db", tmp_path / "envs", "default").unchanged == ["hello"]
