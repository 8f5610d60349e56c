"""Outgoing webhooks against a real HTTP receiver on 127.0.0.1: signed deliveries, filters, a receiver
that fails then recovers, a dead letter and its redelivery, a receiver that never answers (runs are not
slowed, other subscriptions keep flowing), the environment's `webhooks:` section, and a kill -9 with
deliveries pending (none lost, ids stable). One daemon for the module; the kill test runs last."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, wait_until
from tests.receivers import Receiver, serving

CHROMIUM = Path("/usr/bin/chromium")
SECRET = "whsec-test-secret-0123456789"
ENV_SECRET = "env-secret-abcdefghijklmnop"

FLOW = """\
id: {id}
start: a
states:
  - {{name: a, type: inject, data: {{x: 1}}, next: b}}
  - {{name: b, type: inject, data: {{y: 2}}, end: true}}
"""


@pytest.fixture(scope="module")
def rec() -> Iterator[Receiver]:
    with serving(Receiver()) as r:
        yield r


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory, rec: Receiver) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("webhooks")
    env_dir = root / "environments" / "default"
    (env_dir / "agents").mkdir(parents=True)
    daemon = Daemon(root, None, {"STATION_WEBHOOK_BACKOFF_SECONDS": "0.2", "STATION_WEBHOOK_MAX_BACKOFF_SECONDS": "0.5",
                                 "WH_ENV_SECRET": ENV_SECRET})
    for wf in ("wh_a", "wh_b", "wh_c", "wh_d", "wh_e", "wh_f", "wh_g"):
        daemon.add_workflow(wf, FLOW.format(id=wf))
    (env_dir / "integrations.yaml").write_text(f"""\
webhooks:
  - name: ops
    url: {rec.url('/env')}
    events: [run.completed]
    workflows: [wh_e]
    secretEnv: WH_ENV_SECRET
  - name: broken
    url: ftp://nope
""")
    daemon.start()
    yield daemon
    if daemon.proc is not None and daemon.proc.poll() is None:
        assert daemon.stop() == 0, daemon.log()  # a clean stop with POSTs in flight (the never-answering receiver)


def subscribe(d: Daemon, **body: Any) -> dict[str, Any]:
    resp = d.request("POST", "/api/v1/webhook-subscriptions", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()["subscription"]


def deliveries(d: Daemon, sub_id: str) -> list[dict[str, Any]]:
    resp = d.request("GET", "/api/v1/webhook-deliveries", params={"subscriptionId": sub_id})
    assert resp.status_code == 200, resp.text
    return resp.json()["deliveries"]


def delivery(d: Daemon, delivery_id: str) -> dict[str, Any]:
    resp = d.request("GET", f"/api/v1/webhook-deliveries/{delivery_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()["delivery"]


def verify(secret: str, request: dict[str, Any]) -> bool:
    h = request["headers"]
    mac = hmac.new(secret.encode(), h["x-station-timestamp"].encode() + b"." + request["raw"], hashlib.sha256)
    return hmac.compare_digest("sha256=" + mac.hexdigest(), h["x-station-signature"])


def test_signed_delivery_filtered_by_workflow_and_event(d: Daemon, rec: Receiver) -> None:
    sub = subscribe(d, url=rec.url("/signed"), events=["run.completed", "run.failed"], workflows=["wh_a"], secret=SECRET)
    assert sub["signed"] is True and "secret" not in sub
    other = d.start_run("wh_b")   # another workflow: not delivered
    run = d.start_run("wh_a")
    assert run["status"] == "COMPLETED"
    got = wait_until(lambda: rec.got("/signed"), 15, what="a signed delivery")
    req = got[0]
    assert verify(SECRET, req)
    assert not verify("another-secret-value-xyz", req)
    body = req["body"]
    assert body["event"] == "run.completed" and body["data"]["runId"] == run["id"]
    assert body["data"]["workflowId"] == "wh_a" and body["data"]["runStatus"] == "COMPLETED"
    assert req["headers"]["x-station-delivery"] == body["id"] == f"{sub['id']}:{body['id'].split(':')[-1]}"
    assert abs(int(req["headers"]["x-station-timestamp"]) - time.time()) < 60
    listed = wait_until(lambda: [x for x in deliveries(d, sub["id"]) if x["status"] == "delivered"], 10, what="log")
    assert [x["runId"] for x in deliveries(d, sub["id"])] == [run["id"]]   # one event, one workflow: one delivery
    assert other["id"] not in {x["runId"] for x in listed}
    one = delivery(d, body["id"])
    assert one["attempts"] == 1 and one["attemptLog"][0]["responseStatus"] == 200 and one["payload"] == body


def test_receiver_fails_then_recovers(d: Daemon, rec: Receiver) -> None:
    rec.fail_first["/flaky"] = 2
    sub = subscribe(d, url=rec.url("/flaky"), events=["run.completed"], workflows=["wh_c"], maxAttempts=5)
    run = d.start_run("wh_c")
    wait_until(lambda: rec.got("/flaky"), 20, what="the delivery after two failures")
    tried = rec.got("/flaky", status=None)
    assert [r["status"] for r in tried] == [500, 500, 200]
    assert len({r["headers"]["x-station-delivery"] for r in tried}) == 1       # one delivery id across attempts
    assert [r["headers"]["x-station-attempt"] for r in tried] == ["1", "2", "3"]
    (listed,) = wait_until(lambda: [x for x in deliveries(d, sub["id"]) if x["status"] == "delivered"], 10, what="log")
    log = delivery(d, listed["id"])["attemptLog"]
    assert [a["responseStatus"] for a in log] == [500, 500, 200] and listed["runId"] == run["id"]


def test_dead_letter_then_redeliver(d: Daemon, rec: Receiver) -> None:
    rec.failing.add("/down")
    sub = subscribe(d, url=rec.url("/down"), events=["run.completed"], workflows=["wh_d"], maxAttempts=2)
    d.start_run("wh_d")
    (dead,) = wait_until(lambda: [x for x in deliveries(d, sub["id"]) if x["status"] == "dead"], 20, what="a dead letter")
    assert dead["attempts"] == 2 and dead["lastStatus"] == 500
    time.sleep(0.6)  # longer than the back-off: a dead delivery is not tried again on its own
    assert len(rec.got("/down", status=None)) == 2
    rec.failing.discard("/down")
    resp = d.request("POST", f"/api/v1/webhook-deliveries/{dead['id']}/redeliver")
    assert resp.status_code == 202, resp.text
    wait_until(lambda: rec.got("/down"), 10, what="the redelivery")
    after = delivery(d, dead["id"])
    assert after["status"] == "delivered" and after["attempts"] == 3
    assert rec.got("/down")[0]["headers"]["x-station-delivery"] == dead["id"]
    assert d.request("POST", "/api/v1/webhook-deliveries/nope:1/redeliver").status_code == 404


def test_receiver_that_never_answers_slows_nothing(d: Daemon, rec: Receiver) -> None:
    rec.hanging.add("/hang")
    hung = subscribe(d, url=rec.url("/hang"), events=["run.completed"], workflows=["wh_f"], timeoutSeconds=0.5, maxAttempts=2,
                     maxConcurrency=1)
    fine = subscribe(d, url=rec.url("/fine"), events=["run.completed"], workflows=["wh_f"])
    runs = [d.start_run("wh_f") for _ in range(5)]
    assert all(r["status"] == "COMPLETED" for r in runs)  # decided in their POSTs, webhooks or not
    wait_until(lambda: len(rec.got("/fine")) == 5, 15, what="the other subscription's deliveries")
    assert {r["body"]["data"]["runId"] for r in rec.got("/fine")} == {r["id"] for r in runs}
    dead = wait_until(lambda: [x for x in deliveries(d, hung["id"]) if x["status"] == "dead"], 30, what="timeouts")
    one = delivery(d, dead[0]["id"])
    assert "Timeout" in (one["attemptLog"][0]["error"] or ""), one
    assert deliveries(d, fine["id"]) and all(x["status"] == "delivered" for x in deliveries(d, fine["id"]))


def test_environment_webhooks_section(d: Daemon, rec: Receiver) -> None:
    subs = {s["id"]: s for s in d.request("GET", "/api/v1/webhook-subscriptions").json()["subscriptions"]}
    assert subs["env:ops"]["source"] == "env" and subs["env:ops"]["signed"] is True
    assert "env:broken" not in subs  # the bad entry was skipped, and said so
    assert "webhooks[1].url" in d.log() and "integrations.yaml" in d.log()
    run = d.start_run("wh_e")
    (req,) = wait_until(lambda: rec.got("/env"), 15, what="the environment's subscription")
    assert verify(ENV_SECRET, req) and req["body"]["data"]["runId"] == run["id"]
    assert d.request("DELETE", "/api/v1/webhook-subscriptions/env:ops").status_code == 409


def test_bad_subscriptions_are_refused(d: Daemon, rec: Receiver) -> None:
    before = d.request("GET", "/api/v1/webhook-subscriptions").json()["subscriptions"]
    for body, field in [({"url": "ftp://x"}, "url"), ({"url": rec.url("/x"), "events": ["nope"]}, "events"),
                        ({"url": rec.url("/x"), "secret": "short"}, "secret"), ({"url": rec.url("/x"), "colour": 1}, None),
                        ({"url": rec.url("/x"), "maxAttempts": 0}, "maxAttempts")]:
        resp = d.request("POST", "/api/v1/webhook-subscriptions", json=body)
        assert resp.status_code == 400, resp.text
        err = resp.json()["error"]
        assert err["code"] == "invalid_request" and err["request_id"]
        if field:
            assert err["details"]["field"] == field
    assert d.request("GET", "/api/v1/webhook-subscriptions").json()["subscriptions"] == before
    made = subscribe(d, id="dupe", url=rec.url("/x"))
    assert d.request("POST", "/api/v1/webhook-subscriptions", json={"id": "dupe", "url": rec.url("/x")}).status_code == 409
    assert d.request("DELETE", f"/api/v1/webhook-subscriptions/{made['id']}").status_code == 204
    assert d.request("GET", "/api/v1/webhook-subscriptions/dupe").status_code == 404


def test_dashboard_shows_the_delivery_log_and_redelivers(d: Daemon, rec: Receiver) -> None:
    """The dashboard's #/webhooks page in a real Chromium: subscriptions, deliveries, attempts, redeliver."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    dead = [x for x in d.request("GET", "/api/v1/webhook-deliveries", params={"status": "dead"}).json()["deliveries"]]
    assert dead, "an earlier test leaves dead letters"
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.set_default_timeout(15_000)
        page.goto(d.base + "/#/webhooks")
        sync_api.expect(page.locator("#webhook-subscriptions tr[data-subscription='env:ops']")).to_be_visible()
        row = page.locator(f"#webhook-deliveries tr[data-delivery='{dead[0]['id']}']")
        sync_api.expect(row).to_have_attribute("data-status", "dead")
        row.locator("td").first.click()
        sync_api.expect(page.locator("tr.delivery-open .delivery-detail table")).to_be_visible()
        row.locator("button[data-redeliver]").click()
        wait_until(lambda: delivery(d, dead[0]["id"])["attempts"] > dead[0]["attempts"], 15, what="the redelivery")
        browser.close()
    assert errors == []


def test_kill9_with_deliveries_pending_loses_none(d: Daemon, rec: Receiver, tmp_path: Path) -> None:
    rec.failing.add("/later")
    sub = subscribe(d, url=rec.url("/later"), events=["run.completed"], workflows=["wh_g"], maxAttempts=100)
    runs = [d.start_run("wh_g")["id"] for _ in range(4)]
    wait_until(lambda: len({r["headers"]["x-station-delivery"] for r in rec.got("/later", status=None)}) == 4, 15,
               what="all four deliveries tried")
    d.kill()
    rec.failing.discard("/later")
    d.start()
    wait_until(lambda: {r["body"]["data"]["runId"] for r in rec.got("/later")} == set(runs), 20,
               what="every pending delivery after the restart")
    ids = {r["headers"]["x-station-delivery"] for r in rec.got("/later", status=None)}
    assert len(ids) == 4  # at least once, under the same ids: a receiver de-duplicates on them
    assert all(x["status"] == "delivered" for x in deliveries(d, sub["id"]))
