"""Policy checks (`policies.yaml`, see `policy_file.py`) for run, signal, cancel and query.

Each check raises `PolicyDenied` (a 403, or 400 for a missing cancel reason / input fields, 413 for
an oversized input) naming the policy (file:line) that refused. Callers record the denial in the
audit log in a transaction of its own (`record`), since the refused action's transaction is undone.

Conditions are Starlark (ours, `station_wf/expr/`), evaluated inside the caller's writer
transaction, so they run in the sandbox processes (a hostile or broken condition cannot take the
daemon down) and the same check serves the API and workflow-started (`workflow.run`) starts alike.
A condition that fails to evaluate denies (fail closed).
"""

from __future__ import annotations

import fnmatch
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from station_wf.dsl.problems import DefinitionError
from station_wf.errors import ServiceError
from station_wf.expr.starlark_eval import EvalFailure, ExpressionError, truthy
from station_wf.governance import rates
from station_wf.governance.policy_file import FILE_NAME, NONE, PolicyFile, Rule
from station_wf.principals import Principal
from station_wf.store import governance_denials
from station_wf.store.runs import load_run

POLICIES = PolicyFile(None)
"""The daemon's environment's file (`configure`); none until then."""
SYSTEM = Principal("system", (), ("system",))
"""Who starts a run nobody asked for over the API (a schedule; a workflow's child, unless the caller says)."""


class PolicyFileError(ValueError):
    """policies.yaml is broken at start-up: the daemon does not start (the message has file:line)."""


def configure(policy_file: PolicyFile) -> None:
    global POLICIES
    POLICIES = policy_file


def open_environment(environments_dir: str, environment: str) -> PolicyFile:
    """`<environments_dir>/<environment>/policies.yaml`, read now (PolicyFileError when broken) and in force."""
    policy_file = PolicyFile(Path(environments_dir) / environment / FILE_NAME)
    try:
        policy_file.load()
    except (DefinitionError, OSError, ValueError) as exc:
        raise PolicyFileError(f"{policy_file.path} is not valid:\n{exc}") from None
    configure(policy_file)
    return policy_file


@dataclass(frozen=True)
class Denial:
    action: str
    principal: str
    workflow_id: str | None
    run_id: str | None
    policy: str
    message: str


class PolicyDenied(ServiceError):
    def __init__(self, denial: Denial, status: int = 403, code: str = "policy_denied") -> None:
        super().__init__(status, code, denial.message, {"policy": denial.policy, "action": denial.action})
        self.denial = denial

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.denial, self.status, self.code))


def _principal(p: Principal | None) -> dict[str, Any]:
    p = p or SYSTEM
    return {"name": p.name, "groups": list(p.groups), "roles": list(p.roles)}


def matches(patterns: tuple[str, ...], workflow_id: str) -> bool:
    return any(fnmatch.fnmatchcase(workflow_id, pattern) for pattern in patterns)


def _deny(rule: Rule, principal: Principal | None, workflow_id: str | None, run_id: str | None, why: str,
          where: str | None = None, status: int = 403, code: str = "policy_denied") -> PolicyDenied:
    policy = f"{where or rule.where} ({rule.action})"
    name = (principal or SYSTEM).name
    return PolicyDenied(Denial(rule.action, name, workflow_id, run_id, policy, f"{why} (policy {policy})"), status, code)


def _lists(rule: Rule, principal: Principal | None, workflow_id: str, run_id: str | None) -> None:
    if matches(rule.block, workflow_id):
        raise _deny(rule, principal, workflow_id, run_id, f"{rule.action} of workflow {workflow_id!r} is blocked")
    if rule.allow is not None and not matches(rule.allow, workflow_id):
        raise _deny(rule, principal, workflow_id, run_id, f"{rule.action} of workflow {workflow_id!r} is not allowed")


def _condition(rule: Rule, principal: Principal | None, workflow_id: str, run_id: str | None,
               names: dict[str, Any]) -> None:
    if rule.condition is None:
        return
    try:
        ok = truthy(rule.condition.evaluate({"principal": _principal(principal), **names}))
    except (EvalFailure, ExpressionError) as exc:
        raise _deny(rule, principal, workflow_id, run_id, f"the {rule.action} condition failed: {exc}",
                    rule.condition_where) from None
    if not ok:
        raise _deny(rule, principal, workflow_id, run_id, f"the {rule.action} condition is false", rule.condition_where)


def check_start(conn: sqlite3.Connection, principal: Principal | None, workflow_id: str, version: int,
                run_input: Any, correlation_id: str | None = None, tags: dict[str, str] | None = None,
                rate: bool = True) -> None:
    """Every start (API, batch, rerun, a workflow's child): lists, input size and fields, condition, and
    (unless `rate` is False: a child start waits for nobody) the policy's rate."""
    rule = POLICIES.current().rule("run")
    if rule is None:
        return
    _lists(rule, principal, workflow_id, None)
    if rule.max_input_bytes is not None:
        size = len(json.dumps(run_input, separators=(",", ":")).encode())
        if size > rule.max_input_bytes:
            raise _deny(rule, principal, workflow_id, None,
                        f"the input is {size} bytes, over {rule.max_input_bytes // 1024} KB", status=413, code="input_too_large")
    for pattern, fields in rule.required_fields:
        if fnmatch.fnmatchcase(workflow_id, pattern):
            missing = [f for f in fields if not isinstance(run_input, dict) or f not in run_input]
            if missing:
                raise _deny(rule, principal, workflow_id, None, f"input field(s) {', '.join(missing)} required for {pattern}",
                            status=400, code="required_input")
    _condition(rule, principal, workflow_id, None, {
        "workflow": {"id": workflow_id, "version": version},
        "run": {"input": run_input, "correlationId": correlation_id, "tags": tags or {}},
        "request": {"action": "run"},
    })
    if rate and rule.rate is not None:
        rates.hit(conn, f"policy-start:{workflow_id}", rule.rate, f"starts of {workflow_id!r}")


def _run_names(run: Any) -> dict[str, Any]:
    return {"id": run.run_id, "status": run.status, "workflowId": run.workflow_id, "workflowVersion": run.workflow_version}


def check_signal(conn: sqlite3.Connection, principal: Principal | None, run: Any, name: str, payload: Any) -> None:
    rule = POLICIES.current().rule("signal")
    if rule is None:
        return
    _lists(rule, principal, run.workflow_id, run.run_id)
    if rule.allowed_signals is not None and name not in rule.allowed_signals:
        raise _deny(rule, principal, run.workflow_id, run.run_id, f"signal {name!r} is not allowed")
    _condition(rule, principal, run.workflow_id, run.run_id, {
        "workflow": {"id": run.workflow_id, "version": run.workflow_version}, "run": _run_names(run),
        "request": {"action": "signal", "signal": name, "payload": payload}})
    if rule.rate is not None:
        rates.hit(conn, f"policy-signal:{run.workflow_id}", rule.rate, f"signals to runs of {run.workflow_id!r}")


def check_cancel(principal: Principal | None, run: Any, reason: str | None) -> None:
    rule = POLICIES.current().rule("cancel")
    if rule is None:
        return
    if rule.require_reason and not (reason or "").strip():
        raise _deny(rule, principal, run.workflow_id, run.run_id, "a cancel needs a reason", status=400, code="reason_required")
    _lists(rule, principal, run.workflow_id, run.run_id)
    _condition(rule, principal, run.workflow_id, run.run_id, {
        "workflow": {"id": run.workflow_id, "version": run.workflow_version}, "run": _run_names(run),
        "request": {"action": "cancel", "reason": reason}})


def check_query(principal: Principal | None, workflow_id: str | None, statuses: list[str] | None, limit: int) -> int:
    """The list's limit, capped by `maxResults`; refuses workflows and statuses the policy does not allow."""
    rule = POLICIES.current().rule("query")
    if rule is None:
        return limit
    if workflow_id is not None:
        _lists(rule, principal, workflow_id, None)
    elif rule.allow is not None or rule.block:
        raise _deny(rule, principal, None, None, "name a workflowId: the query policy limits which workflows may be listed")
    if rule.allowed_statuses is not None:
        asked = statuses or []
        if not asked or any(s not in rule.allowed_statuses for s in asked):
            raise _deny(rule, principal, workflow_id, None,
                        f"list only runs that are {', '.join(rule.allowed_statuses)} (status=...)")
    _condition(rule, principal, workflow_id or "", None, {
        "workflow": {"id": workflow_id}, "run": {}, "request": {"action": "query", "status": statuses, "limit": limit}})
    return min(limit, rule.max_results) if rule.max_results else limit


def guard(conn: sqlite3.Connection, run_id: str, check: Callable[[Any], None]) -> None:
    """Run `check` on the run (signal, cancel) when policies are in force and the run exists (a missing
    run is the action's own 404). A cancel of a run that is CANCELLED already is idempotent: not checked."""
    if not active():
        return
    run = load_run(conn, run_id)
    if run is not None:
        check(run)


def active() -> bool:
    return POLICIES.current() is not NONE and bool(POLICIES.current().rules)


def record(conn: sqlite3.Connection, denial: Denial) -> None:
    """The denial in the audit log (and, for a denial about a run, as a `policy.denied` event of it)."""
    governance_denials.insert(conn, denial.action, denial.principal, denial.workflow_id, denial.run_id,
                              denial.policy, denial.message)
