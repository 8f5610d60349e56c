"""The OpenAPI 3.1 document of a live daemon: valid (openapi-spec-validator), complete (every route of
the app has an operation, every operation a route), and the docs page served from packaged assets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from station_wf.api.app import ROUTES
from station_wf.api.openapi import OPERATIONS, app_operations, build_document
from station_wf.api.station_routes import station_handlers
from station_wf.client import ApiError, Client
from tests.conftest import PLAIN, Daemon

TOKEN = "openapi-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """With a token: the document and the docs page as a deployment serves them."""
    d = Daemon(Path(tmp_path_factory.mktemp("openapi")), None, {"STATION_API_TOKEN": TOKEN})
    d.add_workflow("plain", PLAIN)
    d.start()
    yield d
    d.kill()  # nothing to check in a graceful stop here; -9 is quicker


@pytest.fixture(scope="module")
def document(daemon: Daemon) -> dict:
    resp = daemon.request("GET", "/api/v1/openapi.json", headers=AUTH)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    return resp.json()


def test_the_document_is_valid_openapi_3_1(document: dict) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)  # raises on any violation of the 3.1 schema (JSON Schema 2020-12 included)
    ops = [op for item in document["paths"].values() for op in item.values()]
    assert len({op["operationId"] for op in ops}) == len(ops)
    assert document["components"]["securitySchemes"]["bearer"] == {**document["components"]["securitySchemes"]["bearer"],
                                                                   "type": "http", "scheme": "bearer"}


def test_every_route_of_the_live_app_has_an_operation_and_no_operation_lacks_a_route(document: dict) -> None:
    assert "x-undocumented" not in document, f"routes with no entry in api/openapi.py OPERATIONS: {document['x-undocumented']}"
    published = {(m.upper(), p) for p, item in document["paths"].items() for m in item}
    ours = {(op.method, op.path) for op in OPERATIONS}
    lacking = {(op.method, op.path) for op in OPERATIONS if not op.pending} - published
    assert not lacking, f"OPERATIONS entries the app has no route for: {sorted(lacking)}"
    assert published <= ours
    # the route tables the app is built from, each entry present (the daemon's own extras included)
    tables = [(m, p) for p, _, methods in ROUTES for m in methods] + [(m, p) for p, _, ms in station_handlers() for m in ms]
    assert set(tables) <= published
    assert {("GET", "/metrics"), ("GET", "/api/v1/leases"), ("GET", "/api/v1/agents")} <= published


def test_a_route_without_an_entry_is_named_and_an_entry_without_a_route_is_not_published() -> None:
    from starlette.routing import Route

    async def nothing(request):  # pragma: no cover - never called
        raise AssertionError

    served = app_operations([Route("/api/v1/workflow-runs/{run_id}", nothing, methods=["GET"]),
                             Route("/api/v1/brand-new", nothing, methods=["GET", "POST"])])
    doc = build_document(served)
    assert doc["x-undocumented"] == ["GET /api/v1/brand-new", "POST /api/v1/brand-new"]
    assert list(doc["paths"]) == ["/api/v1/workflow-runs/{run_id}"]  # HEAD is not an operation; the rest is absent


def test_the_document_describes_errors_auth_streams_and_bodies(document: dict) -> None:
    paths = document["paths"]
    error = document["components"]["schemas"]["Error"]["properties"]["error"]
    assert set(error["required"]) == {"code", "message", "details", "request_id"}
    for path, item in paths.items():
        for method, op in item.items():
            assert op["responses"]["default"] == {"$ref": "#/components/responses/Error"}, (method, path)
    stream = paths["/api/v1/workflow-runs/{run_id}/stream"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    assert any(p.get("name") == "Last-Event-ID" and p["in"] == "header" for p in stream["parameters"])
    assert "text/event-stream" in paths["/api/v1/workflow-runs/stream"]["get"]["responses"]["200"]["content"]
    start = paths["/api/v1/workflow-runs"]["post"]
    assert start["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/StartRun"}
    assert "201" in start["responses"] and {"$ref": "#/components/parameters/IdempotencyKey"} in start["parameters"]
    assert paths["/healthz"]["get"]["security"] == [] and document["security"] == [{"bearer": []}, {}]


def test_the_document_needs_the_token_like_the_rest_of_the_api(daemon: Daemon, document: dict) -> None:
    resp = daemon.request("GET", "/api/v1/openapi.json")
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized"
    with Client(daemon.base, token=TOKEN) as api:
        assert api.openapi() == document
    with Client(daemon.base, token="wrong-token-0123456789") as api, pytest.raises(ApiError) as err:
        api.list_runs()
    assert (err.value.status, err.value.code) == (401, "unauthorized")


def test_the_docs_page_is_served_from_packaged_assets(daemon: Daemon) -> None:
    page = daemon.request("GET", "/docs/")
    assert page.status_code == 200 and "swagger-ui-bundle.js" in page.text and "/docs/docs.js" in page.text
    assert "https://" not in page.text and "http://" not in page.text  # nothing from the network
    script = daemon.request("GET", "/docs/docs.js")
    assert script.status_code == 200 and "/api/v1/openapi.json" in script.text
    bundle = daemon.request("GET", "/docs/vendor/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and bundle.headers["content-type"].startswith("text/javascript")
    assert len(bundle.content) > 100_000 and b"SwaggerUIBundle" in bundle.content
    assert daemon.request("GET", "/docs/vendor/swagger-ui.css").status_code == 200
    for name in ("../../../etc/passwd", "index.html", "swagger-editor.js", "..%2F__init__.py"):
        resp = daemon.request("GET", f"/docs/vendor/{name}")
        assert resp.status_code == 404, (name, resp.status_code)


def test_the_document_can_be_read_without_the_daemon() -> None:
    """`build_document` over the static tables: what a generator may use offline."""
    served = [(m, p) for p, _, methods in ROUTES for m in methods]
    doc = build_document(served)
    assert "x-undocumented" not in doc
    validate(doc)
    assert "/api/v1/workflow-runs/{run_id}/stream" in doc["paths"]
