"""Roles through the daemon: every route of the permission table, asked by each role; 403 names the
missing permission; the table covers every route of the built app (a new route without a line fails)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from starlette.routing import Route

from station_wf.api.app import build_app
from station_wf.api.auth import TokenTable, TokenTableError
from station_wf.governance.permissions import ROUTE_PERMISSIONS, MissingPermission
from station_wf.governance.roles import GRANTS, PUBLIC, ROLES
from tests.conftest import Daemon

TOKENS = {f"{role}-token-0123456789": {"principal": f"{role}-user", "groups": [], "roles": [role]} for role in ROLES}
TOKENS["legacy-token-0123456789"] = {"principal": "old", "groups": []}  # no roles: admin, as before
HEADERS = {role: {"Authorization": f"Bearer {role}-token-0123456789"} for role in ROLES}

TINY = """
id: tiny
start: a
states:
  - { name: a, type: inject, data: { x: 1 }, end: true }
"""


def _fake_state(extra: list[Route] | None = None) -> SimpleNamespace:
    return SimpleNamespace(agents=None, extra_routes=extra or [], tokens=TokenTable({}), loopback=None, max_sse=1,
                           integrations=object())  # its routes are there: they need permissions too


def _declared_routes(app: object) -> list[tuple[str, str]]:
    inner = app.app  # RequestContext -> Starlette
    return [(m, r.path) for r in inner.routes if isinstance(r, Route) for m in (r.methods or ()) if m != "HEAD"]


def test_every_route_of_the_app_declares_a_permission() -> None:
    async def extra(request: object) -> None:  # pragma: no cover - never called
        return None

    app = build_app(_fake_state([Route("/metrics", extra, methods=["GET"]), Route("/api/v1/leases", extra, methods=["GET"])]))
    routes = _declared_routes(app)
    assert len(routes) > 40
    for method, path in routes:
        assert path == "/api/{rest:path}" or (method, path) in ROUTE_PERMISSIONS, (method, path)
    with pytest.raises(MissingPermission, match="/api/v1/undeclared"):
        build_app(_fake_state([Route("/api/v1/undeclared", extra, methods=["POST"])]))


def test_tokens_file_roles_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"x" * 20: {"principal": "p", "roles": ["superuser"]}}))
    with pytest.raises(TokenTableError, match="unknown role 'superuser'"):
        TokenTable.load(None, str(path))
    path.write_text(json.dumps({"x" * 20: {"principal": "p", "roles": []}}))
    with pytest.raises(TokenTableError, match="non-empty list"):
        TokenTable.load(None, str(path))
    path.write_text(json.dumps({"x" * 20: {"principal": "p", "roles": ["viewer", "operator"]}}))
    principal = TokenTable.load("a" * 20, str(path)).authenticate("Bearer " + "x" * 20)
    assert principal is not None and principal.roles == ("viewer", "operator")
    admin = TokenTable.load("a" * 20, None).authenticate("Bearer " + "a" * 20)
    assert admin is not None and admin.roles == ("admin",)


@pytest.fixture(scope="module")
def authed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("roles")
    (root / "environments" / "default" / "agents").mkdir(parents=True)
    tokens = root / "tokens.json"
    tokens.write_text(json.dumps(TOKENS))
    d = Daemon(root, None, {"STATION_API_TOKENS_FILE": str(tokens)})
    d.add_workflow("tiny", TINY)
    d.start()
    yield d
    d.stop()


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "nope", path)


def _ask(d: Daemon, method: str, path: str, headers: dict[str, str]) -> int:
    url = d.base + _concrete(path)
    if path.endswith("/stream") or path == "/mcp":  # streams: the status line is the answer
        with httpx.stream(method, url, headers=headers, timeout=10, **({"json": {}} if method == "POST" else {})) as resp:
            return resp.status_code
    body = {"json": {}} if method in ("POST", "PUT") else {}
    return httpx.request(method, url, headers=headers, timeout=15, **body).status_code


def test_each_role_on_each_route(authed: Daemon) -> None:
    """A role without the permission gets 403 naming it; a role with it never gets 403 (its answer is
    the handler's: 404 for the made-up ids, 400 for the empty bodies, 200 for lists)."""
    asks = [(method, path, permission, role) for (method, path), permission in sorted(ROUTE_PERMISSIONS.items())
            for role in ROLES]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda a: _ask(authed, a[0], a[1], HEADERS[a[3]]), asks))
    for (method, path, permission, role), status in zip(asks, statuses, strict=True):
        if path == "/api/v1/hooks/{name}":  # public for a hook that verifies its caller; else the API's runs:start
            permission = "runs:start"
        allowed = permission == PUBLIC or permission in GRANTS[role]
        assert (status == 403) is (not allowed), (role, method, path, status)
    assert len(asks) > 150
    denied = httpx.post(authed.base + "/api/v1/workflows", headers=HEADERS["operator"], json={}, timeout=15)
    error = denied.json()["error"]
    assert error["code"] == "forbidden" and "'workflows:write'" in error["message"]
    assert error["details"] == {"permission": "workflows:write", "roles": ["operator"], "grantedBy": ["author", "admin"]}


def test_roles_do_what_they_say(authed: Daemon) -> None:
    """An operator starts and cancels runs but may not write workflows; a viewer reads only; a tokens
    entry without roles keeps admin."""
    start = {"workflowId": "tiny", "input": {}}
    assert httpx.post(authed.base + "/api/v1/workflow-runs", headers=HEADERS["viewer"], json=start).status_code == 403
    made = httpx.post(authed.base + "/api/v1/workflow-runs", headers=HEADERS["operator"], json=start)
    assert made.status_code == 201, made.text
    run_id = made.json()["run"]["id"]
    seen = httpx.get(f"{authed.base}/api/v1/workflow-runs/{run_id}", headers=HEADERS["viewer"])
    assert seen.status_code == 200 and seen.json()["status"] == "COMPLETED"
    legacy = {"Authorization": "Bearer legacy-token-0123456789"}
    assert httpx.put(authed.base + "/api/v1/workflows/tiny", headers=legacy, json={}).status_code != 403
    assert httpx.get(authed.base + "/metrics", headers=HEADERS["viewer"]).status_code == 403
    assert httpx.get(authed.base + "/metrics", headers=HEADERS["operator"]).status_code == 200
    assert httpx.get(authed.base + "/healthz").status_code == 200
