"""Nothing at the door can stall or poison the daemon: hostile bodies, schemas, hosts and streams,
each against a real daemon (subprocess, SQLite file, nats-server) over real HTTP."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from station_wf.principals import Principal, may_decide
from tests.conftest import PLAIN, WAITS, Daemon, wait_until

JSON = {"Content-Type": "application/json"}



def _err(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    body = resp.json()["error"]
    assert set(body) == {"code", "message", "details", "request_id"}
    if code is not None:
        assert body["code"] == code, body
    return body


def _db(d: Daemon) -> sqlite3.Connection:
    conn = sqlite3.connect(d.data_dir / "station-wf.db")
    conn.row_factory = sqlite3.Row
    return conn


def _count(d: Daemon, table: str) -> int:
    with _db(d) as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


# -- 1. definitions are parsed off the event loop ------------------------------------------------
def _chain(n: int, wf_id: str) -> bytes:
    states = [{"name": f"s{i}", "type": "inject", "data": {"i": i}, "next": f"s{i + 1}"} for i in range(n - 1)]
    states.append({"name": f"s{n - 1}", "type": "inject", "data": {}, "end": True})
    return json.dumps({"id": wf_id, "start": "s0", "states": states}).encode()


def test_healthz_stays_fast_while_big_definitions_are_validated(daemon: Daemon) -> None:
    daemon.start({"STATION_VALIDATION_TIMEOUT_SECONDS": "300"})  # this one is big, not hostile: let it finish
    body = _chain(12_500, "big")
    assert 800_000 < len(body) < 1 << 20
    done: dict[str, Any] = {}

    def post(path: str) -> None:
        t0 = time.monotonic()
        done[path] = httpx.post(daemon.base + path, content=body, headers=JSON, timeout=120)
        done[path + ":s"] = time.monotonic() - t0

    workers = [threading.Thread(target=post, args=(p,)) for p in ("/api/v1/workflows/validate", "/api/v1/workflows")]
    for w in workers:
        w.start()
    worst, polls = 0.0, 0
    deadline = time.monotonic() + 120
    while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
        t0 = time.monotonic()
        assert httpx.get(daemon.base + "/healthz", timeout=10).status_code == 200
        worst, polls = max(worst, time.monotonic() - t0), polls + 1
        time.sleep(0.05)
    for w in workers:
        w.join(10)
    assert done["/api/v1/workflows/validate"].status_code == 200
    assert done["/api/v1/workflows"].status_code in (201, 422), done["/api/v1/workflows"].text[:300]
    assert polls >= 3, f"validation was too quick to observe ({done})"
    assert worst < 1.0, f"/healthz took {worst:.2f}s while definitions were validated ({polls} polls)"


def _merge_bomb(levels: int) -> str:
    lines = ["x0: &x0 {k0: 1}"]
    lines += [f"x{i}: &x{i} {{<<: [*x{i - 1}, *x{i - 1}], k{i}: {i}}}" for i in range(1, levels)]
    lines.append(f"id: mb\nstart: s\nstates:\n  - {{ name: s, type: inject, data: *x{levels - 1}, end: true }}")
    return "\n".join(lines) + "\n"


def test_a_definition_that_never_finishes_parsing_is_stopped(daemon: Daemon) -> None:
    daemon.start({"STATION_VALIDATION_TIMEOUT_SECONDS": "2"})
    bomb = _merge_bomb(40).encode()  # 1.4 KB that PyYAML expands for minutes
    worst, answers = 0.0, []
    for _ in range(2):  # the second finds a fresh worker after the first was killed
        holder: dict[str, Any] = {}
        t = threading.Thread(target=lambda h=holder: h.update(r=httpx.post(
            daemon.base + "/api/v1/workflows/validate", content=bomb, headers={"Content-Type": "application/yaml"}, timeout=60)))
        t0 = time.monotonic()
        t.start()
        while t.is_alive() and time.monotonic() - t0 < 60:
            p0 = time.monotonic()
            assert httpx.get(daemon.base + "/healthz", timeout=10).status_code == 200
            worst = max(worst, time.monotonic() - p0)
            time.sleep(0.05)
        t.join(5)
        answers.append((holder["r"], time.monotonic() - t0))
    for resp, took in answers:
        assert took < 15, took
        # The loader may learn to refuse it outright; until then the time limit stops it.
        assert (resp.status_code == 422 and resp.json()["error"]["code"] == "definition_too_costly") or \
            (resp.status_code == 200 and resp.json()["valid"] is False), resp.text[:300]
    assert worst < 1.0
    created = daemon.request("POST", "/api/v1/workflows", json={"id": "after", "start": "a", "states": [
        {"name": "a", "type": "inject", "data": {}, "end": True}]})
    assert created.status_code == 201, created.text


# -- 2. input schemas: local refs only, linear-time patterns, no recursion -----------------------
class _Listener:
    """A real HTTP server that counts what reaches it (a remote $ref must never)."""

    def __init__(self) -> None:
        hits = self.hits = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                hits.append(self.path)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b'{"type": "object"}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def _with_schema(wf_id: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"id": wf_id, "inputSchema": schema, "start": "a", "states": [{"name": "a", "type": "inject", "data": {}, "end": True}]}


def test_input_schemas_resolve_locally_and_match_in_linear_time(daemon: Daemon) -> None:
    listener = _Listener()
    try:
        daemon.add_workflow("remote", "id: remote\ninputSchema: {type: object, properties: {a: {$ref: '"
                            + listener.url + "/file.json'}}}\nstart: a\nstates:\n  - {name: a, type: inject, data: {}, end: true}\n")
        daemon.start()
        assert "only local references" in daemon.log()  # the start-up sync reported and skipped it
        hostile = {
            "http": {"type": "object", "properties": {"a": {"$ref": listener.url + "/schema.json"}}},
            "file": {"type": "object", "properties": {"a": {"$ref": "file:///etc/passwd"}}},
            "id-relative": {"type": "object", "$id": listener.url + "/id", "properties": {"a": {"$ref": "other.json"}}},
            "self": {"type": "object", "$ref": "#"},
            "cycle": {"type": "object", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
            "dangling": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}},
            "lookahead": {"type": "object", "properties": {"a": {"type": "string", "pattern": "^(?=a)a+$"}}},
        }
        for name, schema in hostile.items():
            wf = _with_schema(f"h-{name}", schema)
            _err(daemon.request("POST", "/api/v1/workflows", json=wf), 422, "invalid_definition")
            check = daemon.request("POST", "/api/v1/workflows/validate", content=json.dumps(wf), headers=JSON)
            assert check.status_code == 200 and check.json()["valid"] is False, (name, check.text)
        assert listener.hits == []
        assert daemon.request("GET", "/api/v1/workflows").json()["workflows"] == []

        # A catastrophic-backtracking pattern is fine on RE2: the hostile input is refused at once.
        redos = _with_schema("redos", {"type": "object", "properties": {"a": {"type": "string", "pattern": "^(a+)+$"}}})
        assert daemon.request("POST", "/api/v1/workflows", json=redos).status_code == 201
        t0 = time.monotonic()
        _err(daemon.request("POST", "/api/v1/workflow-runs", json={"workflowId": "redos", "input": {"a": "a" * 40 + "!"}}),
             400, "invalid_input")
        assert time.monotonic() - t0 < 1.0
        assert daemon.start_run("redos", {"a": "aaaa"})["status"] == "COMPLETED"  # started (and done) in its POST
        # Legitimate recursion (a tree) bounded by the input's own depth still validates.
        tree = _with_schema("tree", {"type": "object", "$defs": {"n": {"type": "object", "properties": {
            "kids": {"type": "array", "items": {"$ref": "#/$defs/n"}}}}}, "properties": {"root": {"$ref": "#/$defs/n"}}})
        assert daemon.request("POST", "/api/v1/workflows", json=tree).status_code == 201
        deep: dict[str, Any] = {}
        for _ in range(20):
            deep = {"kids": [deep]}
        assert daemon.start_run("tree", {"root": deep})["status"] == "COMPLETED"
        _err(daemon.request("POST", "/api/v1/workflow-runs", json={"workflowId": "tree", "input": {"root": {"kids": 1}}}),
             400, "invalid_input")
        assert listener.hits == []
    finally:
        listener.close()


# -- 3. hostile JSON bodies and numbers ---------------------------------------------------------
HOSTILE_BODIES = {
    "nan": b'{"workflowId": "waits", "input": {"a": NaN}}',
    "infinity": b'{"workflowId": "waits", "input": {"a": Infinity}}',
    "-infinity": b'{"workflowId": "waits", "input": {"a": -Infinity}}',
    "overflow": b'{"workflowId": "waits", "input": {"a": 1e309}}',
    "int-high": b'{"workflowId": "waits", "input": {"a": 9223372036854775808}}',
    "int-low": b'{"workflowId": "waits", "input": {"a": -9223372036854775809}}',
    "int-huge": b'{"workflowId": "waits", "input": {"a": ' + b"9" * 5000 + b"}}",
    "surrogate": b'{"workflowId": "waits", "input": {"a": "\\ud800"}}',
    "surrogate-key": b'{"workflowId": "waits", "input": {"\\udfff\\ud800": 1}}',
    "surrogate-id": b'{"workflowId": "\\ud800", "input": {}}',
    "deep-65": b'{"workflowId": "waits", "input": ' + b'{"a":' * 64 + b"1" + b"}" * 64 + b"}",
    "deep-10k": b'{"workflowId": "waits", "input": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    "deep-100k": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "not-utf8": b'{"workflowId": "waits", "input": {"a": "\xff\xfe"}}',
}


def test_hostile_json_is_refused_on_every_route_before_anything_is_stored(daemon: Daemon) -> None:
    daemon.add_workflow("waits", WAITS)
    daemon.start()
    run = daemon.start_run("waits")
    rid = run["id"]
    wait_until(lambda: daemon.run(rid)["status"] == "WAITING_SIGNAL", 20, what="the run to wait")
    before = {t: _count(daemon, t) for t in ("workflow_runs", "workflow_definitions", "workflow_signals", "workflow_run_events",
                                             "idempotency_keys")}
    routes = [("POST", "/api/v1/workflow-runs"), ("POST", "/api/v1/workflows"), ("PUT", "/api/v1/workflows/waits"),
              ("POST", "/api/v1/workflows/validate"), ("POST", f"/api/v1/workflow-runs/{rid}/signals"),
              ("POST", f"/api/v1/workflow-runs/{rid}/cancel"), ("POST", f"/api/v1/workflow-runs/{rid}/approvals/x/approve"),
              ("POST", f"/api/v1/workflow-runs/{rid}/approvals/x/reject")]
    for name, body in HOSTILE_BODIES.items():
        for method, path in routes:
            r = daemon.request(method, path, content=body, headers=JSON)
            assert r.status_code == 400, (name, method, path, r.status_code, r.text[:300])
            assert r.json()["error"]["code"] == "malformed_json", (name, path, r.text[:300])
    # Signal payloads and definition data too (the payload is nested in a valid object).
    _err(daemon.request("POST", f"/api/v1/workflow-runs/{rid}/signals", content=b'{"name": "go", "payload": Infinity}', headers=JSON),
         400, "malformed_json")
    defn = json.dumps({"id": "d1", "start": "a", "states": [{"name": "a", "type": "inject", "data": {"x": "@"}, "end": True}]})
    _err(daemon.request("POST", "/api/v1/workflows", content=defn.replace("@", "\\ud800").encode(), headers=JSON),
         400, "malformed_json")
    # A definition value that overflows to inf (a 5000-digit duration) is refused, not stored.
    long_sleep = {"id": "d2", "start": "a", "states": [{"name": "a", "type": "sleep", "duration": "1" + "0" * 5000 + "s", "end": True}]}
    _err(daemon.request("POST", "/api/v1/workflows", json=long_sleep), 422, "invalid_definition")
    assert daemon.request("HEAD", "/api/v1/workflow-runs").status_code < 500
    # A retried request after a 4xx creates nothing: the same key gets the same 400 again.
    for _ in range(2):
        r = daemon.request("POST", "/api/v1/workflow-runs", content=HOSTILE_BODIES["nan"], headers={**JSON, "Idempotency-Key": "k-nan"})
        assert r.status_code == 400
    after = {t: _count(daemon, t) for t in before}
    assert after == {**before, "idempotency_keys": before["idempotency_keys"] + 1}, (before, after)
    assert daemon.run(rid)["status"] == "WAITING_SIGNAL"

    # Numbers in queries and headers: 400, never 500 or a dropped connection.
    bad_queries = [f"/api/v1/workflows/waits?version={'9' * 20}", f"/api/v1/workflow-runs/{rid}/events?afterSeq={'9' * 20}",
                   f"/api/v1/workflow-runs/{rid}/events?afterSeq=-1", "/api/v1/workflows/waits?version=-3",
                   "/api/v1/workflow-runs?cursor=MTAwMDAwMDAwMDAwMDAwMDAwMDAw", "/api/v1/workflow-runs?limit=99999999999999999999",
                   f"/api/v1/workflow-runs/{rid}/events?limit=abc", "/api/v1/workflow-runs?cursor=" + "A" * 5000,
                   "/api/v1/workflow-runs?status=RUNNING,NOPE", "/api/v1/workflow-runs?status=" + "A," * 5000]
    for path in bad_queries:
        _err(daemon.request("GET", path), 400)
    for path in ("/api/v1/workflow-runs/stream", f"/api/v1/workflow-runs/{rid}/stream"):
        for value in ("99999999999999999999", "-5", "x"):
            _err(daemon.request("GET", path, headers={"Last-Event-ID": value}), 400)
        _err(daemon.request("GET", path + "?lastEventId=" + "9" * 30), 400)
        status, _ = _raw(daemon, "GET", path, {"Host": "127.0.0.1", "Last-Event-ID": "\u00b2"})  # '²'.isdigit()
        assert status == 400
    status, _ = _raw(daemon, "GET", "/api/v1/workflows", {"Host": "127.0.0.1", "Content-Length": "\u00b2"})
    assert status < 500
    # A surrogate reaching an error message (here through an id) still renders the error shape.
    r = daemon.request("GET", "/api/v1/workflow-runs/%ED%A0%80")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert daemon.request("GET", "/healthz").status_code == 200
    assert daemon.start_run("waits")["status"] == "WAITING_SIGNAL"  # started in its POST


def test_old_rows_holding_nan_or_surrogates_do_not_break_read_routes(daemon: Daemon) -> None:
    daemon.add_workflow("plain", PLAIN)
    daemon.start()
    rid = daemon.start_run("plain")["id"]
    daemon.wait_status(rid)
    assert daemon.stop() == 0
    with _db(daemon) as conn:  # what an older version could store
        conn.execute("UPDATE workflow_runs SET input = ?, context = ? WHERE run_id = ?",
                     ('{"a": NaN, "b": Infinity}', '{"s": "\\ud800", "n": -Infinity}', rid))
        conn.execute("UPDATE workflow_run_events SET payload = ? WHERE run_id = ? AND seq = 1", ('{"x": NaN}', rid))
    daemon.start()
    got = daemon.run(rid)
    assert got["input"] == {"a": None, "b": None} and got["context"]["n"] is None
    listed = daemon.request("GET", "/api/v1/workflow-runs")
    assert listed.status_code == 200 and listed.json()["runs"][0]["id"] == rid
    events = daemon.events(rid)
    assert events[0]["payload"] == {"x": None}
    with httpx.stream("GET", f"{daemon.base}/api/v1/workflow-runs/{rid}/stream", timeout=10) as resp:
        lines = [line for line in resp.iter_lines() if line.startswith("data:")]
    assert json.loads(lines[0][5:])["payload"] == {"x": None}


# -- 4. auth ------------------------------------------------------------------------------------
def _serve_fails(d: Daemon, env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "station_wf.cli", "serve"], env=d.process_env(env), cwd=d.root,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("station-wf:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def test_auth_settings_that_would_turn_auth_off_refuse_to_start(daemon: Daemon, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text("{}")
    assert "holds no token" in _serve_fails(daemon, {"STATION_API_TOKENS_FILE": str(tokens), "STATION_HTTP_ADDR": "0.0.0.0:0"})
    tokens.write_text(json.dumps({" " * 20: {"principal": "x"}}))
    assert "whitespace" in _serve_fails(daemon, {"STATION_API_TOKENS_FILE": str(tokens)})
    tokens.write_text(json.dumps({"a" * 20: {"principal": "x", "groups": "ops"}}))
    assert "groups" in _serve_fails(daemon, {"STATION_API_TOKENS_FILE": str(tokens)})
    assert "16+ characters" in _serve_fails(daemon, {"STATION_API_TOKEN": "short"})
    assert "STATION_API_TOKEN" in _serve_fails(daemon, {"STATION_API_TOKEN": "                    "})
    assert not daemon.data_dir.joinpath("station-wf.db").exists() or _count(daemon, "workflow_runs") == 0


def test_bearer_is_case_insensitive_and_metrics_need_a_token(daemon: Daemon) -> None:
    token = "door-token-0123456789"
    daemon.start({"STATION_API_TOKEN": token})
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert daemon.request("GET", "/api/v1/workflows", headers={"Authorization": f"{scheme} {token}"}).status_code == 200
    _err(daemon.request("GET", "/api/v1/workflows", headers={"Authorization": f"Basic {token}"}), 401, "unauthorized")
    _err(daemon.request("GET", "/metrics"), 401, "unauthorized")
    metrics = daemon.request("GET", "/metrics", headers={"Authorization": f"bearer {token}"})
    assert metrics.status_code == 200 and "station_wf" in metrics.text
    assert daemon.request("GET", "/healthz").status_code == 200
    assert daemon.request("GET", "/readyz").status_code == 200


def test_may_decide_never_fails_on_odd_approvers() -> None:
    alice = Principal("alice", ("ops",))
    assert may_decide(alice, "user:alice") is True  # one string is one entry, not its characters
    assert may_decide(Principal("e"), "user:alice") is False
    assert may_decide(alice, [1, None, {"a": 1}, "team:ops"]) is True
    assert may_decide(alice, [1]) is False
    assert may_decide(alice, {"user": "alice"}) is False
    assert may_decide(alice, ["", "  "]) is False


def test_stored_odd_approvers_answer_403_not_500(daemon: Daemon) -> None:
    daemon.add_workflow("gate", """
id: gate
start: ask
states:
  - name: ask
    type: operation
    action: human.approval
    input: { message: "ok?", approvers: ["user:alice"] }
    end: true
""")
    daemon.start()
    rid = daemon.start_run("gate")["id"]
    wait_until(lambda: daemon.request("GET", f"/api/v1/workflow-runs/{rid}/approvals").json()["approvals"], 20, what="approval")
    (approval,) = daemon.request("GET", f"/api/v1/workflow-runs/{rid}/approvals").json()["approvals"]
    with _db(daemon) as conn:
        conn.execute("UPDATE workflow_approvals SET approvers = ? WHERE approval_id = ?", ("[1]", approval["id"]))
    r = daemon.request("POST", f"/api/v1/workflow-runs/{rid}/approvals/{approval['id']}/approve", json={},
                       headers={"X-Station-Principal": "alice"})
    _err(r, 403, "forbidden")


# -- 5. the no-auth loopback mode ---------------------------------------------------------------
def _raw(d: Daemon, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        if "Content-Length" not in headers:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_no_auth_mode_refuses_cross_site_and_rebinding_requests(daemon: Daemon) -> None:
    daemon.add_workflow("plain", PLAIN)
    daemon.start()
    own = f"127.0.0.1:{daemon.http_port}"
    body = json.dumps({"workflowId": "plain", "input": {}}).encode()
    runs = "/api/v1/workflow-runs"
    # A "simple" cross-site request (text/plain, form types) is refused before anything runs.
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"Host": own} | ({"Content-Type": ctype} if ctype else {})
        status, text = _raw(daemon, "POST", runs, headers, body)
        assert status == 415 and b"unsupported_media_type" in text, (ctype, status, text)
    # DNS rebinding: the attacker's name resolving to 127.0.0.1 is not this daemon's Host.
    for host in ("evil.example", f"evil.example:{daemon.http_port}", "127.0.0.1.nip.io"):
        status, text = _raw(daemon, "GET", "/api/v1/workflows", {"Host": host})
        assert status == 421 and b"misdirected_request" in text, (host, status)
        status, _ = _raw(daemon, "POST", runs, {"Host": host, "Content-Type": "application/json"}, body)
        assert status == 421
    # A foreign Origin (another site, another local port, a sandboxed page) is refused.
    for origin in ("http://evil.example", f"http://127.0.0.1:{daemon.http_port + 1}", "null", "http://localhost"):
        status, text = _raw(daemon, "POST", runs, {"Host": own, "Origin": origin, "Content-Type": "application/json"}, body)
        assert status == 403 and b"forbidden_origin" in text, (origin, status)
        status, _ = _raw(daemon, "POST", f"{runs}/x/pause", {"Host": own, "Origin": origin})
        assert status == 403
    assert daemon.request("GET", runs).json()["runs"] == []  # none of the above started anything
    # The dashboard, served by the daemon itself, keeps working: same origin, JSON, loopback names.
    for host in (own, f"localhost:{daemon.http_port}", f"[::1]:{daemon.http_port}"):
        status, page = _raw(daemon, "GET", "/", {"Host": host})
        assert status == 200 and b"<html" in page.lower()
    status, text = _raw(daemon, "POST", runs, {"Host": own, "Origin": f"http://{own}", "Content-Type": "application/json"}, body)
    assert status == 201, text
    status, text = _raw(daemon, "POST", runs, {"Host": f"localhost:{daemon.http_port}",
                                               "Origin": f"http://localhost:{daemon.http_port}",
                                               "Content-Type": "application/json; charset=utf-8"}, body)
    assert status == 201, text
    assert len(daemon.request("GET", runs).json()["runs"]) == 2


def test_allowed_hosts_setting_admits_a_proxy_name(daemon: Daemon) -> None:
    daemon.start({"STATION_ALLOWED_HOSTS": "station.internal, other.internal"})
    status, _ = _raw(daemon, "GET", "/api/v1/workflows", {"Host": "station.internal:8080"})
    assert status == 200
    status, _ = _raw(daemon, "GET", "/api/v1/workflows", {"Host": "evil.example"})
    assert status == 421


# -- 6. idempotency -----------------------------------------------------------------------------
def test_reservation_of_a_crashed_daemon_does_not_block_the_retry(daemon: Daemon) -> None:
    daemon.add_workflow("plain", PLAIN)
    daemon.start({"STATION_FAULTS": "api.idempotency.after_effect:1"})
    key = {"Idempotency-Key": "crash-1"}
    with pytest.raises(httpx.HTTPError):
        daemon.request("POST", "/api/v1/workflow-runs", json={"workflowId": "plain", "input": {}}, headers=key)
    assert daemon.proc is not None and daemon.proc.wait(10) == 137
    daemon.start()
    t0 = time.monotonic()
    r = daemon.request("POST", "/api/v1/workflow-runs", json={"workflowId": "plain", "input": {}}, headers=key)
    assert r.status_code in (200, 201), r.text  # not 409 for a minute
    assert time.monotonic() - t0 < 5
    runs = daemon.request("GET", "/api/v1/workflow-runs").json()["runs"]
    assert [x["id"] for x in runs] == [r.json()["run"]["id"]]  # the effect of the first attempt, not a second run
    again = daemon.request("POST", "/api/v1/workflow-runs", json={"workflowId": "plain", "input": {}}, headers=key)
    assert again.headers.get("Idempotent-Replayed") == "true" and again.json()["run"]["id"] == r.json()["run"]["id"]


def test_expired_idempotency_keys_are_purged(daemon: Daemon) -> None:
    daemon.add_workflow("plain", PLAIN)
    daemon.start()
    daemon.request("POST", "/api/v1/workflow-runs", json={"workflowId": "plain", "input": {}}, headers={"Idempotency-Key": "fresh"})
    assert daemon.stop() == 0
    old = time.time() - 3 * 24 * 3600
    with _db(daemon) as conn:
        conn.executemany("INSERT INTO idempotency_keys (scope, key, request_hash, status, response, created_at) VALUES (?, ?, 'h', 201, '{}', ?)",
                         [("POST /x anonymous", f"old-{i}", old) for i in range(2500)])
    daemon.start({"STATION_RETENTION_INTERVAL_SECONDS": "1"})
    wait_until(lambda: _count(daemon, "idempotency_keys") == 1, 20, what="expired keys to be purged")
    with _db(daemon) as conn:
        assert conn.execute("SELECT key FROM idempotency_keys").fetchone()[0] == "fresh"


async def test_a_cancelled_request_keeps_its_reservation(tmp_path: Path) -> None:
    from starlette.responses import JSONResponse

    from station_wf.services.idempotency import IdempotencyStore
    from station_wf.store.db import Writer

    writer = Writer(tmp_path / "s.db")
    writer.start()
    try:
        store = IdempotencyStore(writer)
        started = asyncio.Event()

        async def slow(effect_id: str) -> JSONResponse:
            started.set()
            await asyncio.sleep(30)
            return JSONResponse({})

        task = asyncio.create_task(store.run("POST /r p", "k1", "digest", slow))
        await asyncio.wait_for(started.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        rows = await writer.run(lambda c: c.execute("SELECT key, effect_id, status FROM idempotency_keys").fetchall())
        assert [(r["key"], r["status"]) for r in rows] == [("k1", None)] and rows[0]["effect_id"]
    finally:
        writer.close()


# -- 7. SSE -------------------------------------------------------------------------------------
def _inject_events(d: Daemon, run_id: str, n: int) -> int:
    """Append `n` events to a run directly in SQLite (the daemon stopped): history a long run would have."""
    with _db(d) as conn:
        seq = conn.execute("SELECT event_seq FROM workflow_runs WHERE run_id = ?", (run_id,)).fetchone()[0]
        conn.executemany("INSERT INTO workflow_run_events (run_id, seq, type, payload, created_at) VALUES (?, ?, 'note', '{}', ?)",
                         [(run_id, seq + i + 1, "2026-01-01T00:00:00Z") for i in range(n)])
        conn.execute("UPDATE workflow_runs SET event_seq = ? WHERE run_id = ?", (seq + n, run_id))
        return conn.execute("SELECT MAX(id) FROM workflow_run_events").fetchone()[0]


def _read_sse(url: str, headers: dict[str, str], until: Any, limit: int, timeout: float = 60) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as resp:
        assert resp.status_code == 200, resp.read()[:300]
        ident = None
        for line in resp.iter_lines():
            if line.startswith("id:"):
                ident = int(line[3:].strip())
            elif line.startswith("data:"):
                got.append({"id": ident, **json.loads(line[5:])})
                if until(got[-1]) or len(got) >= limit or time.monotonic() > deadline:
                    break
    return got


def test_global_stream_resumes_across_more_than_ten_thousand_events(daemon: Daemon) -> None:
    daemon.add_workflow("waits", WAITS)
    daemon.start()
    rid = daemon.start_run("waits")["id"]
    wait_until(lambda: daemon.run(rid)["status"] == "WAITING_SIGNAL", 20, what="the run to wait")
    assert daemon.stop() == 0
    last_id = _inject_events(daemon, rid, 12_500)
    daemon.start()
    got = _read_sse(daemon.base + "/api/v1/workflow-runs/stream", {"Last-Event-ID": "1"},
                    lambda e: e["id"] >= last_id, 20_000)
    ids = [e["id"] for e in got]
    assert ids == list(range(2, last_id + 1)), (len(ids), ids[:3], ids[-3:])
    # ...and then it is live: the signal's events arrive after the backlog.
    holder: dict[str, Any] = {}

    def listen() -> None:
        holder["live"] = _read_sse(daemon.base + "/api/v1/workflow-runs/stream", {"Last-Event-ID": str(last_id)},
                                   lambda e: e["type"] == "run.completed", 100, timeout=30)

    t = threading.Thread(target=listen)
    t.start()
    time.sleep(1.0)
    assert daemon.request("POST", f"/api/v1/workflow-runs/{rid}/signals", json={"name": "go", "payload": {}}).status_code == 202
    t.join(40)
    live = holder["live"]
    assert live and live[-1]["type"] == "run.completed" and all(e["id"] > last_id for e in live)


def test_run_stream_backfill_is_paged_and_complete(daemon: Daemon) -> None:
    daemon.add_workflow("waits", WAITS)
    daemon.start()
    rid = daemon.start_run("waits")["id"]
    wait_until(lambda: daemon.run(rid)["status"] == "WAITING_SIGNAL", 20, what="the run to wait")
    seq_before = daemon.run(rid)["lastEventSeq"]
    assert daemon.stop() == 0
    _inject_events(daemon, rid, 3_500)
    daemon.start()
    got = _read_sse(f"{daemon.base}/api/v1/workflow-runs/{rid}/stream", {}, lambda e: e["seq"] >= seq_before + 3_500, 10_000)
    assert [e["seq"] for e in got] == list(range(1, seq_before + 3_501))


def test_sse_connections_are_capped(daemon: Daemon) -> None:
    daemon.add_workflow("waits", WAITS)
    daemon.start({"STATION_MAX_SSE_CONNECTIONS": "2"})
    rid = daemon.start_run("waits")["id"]
    socks = []
    try:
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", daemon.http_port), timeout=10)
            s.sendall(f"GET /api/v1/workflow-runs/{rid}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            assert b"200" in s.recv(64)
            socks.append(s)
        over = daemon.request("GET", "/api/v1/workflow-runs/stream")
        _err(over, 503, "too_many_streams")
        assert over.headers.get("Retry-After") == "5"
        assert daemon.request("GET", "/api/v1/workflow-runs").status_code == 200  # other routes unaffected
        socks.pop().close()

        def reopened() -> bool:
            with httpx.stream("GET", daemon.base + "/api/v1/workflow-runs/stream", timeout=5) as resp:
                return resp.status_code == 200

        wait_until(reopened, 10, what="a slot to free up")
    finally:
        for s in socks:
            s.close()


# -- 8. lows ------------------------------------------------------------------------------------
def test_validate_checks_agents_like_create(daemon: Daemon) -> None:
    daemon.start()
    wf = {"id": "ag", "start": "a", "states": [{"name": "a", "type": "operation", "action": "agent.run",
                                                "input": {"agent": "nope", "task": "x"}, "end": True}]}
    check = daemon.request("POST", "/api/v1/workflows/validate", content=json.dumps(wf), headers=JSON).json()
    assert check["valid"] is False and any("nope" in e["message"] for e in check["errors"])
    _err(daemon.request("POST", "/api/v1/workflows", json=wf), 422, "invalid_definition")


def test_a_client_vanishing_mid_body_is_not_an_error_and_a_stalled_body_times_out(daemon: Daemon) -> None:
    daemon.start({"STATION_HTTP_BODY_TIMEOUT_SECONDS": "1"})
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", daemon.http_port), timeout=10)
        s.sendall(b"POST /api/v1/workflow-runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"workflowId\":")
        s.close()
    s = socket.create_connection(("127.0.0.1", daemon.http_port), timeout=10)
    try:
        s.sendall(b"POST /api/v1/workflow-runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"workflowId\":")
        t0 = time.monotonic()
        answer = s.recv(200)
        assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 5, answer
    finally:
        s.close()
    time.sleep(0.5)
    assert "Traceback" not in daemon.log() and "ClientDisconnect" not in daemon.log()
    assert daemon.request("GET", "/healthz").status_code == 200
