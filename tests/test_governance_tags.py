"""Correlation ids and tags on start, and the run list's filters by them and by start time (OKRA's
QueryOptions), with cursor paging as before; on the same daemon, the start and signal rate limits
(429 with Retry-After) and the default run duration."""

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
HOLD = """
id: {id}
{timeout}start: hold
states:
  - {{ name: hold, type: operation, action: signal.wait, input: {{ signal: go }}, end: true }}
"""
STARTS_PER_HOUR = 12


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("tags")
    (root / "environments" / "default" / "agents").mkdir(parents=True)
    daemon = Daemon(root, None, {"STATION_RUN_RATE_LIMIT": f"{STARTS_PER_HOUR}/hour", "STATION_SIGNAL_RATE_LIMIT": "2/hour",
                                 "STATION_RUN_TIMEOUT_DEFAULT_SECONDS": "1"})
    daemon.add_workflow("tiny", TINY)
    daemon.add_workflow("rated", HOLD.format(id="rated", timeout="timeoutSeconds: 60\n"))
    daemon.add_workflow("endless", HOLD.format(id="endless", timeout=""))
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


def test_rate_limits_answer_429_with_retry_after(d: Daemon) -> None:
    made = [d.start_run("rated") for _ in range(STARTS_PER_HOUR)]
    refused = d.request("POST", "/api/v1/workflow-runs", json={"workflowId": "rated"})
    assert refused.status_code == 429, refused.text
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    error = refused.json()["error"]
    assert error["code"] == "rate_limited" and f"{STARTS_PER_HOUR}/hour" in error["message"]
    keyed = d.request("POST", "/api/v1/workflow-runs", json={"workflowId": "rated"}, headers={"Idempotency-Key": "k-429"})
    assert keyed.status_code == 429 and "Retry-After" in keyed.headers
    batch = d.request("POST", "/api/v1/workflow-runs:batch", json={"runs": [{"workflowId": "rated"}]}).json()
    assert batch["results"][0]["status"] == 429
    assert len(_ids(d, workflowId="rated")) == STARTS_PER_HOUR  # a refused start wrote nothing
    d.wait_status(made[0]["id"], "WAITING_SIGNAL")
    codes = [d.request("POST", f"/api/v1/workflow-runs/{made[0]['id']}/signals", json={"name": "x"}).status_code
             for _ in range(3)]
    assert codes == [202, 202, 429], codes


def test_a_run_without_a_timeout_gets_the_default(d: Daemon) -> None:
    run = d.start_run("endless")
    ended = d.wait_status(run["id"], "TIMED_OUT", timeout=20)
    assert "timed out after 1s" in ended["error"]["message"]
