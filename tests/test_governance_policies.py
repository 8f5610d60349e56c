"""policies.yaml through the daemon: allow/block lists, Starlark conditions over principal and
workflow, input size and required fields, allowed signals, a required cancel reason, query limits;
every denial in the audit log naming file:line; reloaded on change; a broken file refused with
file:line at start-up and ignored (the last good one kept) when edited in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from station_wf.dsl.problems import DefinitionError
from station_wf.governance.policies import PolicyFileError, open_environment
from station_wf.governance.policy_file import parse_policies
from tests.conftest import Daemon, wait_until

TOKENS = {
    "operator-token-0123456789": {"principal": "olga", "roles": ["operator"]},
    "admin-token-0123456789ab": {"principal": "ada", "roles": ["admin"]},
}
OPERATOR = {"Authorization": "Bearer operator-token-0123456789"}
ADMIN = {"Authorization": "Bearer admin-token-0123456789ab"}

POLICIES = """\
run:
  block: ["legacy.*"]
  condition: "workflow.id != 'pay' or 'admin' in principal.roles"
  maxInputSizeKb: 1
  requiredInputFields:
    pay: [amount, currency]
signal:
  allowedSignals: [go]
cancel:
  requireReason: true
query:
  maxResults: 3
"""
HOLD = """
id: {id}
start: hold
states:
  - {{ name: hold, type: operation, action: signal.wait, input: {{ signal: go }}, end: true }}
"""


PARENT = """
id: parent
start: call
states:
  - { name: call, type: operation, action: workflow.run, input: { workflow: legacy.old, input: {}, wait: true }, end: true }
"""


def _policies_path(d: Daemon) -> Path:
    return d.root / "environments" / "default" / "policies.yaml"


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("policies")
    (root / "environments" / "default" / "agents").mkdir(parents=True)
    tokens = root / "tokens.json"
    tokens.write_text(json.dumps(TOKENS))
    daemon = Daemon(root, None, {"STATION_API_TOKENS_FILE": str(tokens)})
    for wf in ("hold", "pay", "legacy.old"):
        daemon.add_workflow(wf, HOLD.format(id=wf))
    daemon.add_workflow("parent", PARENT)
    _policies_path(daemon).write_text(POLICIES)
    daemon.start()
    yield daemon
    daemon.stop()


def _post(d: Daemon, path: str, body: Any, headers: dict[str, str] = OPERATOR, **kw: Any) -> httpx.Response:
    return httpx.post(d.base + path, json=body, headers={**headers, **kw.pop("extra", {})}, timeout=15, **kw)


def _denials(d: Daemon) -> list[dict[str, Any]]:
    resp = httpx.get(d.base + "/api/v1/governance/denials", headers=ADMIN, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()["denials"]


def test_start_policies_refuse_and_are_audited_with_file_and_line(d: Daemon) -> None:
    where = f"{_policies_path(d)}:1 (run)"
    blocked = _post(d, "/api/v1/workflow-runs", {"workflowId": "legacy.old"})
    assert blocked.status_code == 403, blocked.text
    error = blocked.json()["error"]
    assert error["code"] == "policy_denied" and "blocked" in error["message"] and error["details"]["policy"] == where
    assert _denials(d)[0]["policy"] == where and _denials(d)[0]["principal"] == "olga"

    cond = _post(d, "/api/v1/workflow-runs", {"workflowId": "pay", "input": {"amount": 1, "currency": "EUR"}})
    assert cond.status_code == 403 and cond.json()["error"]["details"]["policy"] == f"{_policies_path(d)}:3 (run)"
    ok = _post(d, "/api/v1/workflow-runs", {"workflowId": "pay", "input": {"amount": 1, "currency": "EUR"}}, ADMIN)
    assert ok.status_code == 201, ok.text
    missing = _post(d, "/api/v1/workflow-runs", {"workflowId": "pay", "input": {"amount": 1}}, ADMIN)
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "required_input"
    assert "currency" in missing.json()["error"]["message"]
    big = _post(d, "/api/v1/workflow-runs", {"workflowId": "hold", "input": {"x": "y" * 2000}})
    assert big.status_code == 413 and big.json()["error"]["code"] == "input_too_large"

    keyed = _post(d, "/api/v1/workflow-runs", {"workflowId": "legacy.old"}, extra={"Idempotency-Key": "pol-1"})
    assert keyed.status_code == 403
    batch = _post(d, "/api/v1/workflow-runs:batch", {"runs": [{"workflowId": "hold"}, {"workflowId": "legacy.old"}]})
    statuses = [r["status"] for r in batch.json()["results"]]
    assert statuses == [201, 403], batch.text
    actions = [(x["action"], x["workflowId"]) for x in _denials(d)[:6]]
    assert actions.count(("run", "legacy.old")) == 3 and ("run", "pay") in actions


def test_a_workflow_starting_a_blocked_workflow_fails_its_step_and_is_audited(d: Daemon) -> None:
    run = _post(d, "/api/v1/workflow-runs", {"workflowId": "parent"}, ADMIN).json()["run"]
    wait_until(lambda: d.request("GET", f"/api/v1/workflow-runs/{run['id']}", headers=ADMIN).json()["status"] == "FAILED",
               20, what="the parent to fail")
    failed = d.request("GET", f"/api/v1/workflow-runs/{run['id']}", headers=ADMIN).json()
    assert "blocked" in json.dumps(failed["steps"]) and f"{_policies_path(d)}:1 (run)" in json.dumps(failed["steps"])
    assert [(x["principal"], x["workflowId"]) for x in _denials(d)[:1]] == [("workflow:parent", "legacy.old")]
    children = d.request("GET", f"/api/v1/workflow-runs/{run['id']}/children", headers=ADMIN).json()["runs"]
    assert children == []


def test_signal_cancel_and_query_policies(d: Daemon) -> None:
    run = _post(d, "/api/v1/workflow-runs", {"workflowId": "hold"}).json()["run"]
    wait_until(lambda: d.request("GET", f"/api/v1/workflow-runs/{run['id']}", headers=OPERATOR).json()["status"]
               == "WAITING_SIGNAL", 20, what="the run to wait")
    refused = _post(d, f"/api/v1/workflow-runs/{run['id']}/signals", {"name": "stop"})
    assert refused.status_code == 403 and "'stop' is not allowed" in refused.json()["error"]["message"]
    events = d.request("GET", f"/api/v1/workflow-runs/{run['id']}/events", headers=OPERATOR).json()["events"]
    denied = [e for e in events if e["type"] == "policy.denied"]
    assert denied and denied[0]["actor"] == "olga" and denied[0]["payload"]["action"] == "signal"
    no_reason = _post(d, f"/api/v1/workflow-runs/{run['id']}/cancel", {})
    assert no_reason.status_code == 400 and no_reason.json()["error"]["code"] == "reason_required"
    assert d.request("GET", f"/api/v1/workflow-runs/{run['id']}", headers=OPERATOR).json()["status"] == "WAITING_SIGNAL"
    done = _post(d, f"/api/v1/workflow-runs/{run['id']}/cancel", {"reason": "test over"})
    assert done.status_code == 200 and done.json()["status"] == "CANCELLED"
    assert _post(d, "/api/v1/workflow-runs", {"workflowId": "hold"}).status_code == 201  # 4 runs now
    page = d.request("GET", "/api/v1/workflow-runs", params={"limit": 50}, headers=OPERATOR).json()
    assert len(page["runs"]) == 3 and page["nextCursor"] is not None  # maxResults: 3


def test_policies_reload_on_change_and_a_broken_edit_keeps_the_last_good(d: Daemon) -> None:
    path = _policies_path(d)
    path.write_text(POLICIES.replace('block: ["legacy.*"]', 'block: ["hold"]'))

    def hold_refused() -> bool:
        return _post(d, "/api/v1/workflow-runs", {"workflowId": "hold"}).status_code == 403

    wait_until(hold_refused, 15, interval=0.3, what="the edited policies to apply")
    assert _post(d, "/api/v1/workflow-runs", {"workflowId": "legacy.old"}).status_code == 201
    path.write_text("run:\n  block: [hold]\n  bogus: 1\n")
    wait_until(lambda: httpx.get(d.base + "/api/v1/governance/policies", headers=ADMIN).json()["error"] is not None,
               15, interval=0.3, what="the broken edit to be seen")
    shown = httpx.get(d.base + "/api/v1/governance/policies", headers=ADMIN).json()
    assert f"{path}:3" in shown["error"] and "bogus" in shown["error"]
    assert hold_refused()  # the last good policies stay in force
    path.write_text(POLICIES)
    wait_until(lambda: not hold_refused(), 15, interval=0.3, what="the fixed policies to apply")


def test_a_broken_policies_file_stops_the_start_with_file_and_line(tmp_path: Path) -> None:
    """What `serve` prints (cli.py turns PolicyFileError into its one error message) before anything starts."""
    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "policies.yaml").write_text("run:\n  allow: [a]\n  condition: \"principal.name ==\"\n")
    with pytest.raises(PolicyFileError) as caught:
        open_environment(str(tmp_path), "default")
    assert f"{tmp_path / 'default' / 'policies.yaml'}:3" in str(caught.value) and "condition" in str(caught.value)
    assert open_environment(str(tmp_path), "other").current().rules == {}  # no file: no policies


@pytest.mark.parametrize("text, expected", [
    ("run: [1]", "p.yaml:1:1: run: must be a mapping"),
    ("run:\n  allow: all\n", "p.yaml:2:3: run.allow: must be a list"),
    ("signal:\n  rateLimit: fast\n", "p.yaml:2:3: signal.rateLimit: 'fast' is not a rate"),
    ("query:\n  maxResults: 0\n", "p.yaml:2:3: query.maxResults: must be a positive integer"),
    ("cancel:\n  requireReason: yes please\n", "p.yaml:2:3: cancel.requireReason: must be true or false"),
    ("run:\n  condition: \"secrets.key == 1\"\n", "p.yaml:2:3: run.condition: unknown name 'secrets'"),
    ("watch:\n  allow: [x]\n", "p.yaml:1:1: watch: unknown section"),
    ("run:\n  condition: \"" + "(" * 100 + "1" + ")" * 100 + "\"\n", "p.yaml:2:3: run.condition: is nested too deeply"),
    ("run:\n  block: [a]\n  block: [b]\n", "p.yaml:3:3: run.block: duplicate key"),
])
def test_policy_file_problems_name_file_and_line(text: str, expected: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_policies(text, "p.yaml")
    assert expected in str(caught.value), str(caught.value)
