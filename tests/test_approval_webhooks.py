"""Approval webhooks against a real HTTP receiver on 127.0.0.1: payload, HMAC, retries with back-off,
the attempts in the API, and a daemon killed with deliveries pending loses none."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from station_wf.bus.nats_server import free_port
from tests.conftest import Daemon, wait_until

SECRET = "s3cret-for-tests"

GATED = """\
id: gated
start: ask
states:
  - id: ask
    type: human_approval
    approval_title: "Deploy?"
    message: "Ship {{ service }}?"
    timeout: 1h
    transition: done
  - {id: done, type: inject, data: {shipped: true}, end: true}
"""


@dataclass
class Receiver:
    port: int
    fail_first: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def bodies(self, event: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [r["body"] for r in self.received if r["status"] == 200 and (event is None or r["body"]["event"] == event)]


def _serve(receiver: Receiver) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                status = 500 if receiver.fail_first > 0 else 200
                receiver.fail_first -= 1 if status == 500 else 0
                receiver.received.append({"headers": dict(self.headers), "raw": raw, "body": json.loads(raw), "status": status})
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", receiver.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(free_port())
    server = _serve(rec)
    yield rec
    server.shutdown()
    server.server_close()


def _env(receiver: Receiver) -> dict[str, str]:
    return {"STATION_APPROVAL_WEBHOOK_URLS": receiver.url, "STATION_APPROVAL_WEBHOOK_SECRET": SECRET,
            "STATION_APPROVAL_WEBHOOK_BACKOFF_SECONDS": "0.2", "STATION_PUBLIC_URL": "https://station.example"}


def _approval(daemon: Daemon, run_id: str) -> dict[str, Any]:
    return wait_until(lambda: next(iter(daemon.request("GET", f"/api/v1/workflow-runs/{run_id}/approvals").json()["approvals"]), None),
                      what="the approval")


def test_requested_and_decided_are_posted_signed_and_retried(daemon: Daemon, receiver: Receiver) -> None:
    receiver.fail_first = 2  # the first two attempts get HTTP 500: retried with back-off
    daemon.add_workflow("gated", GATED)
    daemon.env.update(_env(receiver))
    daemon.start()
    run = daemon.start_run("gated", {"service": "api"})
    approval = _approval(daemon, run["id"])
    wait_until(lambda: receiver.bodies("approval.requested"), what="approval.requested delivered")
    (requested,) = receiver.bodies("approval.requested")
    assert requested["approval_id"] == approval["id"] and requested["run_id"] == run["id"]
    assert requested["workflow_id"] == "gated" and requested["step_name"] == "ask"
    assert requested["message"] == "Deploy?\n\nShip api?"
    assert requested["approve_url"] == f"https://station.example/api/v1/workflow-approvals/{approval['id']}/approve"
    assert requested["reject_url"].endswith(f"/workflow-approvals/{approval['id']}/reject")
    assert requested["timeout_at"] == approval["expiresAt"]
    last = receiver.received[2]
    stamp = last["headers"]["X-Station-Timestamp"]
    expected = "sha256=" + hmac.new(SECRET.encode(), stamp.encode() + b"." + last["raw"], hashlib.sha256).hexdigest()
    assert last["headers"]["X-Station-Signature"] == expected
    assert [r["headers"]["X-Station-Delivery"] for r in receiver.received[:3]] == [last["headers"]["X-Station-Delivery"]] * 3

    (delivery,) = daemon.request("GET", f"/api/v1/workflow-approvals/{approval['id']}/deliveries").json()["deliveries"]
    assert delivery["status"] == "delivered" and delivery["attempts"] == 3
    assert [a["responseStatus"] for a in delivery["attemptLog"]] == [500, 500, 200]

    daemon.request("POST", f"/api/v1/workflow-approvals/{approval['id']}/approve", json={"comment": "go"}).raise_for_status()
    daemon.wait_status(run["id"])
    wait_until(lambda: receiver.bodies("approval.decided"), what="approval.decided delivered")
    (decided,) = receiver.bodies("approval.decided")
    assert decided["decision"] == "approved" and decided["comment"] == "go" and decided["approval_id"] == approval["id"]


def test_a_restart_loses_no_pending_delivery(daemon: Daemon, receiver: Receiver) -> None:
    receiver.fail_first = 10**6  # down for now: every attempt fails
    daemon.add_workflow("gated", GATED)
    daemon.env.update(_env(receiver))
    daemon.start()
    run = daemon.start_run("gated", {"service": "db"})
    approval = _approval(daemon, run["id"])
    wait_until(lambda: len(receiver.received) >= 1, what="a first failed attempt")
    daemon.kill()  # kill -9 with the delivery pending
    receiver.fail_first = 0
    daemon.start()
    wait_until(lambda: receiver.bodies("approval.requested"), timeout=30, what="delivered after the restart")
    assert [b["approval_id"] for b in receiver.bodies()] == [approval["id"]]  # once, for the one approval
    (delivery,) = daemon.request("GET", f"/api/v1/workflow-approvals/{approval['id']}/audit").json()["deliveries"]
    assert delivery["status"] == "delivered" and delivery["attemptLog"][-1]["responseStatus"] == 200
    assert len(receiver.received) >= 2  # the failed attempt before the kill, the delivered one after


TIMING_OUT = """\
id: timing-out
start: ask
states:
  - {id: ask, type: human_approval, message: "Quick?", timeout: 1s, transition: route}
  - id: route
    type: switch
    dataPath: approval
    conditions: [{if: "decision == 'timed_out'", next: late}]
    defaultNext: late
  - {id: late, type: inject, data: {late: true}, end: true}
"""


def test_a_timed_out_approval_is_notified(daemon: Daemon, receiver: Receiver) -> None:
    daemon.add_workflow("timing-out", TIMING_OUT.replace("transition: route}", "resultPath: approval, transition: route}"))
    daemon.env.update(_env(receiver))
    daemon.start()
    run = daemon.start_run("timing-out")
    daemon.wait_status(run["id"])  # the switch after it routes on the decision: the run goes on
    wait_until(lambda: receiver.bodies("approval.timed_out"), what="approval.timed_out delivered")
    (timed_out,) = receiver.bodies("approval.timed_out")
    assert timed_out["decision"] == "timed_out" and timed_out["run_id"] == run["id"]
    assert [b["event"] for b in receiver.bodies()] == ["approval.requested", "approval.timed_out"]
