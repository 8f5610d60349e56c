"""Correlation ids and tags on start, and the run list's filters by them and by start time (OKRA's
QueryOptions), with cursor paging as before."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from tests.conftest import Daemon

TINY = """
id: tiny
start: a
states:
  - { name: a, type: inject, data: { x: 1 }, end: true }
"""


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("tags")
    (root / "environments" / "default" / "agents").mkdir(parents=True)
    daemon = Daemon(root, None, {})
    daemon.add_workflow("tiny", TINY)
    daemon.start()
    yield daemon
    daemon.stop()


def _ids(d: Daemon, **params: object) -> list[str]:
    resp = d.request("GET", "/api/v1/workflow-runs", params=params)
    assert resp.status_code == 200, resp.text
    return [r["id"] for r in resp.json()["runs"]]


def test_correlation_and_tags_are_stored_shown_and_filtered(d: Daemon) -> None:
    before = datetime.now(UTC).isoformat()
    a = d.start_run("tiny", correlationId="order-1", tags={"env": "prod", "team": "pay"})
    b = d.start_run("tiny", correlationId="order-1", tags={"env": "dev"})
    c = d.start_run("tiny", tags={"env": "prod", "team": "ops"})
    time.sleep(0.01)
    middle = datetime.now(UTC).isoformat()
    e = d.start_run("tiny")
    assert a["correlationId"] == "order-1" and a["tags"] == {"env": "prod", "team": "pay"}
    assert d.run(e["id"])["correlationId"] is None and d.run(e["id"])["tags"] == {}
    assert _ids(d, correlationId="order-1") == [b["id"], a["id"]]
    assert _ids(d, tag="env:prod") == [c["id"], a["id"]]
    assert _ids(d, tag=["env:prod", "team:pay"]) == [a["id"]]
    assert _ids(d, tag="env:prod", correlationId="order-1") == [a["id"]]
    assert _ids(d, startedAfter=middle) == [e["id"]]
    assert _ids(d, startedAfter=before, startedBefore=middle) == [c["id"], b["id"], a["id"]]
    # cursor paging keeps the filters
    page = d.request("GET", "/api/v1/workflow-runs", params={"tag": "env:prod", "limit": 1}).json()
    assert [r["id"] for r in page["runs"]] == [c["id"]] and page["runs"][0]["tags"]["team"] == "ops"
    rest = d.request("GET", "/api/v1/workflow-runs", params={"tag": "env:prod", "limit": 1, "cursor": page["nextCursor"]}).json()
    assert [r["id"] for r in rest["runs"]] == [a["id"]] and rest["nextCursor"] is None


def test_batch_items_take_correlation_and_tags(d: Daemon) -> None:
    resp = d.request("POST", "/api/v1/workflow-runs:batch", json={"runs": [
        {"workflowId": "tiny", "correlationId": "batch-7", "tags": {"k": "v"}},
        {"workflowId": "tiny", "tags": {"k": 3}},
    ]})
    assert resp.status_code == 200, resp.text
    first, second = resp.json()["results"]
    assert first["status"] == 201 and first["run"]["correlationId"] == "batch-7"
    assert second["status"] == 400 and "tags.k" in second["error"]["message"]
    assert _ids(d, correlationId="batch-7", tag="k:v") == [first["run"]["id"]]


@pytest.mark.parametrize("body, field", [
    ({"correlationId": ""}, "correlationId"),
    ({"correlationId": "x" * 300}, "correlationId"),
    ({"tags": ["a"]}, "tags"),
    ({"tags": {"a:b": "c"}}, "tags.a:b"),
    ({"tags": {f"t{i}": "v" for i in range(40)}}, "tags"),
])
def test_bad_correlation_or_tags_are_400(d: Daemon, body: dict, field: str) -> None:
    resp = d.request("POST", "/api/v1/workflow-runs", json={"workflowId": "tiny", **body})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["details"]["field"] == field


@pytest.mark.parametrize("params", [{"startedAfter": "yesterday"}, {"tag": "novalue"}, {"startedBefore": "2026-13-01"}])
def test_bad_list_filters_are_400(d: Daemon, params: dict) -> None:
    resp = httpx.get(d.base + "/api/v1/workflow-runs", params=params, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_request", resp.text
