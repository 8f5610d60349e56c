"""The fuzz suite (issue 11, item 7): a seeded re-creation of the reliability probe against ONE real daemon.

Thousands of malformed API requests, hundreds of mutated definitions, hostile expressions and hostile
agent replies. Promised for every one: no 5xx; every 4xx has the error shape; a rejected request leaves
the stored data (a fingerprint read read-only from the daemon's SQLite file) unchanged; the daemon stays
alive and answers /healthz; and afterwards a plain run still completes. Each test collects every finding
and fails once, with a summary grouped by cause (route, input, observed status).
"""

from __future__ import annotations

import json
import random
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import REPO, NatsServer, wait_until
from tests.fuzz.bodies import BODY_ROUTES, ID_ROUTES, QUERY_PARAMS
from tests.fuzz.definitions import JSON, Mutant, all_mutants
from tests.fuzz.env import TERMINAL, FuzzEnv, error_shape_problem
from tests.fuzz.harness import AGENT_REPLIES, Findings, HealthProbe, HostilePeer
from tests.fuzz.values import (
    SEED,
    dump,
    idempotency_keys,
    last_event_ids,
    odd_cursors,
    odd_ids,
    odd_query_values,
    random_json,
    raw_bodies,
)

# Every finding and outcome of the last run, kept (git-ignored) where pytest's tmp rotation does not reach.
REPORT_DIR = REPO / ".pytest_cache" / "fuzz"


@pytest.fixture(scope="module")
def peer() -> Iterator[HostilePeer]:
    p = HostilePeer()
    yield p
    p.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, peer: HostilePeer) -> Iterator[FuzzEnv]:
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    e = FuzzEnv(Path(tmp_path_factory.mktemp("fuzz")), peer, REPORT_DIR)
    yield e
    e.close()


def fill(env: FuzzEnv, path: str) -> str:
    return path.format(gate=env.gate_run, approval=env.approval_id, plain=env.plain_run)


# -- 1. the API ------------------------------------------------------------------------------------
def test_odd_query_parameters_and_headers(env: FuzzEnv) -> None:
    """limit, cursor, afterSeq, version, status, ... on every route that reads them; Last-Event-ID on both SSE
    streams; Idempotency-Key oddities and reuse on the routes that honour it."""
    findings = env.findings("query")
    for method, template, param in QUERY_PARAMS:
        plain = env.client.request(method, env.daemon.base + fill(env, template))
        route = f"{method} {template} ?{param}"
        if plain.status_code >= 500:  # stored data already poisons the route: say so, not "the parameter"
            findings.add("5xx without any parameter (stored data poisons the route)", f"{method} {template}", "no query", str(plain.status_code))
            route += " (route already 5xx without it)"
        values = odd_query_values() + (odd_cursors() if param == "cursor" else [])
        for case, value in values:
            env.call(findings, method, fill(env, template), f"?{param}={case}", route=route, params={param: value})
    for case, value in last_event_ids():
        sse_check(env, findings, f"/api/v1/workflow-runs/{env.plain_run}/stream", "GET /api/v1/workflow-runs/{id}/stream",
                  case, {"Last-Event-ID": value}, ends=True)
        sse_check(env, findings, "/api/v1/workflow-runs/stream", "GET /api/v1/workflow-runs/stream", case,
                  {"Last-Event-ID": value}, ends=False)
    for case, value in odd_query_values():
        sse_check(env, findings, f"/api/v1/workflow-runs/{env.plain_run}/stream", "GET /api/v1/workflow-runs/{id}/stream ?lastEventId",
                  case, {}, ends=True, params={"lastEventId": value})
    for case, value in odd_query_values()[:12]:
        sse_check(env, findings, "/api/v1/workflow-runs/stream", "GET /api/v1/workflow-runs/stream ?status", case, {}, ends=False,
                  params={"status": value, "workflowId": value})
    idempotency_oddities(env, findings)
    findings.check()


def test_odd_path_ids_on_every_id_route(env: FuzzEnv) -> None:
    findings = env.findings("ids")
    real = {"wf": "fz-put", "run": env.gate_run, "approval": env.approval_id, "schedule": "fz-sched:0", "agent": "echo"}
    for method, template, body in ID_ROUTES:
        slots = [s for s in real if "{" + s + "}" in template]
        for slot in slots:
            for case, odd in odd_ids():
                ids = {**real, "run": env.gate_run, "approval": env.approval_id, slot: odd}
                path = template.format(**ids)
                route = f"{method} {template}"
                headers = {"Accept": "text/event-stream"} if template.endswith("/stream") else None
                resp = env.call(findings, method, path, f"{{{slot}}} = {case}", route=route,
                                json_text=body, headers=headers, timeout=httpx.Timeout(10.0, connect=5.0))
                if resp is not None and 200 <= resp.status_code < 300 and method in ("POST", "PUT", "DELETE"):
                    findings.add("an odd id was acted upon", route, f"{{{slot}}} = {case}", f"{resp.status_code} {resp.text[:100]}")
    findings.check()


def test_malformed_json_bodies_on_every_body_route(env: FuzzEnv) -> None:
    """Odd values in every field, missing and extra fields, wrong whole bodies, and seeded random ones."""
    findings = env.findings("bodies")
    rng = random.Random(SEED)
    sent = 0
    for br in BODY_ROUTES:
        for case, text in br.cases():
            env.call(findings, br.method, fill(env, br.path), case, route=br.route, json_text=text, stores_nothing=br.stores_nothing)
            sent += 1
    for i in range(100):
        br = BODY_ROUTES[i % len(BODY_ROUTES)]
        body = {**br.base(), **{k: random_json(rng) for k in rng.sample(sorted(br.base()), k=1)}}
        env.call(findings, br.method, fill(env, br.path), f"random #{i}", route=br.route, json_text=dump(body),
                 stores_nothing=br.stores_nothing)
        sent += 1
    assert sent > 1000
    findings.check()


def test_raw_bodies_on_every_body_route(env: FuzzEnv) -> None:
    """Truncated, BOM, UTF-16/32, non-UTF-8, duplicate keys, 10k/100k-deep, 50k keys, over the 1 MiB cap, chunked."""
    findings = env.findings("raw")
    for br in BODY_ROUTES:
        path = fill(env, br.path)
        for ctype in ("application/json", "application/yaml") if br.stores_nothing else ("application/json",):
            for case, raw in raw_bodies(dump(br.base())):
                env.call(findings, br.method, path, f"{case} ({ctype})", route=br.route, content=raw,
                         headers={"Content-Type": ctype}, stores_nothing=br.stores_nothing)

        def chunks() -> Iterator[bytes]:
            for _ in range(40):
                yield b" " * 65536

        resp = env.call(findings, br.method, path, "chunked 2.5 MiB", route=br.route, content=chunks(),
                        headers={"Content-Type": "application/json"}, stores_nothing=br.stores_nothing)
        if resp is not None and resp.status_code != 413:
            findings.add("over the body cap but not 413", br.route, "chunked 2.5 MiB", str(resp.status_code))
    findings.check()


def sse_check(env: FuzzEnv, findings: Findings, path: str, route: str, case: str, headers: dict[str, str], ends: bool,
              params: dict[str, str] | None = None) -> None:
    """An SSE request: a 4xx is checked like any; a 200 must stream cleanly (to its end for a finished run's
    stream, for 0.5 s on the global one) instead of dropping the connection mid-chunk."""
    url = env.daemon.base + path
    raw_headers = {k: v.encode() for k, v in headers.items()}  # odd values are not ASCII; send their UTF-8
    timeout = httpx.Timeout(10.0 if ends else 0.5, connect=5.0)
    try:
        with env.client.stream("GET", url, headers=raw_headers, params=params, timeout=timeout) as resp:
            if resp.status_code != 200:
                resp.read()
                env.check_response(findings, route, case, resp, "GET")
                return
            try:
                for _ in resp.iter_bytes():
                    pass
            except httpx.ReadTimeout:
                if ends:
                    findings.add("stream of a finished run did not end within 10 s", route, case, "200")
            except httpx.HTTPError as exc:
                findings.add("200 stream dropped mid-response", route, case, f"{type(exc).__name__}: {exc}")
    except httpx.HTTPError as exc:
        findings.add("connection error", route, case, f"{type(exc).__name__}: {exc}")
    env.ensure_alive(findings, route, case)


def replay_key(resp: httpx.Response) -> tuple[int, str]:
    """What a replay must repeat: the status and the body, less the per-request id."""
    try:
        body = resp.json()
    except ValueError:
        return resp.status_code, resp.text
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = {**body, "error": {k: v for k, v in body["error"].items() if k != "request_id"}}
    return resp.status_code, json.dumps(body, sort_keys=True)


def idempotency_oddities(env: FuzzEnv, findings: Findings) -> None:
    routes = [
        ("POST", "/api/v1/workflow-runs", dump({"workflowId": "fz-sink", "input": {"i": 1}})),
        ("POST", f"/api/v1/workflow-runs/{env.gate_run}/signals", dump({"name": "idem", "payload": 1})),
        ("POST", f"/api/v1/workflow-runs/{env.gate_run}/approvals/{env.approval_id}/approve", "{}"),
    ]
    for method, path, body in routes:
        route = f"{method} {path.replace(env.gate_run, '{id}').replace(env.approval_id, '{aid}')} Idempotency-Key"
        for case, key in idempotency_keys():
            env.call(findings, method, path, f"key {case}", route=route, json_text=body, headers={"Idempotency-Key": key})
        key = f"reuse-{time.monotonic_ns()}".encode()
        first = env.call(findings, method, path, "first use", route=route, json_text=body, headers={"Idempotency-Key": key})
        again = env.call(findings, method, path, "same key, same body", route=route, json_text=body, headers={"Idempotency-Key": key})
        if first is not None and again is not None and replay_key(first) != replay_key(again):
            findings.add("replay differs from the first answer", route, "same key, same body",
                         f"{first.status_code} {first.text[:80]} vs {again.status_code} {again.text[:80]}")
        other = env.call(findings, method, path, "same key, other body", route=route, json_text=body[:-1] + ', "zz": 1}'
                         if body != "{}" else '{"comment": "other"}', headers={"Idempotency-Key": key})
        if other is not None and other.status_code != 422:
            findings.add("key reused with another body is not 422", route, "same key, other body", str(other.status_code))


MAX_URL_ID = 8000  # uvicorn (h11) refuses request lines and headers over 16 KiB


def test_everything_stored_reads_back(env: FuzzEnv) -> None:
    """What the fuzz stored (accepted odd values) must read back: every list page, run, event page and version."""
    findings = env.findings("readback")
    client, base = env.client, env.daemon.base

    def get(path: str, route: str, params: dict | None = None) -> dict | None:
        """A read of stored data; its 5xx is a finding of env.call, any other non-200 one of its own."""
        resp = env.call(findings, "GET", path, path[:80], route=route + " (read back)", params=params)
        if resp is None or resp.status_code != 200:
            if resp is not None and resp.status_code < 500:
                findings.add("stored data does not read back", route, path[:80], f"{resp.status_code} {resp.text[:120]!r}")
            return None
        return resp.json()

    cursor, pages = None, 0
    while pages < 200:
        page = get("/api/v1/workflow-runs", "GET /api/v1/workflow-runs (every page)", {"limit": 20, **({"cursor": cursor} if cursor else {})})
        pages += 1
        if page is None:
            break
        for run in page["runs"]:
            get(f"/api/v1/workflow-runs/{run['id']}", "GET /api/v1/workflow-runs/{id}")
            get(f"/api/v1/workflow-runs/{run['id']}/events", "GET /api/v1/workflow-runs/{id}/events", {"limit": 1000})
        cursor = page.get("nextCursor")
        if not cursor:
            break
    head = client.head(base + "/api/v1/workflow-runs", params={"limit": 1000})
    if head.status_code != 200:
        findings.add("stored data does not read back", "HEAD /api/v1/workflow-runs", "limit=1000", str(head.status_code))
    listing = get("/api/v1/workflows", "GET /api/v1/workflows") or {"workflows": []}
    for wf in listing["workflows"]:
        wid = quote(wf["id"], safe="").replace(".", "%2E")
        if len(wid) > MAX_URL_ID:
            findings.add("an accepted workflow id is too long for any URL to read it back", "POST/PUT /api/v1/workflows",
                         f"id of {len(wf['id'])} characters", "201, then unreachable")
            continue
        versions = get(f"/api/v1/workflows/{wid}/versions", "GET /api/v1/workflows/{id}/versions")
        get(f"/api/v1/workflows/{wid}", "GET /api/v1/workflows/{id}")
        for v in (versions or {"versions": []})["versions"][:5]:
            get(f"/api/v1/workflows/{wid}", "GET /api/v1/workflows/{id}?version", {"version": v["version"]})
    for path in ("/api/v1/workflow-approvals?status=all", "/api/v1/workflow-schedules", "/api/v1/agents"):
        get(path, f"GET {path}")
    findings.check()


# -- 2. definitions --------------------------------------------------------------------------------
HEALTHZ_BOUND_S = 1.0


def test_mutated_definitions_are_refused_fast_and_store_nothing(env: FuzzEnv, peer: HostilePeer) -> None:
    """Hundreds of mutants through validate and create, /healthz polled meanwhile; accepted `$ref`/ReDoS ones
    also start a run. Invalid ones must be refused by both; nothing rejected is stored; no `$ref` is fetched."""
    findings = env.findings("definitions")
    mutants = all_mutants(peer.url)
    hits_before = len(peer.hits)
    spans: list[tuple[str, float, float]] = []
    with HealthProbe(lambda: (env.daemon.base, env.pid)) as probe:
        for n, m in enumerate(mutants):
            t0 = time.monotonic()
            check_mutant(env, findings, m, n)
            spans.append((m.label, t0, time.monotonic()))
    for label, t0, t1 in sorted(spans, key=lambda sp: sp[1] - sp[2])[:15]:
        env.note(f"definitions | slowest: {label} | {t1 - t0:.2f} s")
    for label, worst in probe.blame(spans, HEALTHZ_BOUND_S).items():
        findings.add(f"/healthz slower than {HEALTHZ_BOUND_S} s while a definition was processed",
                     "POST /api/v1/workflows[/validate]", label, f"worst /healthz {worst:.1f} s")
    for hit in peer.hits[hits_before:]:
        findings.add("a remote $ref was fetched (SSRF)", "POST /api/v1/workflow-runs", "inputSchema $ref", hit)
    assert len(mutants) > 250
    findings.check()


def check_mutant(env: FuzzEnv, findings: Findings, m: Mutant, n: int) -> None:
    text = m.text.replace(b'"id":"m"', f'"id":"m{n}"'.encode(), 1) if m.ctype == JSON else m.text
    resp = env.call(findings, "POST", "/api/v1/workflows/validate", m.label, content=text,
                    headers={"Content-Type": m.ctype}, stores_nothing=True)
    valid = None
    if resp is not None and resp.status_code == 200:
        valid = resp.json().get("valid")
        if m.refuse and valid is True:
            findings.add("an invalid definition passes validate", "POST /api/v1/workflows/validate", m.label, "200 valid: true")
    if not (m.create and m.ctype == JSON):
        return
    created = env.call(findings, "POST", "/api/v1/workflows", m.label, content=text, headers={"Content-Type": JSON})
    if created is None:
        return
    if created.status_code == 201:
        if m.refuse:
            findings.add("an invalid definition is stored", "POST /api/v1/workflows", m.label, "201")
        elif valid is False:
            findings.add("validate says invalid, create stores it", "POST /api/v1/workflows", m.label, "201")
        if m.run_input is not None:
            body = dump({"workflowId": created.json()["id"], "input": m.run_input})
            env.call(findings, "POST", "/api/v1/workflow-runs", m.label, route="POST /api/v1/workflow-runs (mutant)", json_text=body)
    elif created.status_code == 422 and valid is True:
        findings.add("validate says valid, create refuses", "POST /api/v1/workflows", m.label, created.text[:200])


# -- 3. hostile expressions and agent replies --------------------------------------------------------
RUN_BOUND_S = 30.0
RSS_CAP_MB = 600.0
DEEP_LIST = "[" * 3000 + "]" * 3000
PLUS_CHAIN = "+".join(["1"] * 5000)

# Starlark has no `**`: the numbers are literals (10**9 would be refused as a syntax error, testing nothing).
HOSTILE_EXPRESSIONS = [  # safe today first, the ones that stall next, the ones that kill the daemon today last
    ("loop comprehension", "transform", "[x for x in range(1000000000)]"),
    ("dict comprehension 10^7", "transform", "{i: i for i in range(10000000)}"),
    ("loop in a switch", "switch", "len([x for x in range(1000000000)]) > 0"),
    ("loop in a template", "template", "[x for x in range(1000000000)]"),
    ("huge shift", "transform", "1 << 10000000"),
    ("three nested ranges", "transform", "len([1 for a in range(10000) for b in range(10000) for c in range(10000)])"),
    ("'a' * 10^9", "transform", "len('a' * 1000000000)"),
    ("'x' * 2147483647 in a switch", "switch", "len('x' * 2147483647) > 0"),
    ("'a' * 10^9 in a template", "template", "len('a' * 1000000000)"),
    ("sorted(range(10^8))", "transform", "len(sorted(range(100000000), reverse=True))"),
    ("json.encode of 10^7", "transform", "len(json.encode(list(range(10000000))))"),
    ("[0] * 10^9", "transform", "len([0] * 1000000000)"),
    ("list(range(10^8))", "transform", "len(list(range(100000000)))"),
    ("1+1+... 5000 terms", "transform", PLUS_CHAIN),
    ("list nested 3000 deep in a switch", "switch", f"len({DEEP_LIST}) > 0"),
    ("1+1+... 5000 terms in a template", "template", PLUS_CHAIN),
    ("list nested 3000 deep", "transform", DEEP_LIST),
]


def hostile_definition(wid: str, kind: str, expr: str) -> dict:
    if kind == "transform":
        states = [{"name": "hostile", "type": "transform", "expression": expr, "end": True}]
    elif kind == "switch":
        states = [{"name": "hostile", "type": "switch", "conditions": [{"if": expr, "next": "e"}], "defaultNext": "e"},
                  {"name": "e", "type": "inject", "data": {}, "end": True}]
    else:
        states = [{"name": "hostile", "type": "operation", "action": "agent.run",
                   "input": {"agent": "echo", "task": "{{ " + expr + " }}"}, "end": True}]
    return {"id": wid, "start": "hostile", "states": states}


def run_hostile(env: FuzzEnv, findings: Findings, route: str, label: str, defn: dict, expect_failed: bool,
                wanted_types: tuple[str, ...] = ("expression",)) -> None:
    """Create `defn` (a 4xx refusal is a fine answer), run it, and check the run ends within the bound,
    with a clear error when `expect_failed`, while /healthz answers and the daemon's RSS stays under the cap."""
    created = env.call(findings, "POST", "/api/v1/workflows", label, route=route, json_text=json.dumps(defn))
    if created is None or created.status_code != 201:
        env.note(f"{route} | {label} | refused at create: {created.status_code if created is not None else 'no answer'}")
        return
    with HealthProbe(lambda: (env.daemon.base, env.pid)) as probe:
        started = env.call(findings, "POST", "/api/v1/workflow-runs", label, route=route,
                           json_text=json.dumps({"workflowId": defn["id"], "input": {}}))
        run = env.wait_run(started.json()["run"]["id"], RUN_BOUND_S) if started is not None and started.status_code == 201 else None
        alive = env.ensure_alive(findings, route, label)
    env.note(f"{route} | {label} | {outcome(run, alive)} | worst /healthz {probe.worst():.2f} s | peak RSS {probe.peak_rss:.0f} MiB")
    if not alive:
        return
    if run is None:
        findings.add(f"the run never read back with 200 within {RUN_BOUND_S:.0f} s", route, label, env.last_run_read)
        return
    if run.get("_timed_out"):
        calls = sum(1 for c in env.peer.agent_calls if c == label)
        findings.add(f"run did not end within {RUN_BOUND_S:.0f} s", route, label,
                     f"status {run['status']}" + (f", agent called {calls} times" if calls else ""))
    elif expect_failed and run["status"] != "FAILED":
        findings.add("a hostile expression did not fail its run", route, label, f"{run['status']}")
    elif run["status"] == "FAILED":
        err = run.get("error") or {}
        message = str(err.get("message", ""))
        if expect_failed and (err.get("type") not in wanted_types or "hostile" not in message + str(err.get("stateName"))):
            findings.add(f"unclear error (want type {' or '.join(wanted_types)}, naming the state)", route, label, json.dumps(err)[:200])
        elif not err.get("type") or not message.strip() or message.startswith("Traceback"):
            findings.add("unclear error", route, label, json.dumps(err)[:200])
    if probe.worst() > HEALTHZ_BOUND_S:
        findings.add(f"/healthz slower than {HEALTHZ_BOUND_S} s during the run", route, label, f"worst {probe.worst():.1f} s")
    if probe.peak_rss > RSS_CAP_MB:
        findings.add(f"daemon RSS over {RSS_CAP_MB:.0f} MiB", route, label, f"peak {probe.peak_rss:.0f} MiB")
    rid = run["id"]
    env.call(findings, "GET", f"/api/v1/workflow-runs/{rid}", label, route="GET /api/v1/workflow-runs/{id} (after)")
    env.call(findings, "GET", f"/api/v1/workflow-runs/{rid}/events", label, route="GET /api/v1/workflow-runs/{id}/events (after)")
    if run["status"] in TERMINAL:  # a finished run's stream must replay and end
        sse_check(env, findings, f"/api/v1/workflow-runs/{rid}/stream", "GET /api/v1/workflow-runs/{id}/stream (after)", label, {},
                  ends=True)


def outcome(run: dict | None, alive: bool) -> str:
    if not alive:
        return "daemon died"
    if run is None:
        return "no run"
    err = run.get("error") or {}
    return f"{run['status']}{' (still, at the bound)' if run.get('_timed_out') else ''} {err.get('type', '')} {str(err.get('message', ''))[:120]}"


def test_hostile_agent_replies_end_their_step_cleanly(env: FuzzEnv) -> None:
    """Nested 900 and 100k deep JSON, 5 MB, non-JSON, NaN, huge numbers, surrogates, bad UTF-8, empty."""
    findings = env.findings("agent-replies")
    for name in AGENT_REPLIES:
        if name == "echo":
            continue
        defn = {"id": f"reply-{name}", "start": "call", "states": [
            {"name": "call", "type": "operation", "action": "agent.run", "input": {"agent": name, "task": "t"}, "end": True}]}
        run_hostile(env, findings, f"agent reply {name!r}", name, defn, expect_failed=False)
    findings.check()


def test_hostile_expressions_are_refused_or_fail_their_run(env: FuzzEnv) -> None:
    findings = env.findings("expressions")
    for n, (label, kind, expr) in enumerate(HOSTILE_EXPRESSIONS):
        run_hostile(env, findings, f"hostile {kind}", label, hostile_definition(f"hx-{n}", kind, expr), expect_failed=True,
                    wanted_types=("expression", "template") if kind == "template" else ("expression",))
    findings.check()


# -- 4. afterwards ---------------------------------------------------------------------------------
def test_a_plain_run_still_completes_afterwards(env: FuzzEnv) -> None:
    done = env.wait_run(env.daemon.start_run("fz-plain", {"who": "after"})["id"], RUN_BOUND_S)
    assert done is not None and done["status"] == "COMPLETED" and not done.get("_timed_out"), done
    assert done["context"]["steps"]["ask"] == {"ok": True} and done["context"]["summary"] == {"n": 1}
    assert env.client.get(env.daemon.base + "/healthz", timeout=1).status_code == 200
    assert env.alive()
    assert not env.deaths, f"the daemon died (and was replaced) during the module: {env.deaths}"


# -- item 8: crash tests that need no product hook ----------------------------------------------------
CARRY = """
id: carry
inputSchema: { type: object }
start: s
states:
  - { name: s, type: inject, data: { done: true }, end: true }
"""


async def _published(js: Any, run_id: str) -> bool:
    """Whether WORKFLOW_EVENTS holds any event of `run_id` (its subjects name the run)."""
    info = await js.stream_info("WORKFLOW_EVENTS", subjects_filter=">")
    return any(run_id in subject for subject in (info.state.subjects or {}))


def test_an_oversized_event_does_not_wedge_the_event_relay_across_a_kill(daemon_factory: Any, nats_server: NatsServer) -> None:
    """An event over NATS max_payload (1 MB; a 700 KB input is enough, run.started carries it twice) must not
    stop the events of later runs from reaching WORKFLOW_EVENTS, neither at once nor after a kill -9."""
    d = daemon_factory("oversized")
    d.add_workflow("carry", CARRY)
    d.env.update({"STATION_NATS_EMBEDDED": "false", "STATION_NATS_URL": nats_server.url})
    d.start()
    big = d.wait_status(d.start_run("carry", {"blob": "x" * 700_000})["id"])
    later = d.wait_status(d.start_run("carry", {"n": 1})["id"])
    wait_until(lambda: nats_server.run(lambda js: _published(js, later["id"])), timeout=20,
               what="the events of a run after the oversized one to reach WORKFLOW_EVENTS")
    d.kill()
    d.start()
    after_kill = d.wait_status(d.start_run("carry", {"n": 2})["id"])
    wait_until(lambda: nats_server.run(lambda js: _published(js, after_kill["id"])), timeout=20,
               what="the events of a run after a kill -9 to reach WORKFLOW_EVENTS")
    events = d.events(big["id"])  # the oversized run's own history is whole in SQLite
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)) and events[-1]["type"] == "run.completed"


def test_a_full_disk_fails_writes_promptly_and_the_daemon_recovers(daemon_factory: Any) -> None:
    """SQLite writes start failing (RLIMIT_FSIZE on the daemon: EFBIG, which SQLite reports as an I/O error,
    as it would SQLITE_FULL): every write request still answers within 10 s (never hangs with /healthz
    green), and once space is back the daemon (or, if it chose to exit, its restart) completes a new run."""
    d = daemon_factory("full-disk")
    d.add_workflow("carry", CARRY)
    d.start()
    d.wait_status(d.start_run("carry", {"n": 0})["id"])
    assert d.proc is not None
    sizes = [p.stat().st_size for p in d.data_dir.glob("station-wf.db*")]
    resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE, (max(sizes) + (512 << 10), resource.RLIM_INFINITY))
    answers: list[str] = []
    accepted: list[str] = []
    for i in range(40):  # 900 KB inputs: a start transaction (input, context, events) outgrows the page cache and spills
        try:
            resp = httpx.post(d.base + "/api/v1/workflow-runs", json={"workflowId": "carry", "input": {"blob": "x" * 900_000, "i": i}},
                              timeout=10)
        except httpx.TimeoutException:
            answers.append("no answer in 10 s")
            break
        except httpx.HTTPError as exc:
            answers.append(type(exc).__name__)
            break
        answers.append(str(resp.status_code))
        if resp.status_code == 201:
            accepted.append(resp.json()["run"]["id"])
        elif resp.status_code >= 500:
            assert error_shape_problem(resp) is None, resp.text
            break
    assert "no answer in 10 s" not in answers, f"a write hung once the disk was full: {answers}"
    assert any(a.startswith("5") for a in answers) or d.proc.poll() is not None, f"the writes never failed: {answers}"
    if d.proc.poll() is None:
        resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    else:
        d.start()
    after = d.wait_status(d.start_run("carry", {"n": 1})["id"], timeout=30)
    assert after["status"] == "COMPLETED"
    for run_id in accepted:  # what was accepted before the disk filled is not lost
        assert d.wait_status(run_id, timeout=30)["status"] == "COMPLETED"
