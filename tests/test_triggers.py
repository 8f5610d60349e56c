"""Incoming hooks (`POST /api/v1/hooks/{name}`) against a real daemon: GitHub-, Stripe- and Station-style
signatures good and bad, the replay window, idempotency keys from a header or a payload field, a bearer
token, the input mapping, a workflow id used as a hook, and API tokens (hooks verify themselves)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Daemon

GH_SECRET = "github-hook-secret-0123456789"
ST_SECRET = "station-hook-secret-012345678"
STRIPE_SECRET = "whsec_stripe_secret_0123456789"
TOKEN = "hook-bearer-token-0123456789"
API = "api-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {API}"}

FLOW = """\
id: {id}
inputSchema: {{type: object, properties: {{repo: {{type: string}}}}, required: [repo]}}
start: a
states:
  - {{name: a, type: inject, data: {{seen: true}}, end: true}}
"""
PLAIN = """\
id: trig_plain
start: a
states:
  - {name: a, type: inject, data: {seen: true}, end: true}
"""

HOOKS = f"""\
hooks:
  - name: gh
    workflow: trig_gh
    verify: {{type: hmac, format: github, secretEnv: GH_SECRET}}
    input:
      repo: $.repository.full_name
      ref: "{{{{ ref }}}}"
      note: "push to {{{{ repository.full_name }}}} by {{{{ pusher.name }}}}"
      source: github
  - name: st
    workflow: trig_st
    verify: {{type: hmac, secret: {ST_SECRET}}}
    input: {{repo: $.repo}}
    idempotencyKey: {{path: $.id}}
  - name: stripe
    workflow: trig_st
    verify: {{type: hmac, format: stripe, secret: {STRIPE_SECRET}}}
    input: {{repo: $.data.object.id}}
  - name: tok
    workflow: trig_st
    verify: {{type: bearer, token: {TOKEN}}}
    input: {{repo: $.repo}}
    idempotencyKey: {{header: X-Request-Key}}
  - name: bad
    workflow: trig_st
    input: {{repo: "{{{{ repo.upper() }}}}"}}
"""


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon with API tokens on: hooks that verify themselves need none, the rest of the API does."""
    root = tmp_path_factory.mktemp("triggers")
    (root / "environments" / "default" / "agents").mkdir(parents=True)
    daemon = Daemon(root, None, {"GH_SECRET": GH_SECRET, "STATION_API_TOKEN": API})
    daemon.add_workflow("trig_gh", FLOW.format(id="trig_gh"))
    daemon.add_workflow("trig_st", FLOW.format(id="trig_st"))
    daemon.add_workflow("trig_plain", PLAIN)
    (root / "environments" / "default" / "integrations.yaml").write_text(HOOKS)
    daemon.start()
    yield daemon
    daemon.kill()  # test_webhooks_out checks the clean stop


def post(d: Daemon, name: str, raw: bytes, headers: dict[str, str]) -> httpx.Response:
    return d.request("POST", f"/api/v1/hooks/{name}", content=raw, headers={"Content-Type": "application/json", **headers})


def runs_of(d: Daemon, workflow: str) -> list[dict[str, Any]]:
    return d.request("GET", "/api/v1/workflow-runs", params={"workflowId": workflow}, headers=AUTH).json()["runs"]


def gh_headers(raw: bytes, delivery: str, secret: str = GH_SECRET) -> dict[str, str]:
    sig = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": sig, "X-GitHub-Delivery": delivery, "X-GitHub-Event": "push"}


def st_headers(raw: bytes, stamp: int, secret: str = ST_SECRET) -> dict[str, str]:
    sig = "sha256=" + hmac.new(secret.encode(), f"{stamp}.".encode() + raw, hashlib.sha256).hexdigest()
    return {"X-Station-Signature": sig, "X-Station-Timestamp": str(stamp)}


def test_github_signature_mapping_and_replay(d: Daemon) -> None:
    raw = json.dumps({"ref": "refs/heads/main", "repository": {"full_name": "acme/api"}, "pusher": {"name": "ada"}}).encode()
    first = post(d, "gh", raw, gh_headers(raw, "delivery-1"))
    assert first.status_code == 201, first.text
    run = first.json()["run"]
    assert run["status"] == "COMPLETED" and first.headers["location"].endswith(run["id"])
    assert run["input"] == {"repo": "acme/api", "ref": "refs/heads/main", "note": "push to acme/api by ada", "source": "github"}
    again = post(d, "gh", raw, gh_headers(raw, "delivery-1"))  # GitHub's redelivery: same delivery id
    assert again.status_code == 201 and again.headers.get("idempotent-replayed") == "true"
    assert again.json()["run"]["id"] == run["id"]
    bad = post(d, "gh", raw, gh_headers(raw, "delivery-2", secret="not-the-secret-at-all"))
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_signature"
    tampered = post(d, "gh", raw.replace(b"ada", b"eve"), gh_headers(raw, "delivery-3"))
    assert tampered.status_code == 401
    missing = post(d, "gh", raw, {"X-GitHub-Delivery": "delivery-4"})
    assert missing.status_code == 401 and "X-Hub-Signature-256" in missing.json()["error"]["message"]
    assert [r["id"] for r in runs_of(d, "trig_gh")] == [run["id"]]


def test_station_signature_replay_window_and_payload_key(d: Daemon) -> None:
    raw = json.dumps({"id": "evt-42", "repo": "acme/web"}).encode()
    now = int(time.time())
    first = post(d, "st", raw, st_headers(raw, now))
    assert first.status_code == 201, first.text
    run_id = first.json()["run"]["id"]
    later = post(d, "st", raw, st_headers(raw, now + 1))  # re-sent, signed anew: same $.id, same run
    assert later.status_code == 201 and later.headers.get("idempotent-replayed") == "true"
    assert later.json()["run"]["id"] == run_id
    old = json.dumps({"id": "evt-43", "repo": "acme/web"}).encode()
    stale = post(d, "st", old, st_headers(old, now - 1000))  # a valid signature, captured 16 minutes ago
    assert stale.status_code == 401 and "replay window" in stale.json()["error"]["message"]
    assert post(d, "st", old, st_headers(old, now + 1000)).status_code == 401
    assert post(d, "st", old, {"X-Station-Signature": st_headers(old, now)["X-Station-Signature"]}).status_code == 401
    other = post(d, "st", old, st_headers(old, now))
    assert other.status_code == 201 and other.json()["run"]["id"] != run_id
    no_repo = json.dumps({"id": "evt-44"}).encode()
    missing = post(d, "st", no_repo, st_headers(no_repo, now))
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "invalid_payload"


def test_stripe_signature(d: Daemon) -> None:
    raw = json.dumps({"id": "evt_1", "data": {"object": {"id": "cus_9"}}}).encode()
    stamp = int(time.time())
    v1 = hmac.new(STRIPE_SECRET.encode(), f"{stamp}.".encode() + raw, hashlib.sha256).hexdigest()
    ok = post(d, "stripe", raw, {"Stripe-Signature": f"t={stamp},v1=deadbeef,v1={v1}"})
    assert ok.status_code == 201, ok.text
    assert ok.json()["run"]["input"] == {"repo": "cus_9"}
    assert post(d, "stripe", raw, {"Stripe-Signature": f"t={stamp},v1=deadbeef"}).status_code == 401
    assert post(d, "stripe", raw, {"Stripe-Signature": f"t={stamp - 3600},v1={v1}"}).status_code == 401


def test_bearer_hook_and_header_key(d: Daemon) -> None:
    raw = json.dumps({"repo": "acme/ops"}).encode()
    assert post(d, "tok", raw, {"X-Request-Key": "k1"}).status_code == 401
    assert post(d, "tok", raw, {"Authorization": "Bearer wrong-token-0123456789", "X-Request-Key": "k1"}).status_code == 401
    ok = post(d, "tok", raw, {"Authorization": f"Bearer {TOKEN}", "X-Request-Key": "k1"})
    assert ok.status_code == 201, ok.text
    same = post(d, "tok", raw, {"Authorization": f"Bearer {TOKEN}", "X-Request-Key": "k1"})
    assert same.json()["run"]["id"] == ok.json()["run"]["id"]
    reused = post(d, "tok", b'{"repo": "acme/other"}', {"Authorization": f"Bearer {TOKEN}", "X-Request-Key": "k1"})
    assert reused.status_code == 422 and reused.json()["error"]["code"] == "idempotency_key_reused"
    no_key = post(d, "tok", raw, {"Authorization": f"Bearer {TOKEN}"})
    assert no_key.status_code == 400 and "X-Request-Key" in no_key.json()["error"]["message"]


def test_workflow_id_as_hook_needs_the_api_token_and_bad_requests(d: Daemon) -> None:
    assert post(d, "trig_plain", b"{}", {}).status_code == 401       # no verify of its own: the API token it is
    ok = post(d, "trig_plain", b'{"anything": [1, 2]}', AUTH)
    assert ok.status_code == 201 and ok.json()["run"]["input"] == {"anything": [1, 2]}
    assert post(d, "no_such_workflow", b"{}", AUTH).status_code == 404
    assert post(d, "trig_plain", b"{not json", AUTH).status_code == 400
    assert post(d, "trig_gh", b'{"repo": 1}', {}).status_code == 401  # the workflow id as a hook: the token again
    assert post(d, "trig_gh", b'{"repo": 1}', AUTH).status_code == 400  # its input schema still holds
    assert "hooks[4].input.repo" in d.log()  # a template that is not a path: refused at load, named
    assert post(d, "bad", b'{"repo": "x"}', AUTH).status_code == 404  # so no hook of that name exists
    assert d.request("GET", "/api/v1/webhook-subscriptions").status_code == 401  # the rest stays behind the token
