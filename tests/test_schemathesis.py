"""schemathesis against a live daemon over every operation of its own OpenAPI document: no 5xx, no
answer the document does not allow (status, content type, schema, headers). Bounded examples per
operation; the SSE operations are left to tests/test_client.py (a stream is an open connection).

Path parameters get real ids as examples (a waiting run, a pending approval, a workflow, a schedule),
so the explicit phase reaches the handlers behind the 404s as well as the generated phase's noise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi import checks

from tests.conftest import PLAIN, WAITS, Daemon, wait_until

GATE = """
id: gate
start: ask
states:
  - name: ask
    type: operation
    action: human.approval
    input: { message: "ok?", approvers: ["user:alice"] }
    end: true
"""
CRON = """
id: cronny
schedules: [{ cron: "0 3 * * *", timezone: UTC }]
start: a
states:
  - { name: a, type: inject, data: { x: 1 }, end: true }
"""
MAX_EXAMPLES = int(os.environ.get("STATION_SCHEMATHESIS_EXAMPLES", "8"))
CHECKS = [checks.status_code_conformance, checks.content_type_conformance, checks.response_schema_conformance,
          checks.response_headers_conformance]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(Path(tmp_path_factory.mktemp("schemathesis")), None, {})
    hello = PLAIN.replace("id: plain", "id: hello")  # the document's examples start `hello`
    for name, text in (("plain", PLAIN), ("hello", hello), ("waits", WAITS), ("gate", GATE), ("cronny", CRON)):
        d.add_workflow(name, text)
    d.start()
    yield d
    d.kill()


def _examples(d: Daemon) -> dict[str, str]:
    waiting = d.start_run("waits")["id"]
    gated = d.start_run("gate")["id"]
    approval = wait_until(lambda: d.request("GET", f"/api/v1/workflow-runs/{gated}/approvals").json()["approvals"],
                          what="the approval")[0]["id"]
    schedule = d.request("GET", "/api/v1/workflow-schedules").json()["schedules"][0]["id"]
    return {"run_id": waiting, "approval_id": approval, "workflow_id": "plain", "schedule_id": schedule,
            "name": "swagger-ui.css"}


def exercise(strategy: Any, seen: list[str]) -> None:
    """Send MAX_EXAMPLES cases drawn from `strategy`; every 5xx and every violation of the document goes to `seen`."""

    @given(case=strategy)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate], derandomize=True, database=None)
    def check(case: Any) -> None:
        response = case.call(headers={"X-Station-Principal": "alice"})
        if response.status_code >= 500:
            seen.append(f"{case.method} {case.formatted_path} -> {response.status_code} {response.text[:300]}"
                        f" (query {case.query}, body {str(case.body)[:200]})")
            return
        try:
            case.validate_response(response, checks=CHECKS)
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - every violation is collected, reported together
            seen.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {str(exc)[:600]}")

    check()


def test_every_operation_answers_as_documented(daemon: Daemon) -> None:
    """Each operation: generated valid requests, the same with real ids in the path, and invalid ones.
    (The schemathesis pytest plugin does not run under pytest 9 yet, so hypothesis drives the strategies.)"""
    doc = daemon.request("GET", "/api/v1/openapi.json").json()
    real = _examples(daemon)
    schema = schemathesis.openapi.from_dict(doc)
    schema.config.update(base_url=daemon.base, request_timeout=15)
    schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True, database="none")
    schema = schema.exclude(path_regex=r"/stream$")
    failures: list[str] = []
    tested = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        strategies = [operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE),
                      *schema.get_strategies_from_examples(operation)]
        names = [p.name for p in operation.path_parameters]
        if names and all(n in real for n in names):
            strategies.append(operation.as_strategy(GenerationMode.POSITIVE,
                                                    path_parameters={n: real[n] for n in names}))
        seen: list[str] = []
        exercise(st.one_of(*strategies), seen)
        tested += 1
        failures.extend(seen[:3])
    assert tested >= 35, f"only {tested} operations were tested"
    assert not failures, "\n\n".join(failures)
