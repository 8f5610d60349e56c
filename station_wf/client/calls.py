"""The request/response layer `Client` and `AsyncClient` share, with no I/O: each API operation is a
function returning a `Call` (method, path, query, body, headers, how to read the answer), and
`decode` turns a response into a value or an `ApiError`. The two clients only send a Call.

Adding an operation: one builder here, then one two-line method on each client.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from station_wf.client.errors import ApiError

T = TypeVar("T")
API = "/api/v1"


def _seg(value: str) -> str:
    """A path segment, escaped (an id with '/' or '?' cannot reach another route)."""
    if not isinstance(value, str) or not value:
        raise ValueError("an id must be a non-empty string")
    return quote(value, safe="")


def _ident(body: Any) -> Any:
    return body


def _key(name: str) -> Callable[[Any], Any]:
    return lambda body: body[name]


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    content: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    read: Callable[[Any], T] = _ident
    raw: bool = False
    """True: the answer is text (metrics), not JSON."""

    def query(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if v is not None}

    def request_headers(self) -> dict[str, str]:
        out = dict(self.headers)
        if self.json is not None or (self.method in ("POST", "PUT", "DELETE") and self.content is None):
            out.setdefault("Content-Type", "application/json")
        return out

    def body(self) -> bytes | None:
        if self.content is not None:
            return self.content.encode("utf-8")
        if self.json is not None:
            return json.dumps(self.json).encode("utf-8")
        return None


def error_from(response: httpx.Response) -> ApiError:
    """The daemon's error document as an ApiError; a body in another shape (a proxy's page) still gives one."""
    rid = response.headers.get("x-request-id")
    try:
        err = response.json()["error"]
        return ApiError(response.status_code, str(err["code"]), str(err["message"]), err.get("details"),
                        err.get("request_id") or rid)
    except (ValueError, KeyError, TypeError):
        text = response.text[:200].strip() if response.text else ""
        return ApiError(response.status_code, f"http_{response.status_code}", text or response.reason_phrase, None, rid)


def decode(call: Call[T], response: httpx.Response) -> T:
    if response.status_code >= 400:
        raise error_from(response)
    if call.raw:
        return call.read(response.text)
    try:
        body = response.json()
    except ValueError:
        raise ApiError(response.status_code, "bad_response", "the answer is not JSON", response.text[:200],
                       response.headers.get("x-request-id")) from None
    return call.read(body)


def transport_error(exc: httpx.HTTPError, base_url: str) -> ApiError:
    if isinstance(exc, httpx.TimeoutException):
        return ApiError(0, "timeout", f"no answer from {base_url} in time ({type(exc).__name__})")
    return ApiError(0, "unreachable", f"cannot reach the daemon at {base_url}: {exc}")


def _idem(key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": key} if key else {}


def _object(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


# -- operations -------------------------------------------------------------------------------------
def health() -> Call[Any]:
    return Call("GET", "/healthz")


def ready() -> Call[Any]:
    return Call("GET", "/readyz")


def metrics() -> Call[str]:
    return Call("GET", "/metrics", raw=True)


def leases() -> Call[dict[str, Any]]:
    return Call("GET", f"{API}/leases")


def openapi() -> Call[dict[str, Any]]:
    return Call("GET", f"{API}/openapi.json")


# workflows
def list_workflows(status: str | None = None, q: str | None = None) -> Call[list[Any]]:
    return Call("GET", f"{API}/workflows", {"status": status, "q": q}, read=_key("workflows"))


def get_workflow(workflow_id: str, version: int | None = None) -> Call[Any]:
    return Call("GET", f"{API}/workflows/{_seg(workflow_id)}", {"version": version})


def create_workflow(definition: dict[str, Any]) -> Call[Any]:
    return Call("POST", f"{API}/workflows", json=definition)


def update_workflow(workflow_id: str, definition: dict[str, Any]) -> Call[Any]:
    return Call("PUT", f"{API}/workflows/{_seg(workflow_id)}", json=definition)


def disable_workflow(workflow_id: str) -> Call[Any]:
    return Call("DELETE", f"{API}/workflows/{_seg(workflow_id)}")


def workflow_versions(workflow_id: str) -> Call[list[Any]]:
    return Call("GET", f"{API}/workflows/{_seg(workflow_id)}/versions", read=_key("versions"))


def enable_workflow(workflow_id: str) -> Call[Any]:
    return Call("POST", f"{API}/workflows/{_seg(workflow_id)}/enable")


def workflow_sync(workflow_id: str) -> Call[Any]:
    return Call("GET", f"{API}/workflows/{_seg(workflow_id)}/sync")


def sync_workflow(workflow_id: str) -> Call[Any]:
    return Call("POST", f"{API}/workflows/{_seg(workflow_id)}/sync")


def rollback_workflow(workflow_id: str, version: int) -> Call[Any]:
    return Call("POST", f"{API}/workflows/{_seg(workflow_id)}/rollback", json={"version": version})


def workflow_schema() -> Call[dict[str, Any]]:
    return Call("GET", f"{API}/workflows/schema")


def validate_workflow(text: str, fmt: str = "yaml") -> Call[Any]:
    ctype = "application/json" if fmt == "json" else "application/yaml"
    return Call("POST", f"{API}/workflows/validate", content=text, headers={"Content-Type": ctype})


# runs
def start_run(workflow_id: str, input: Any = None, version: int | None = None,
              idempotency_key: str | None = None) -> Call[Any]:
    body = _object(workflowId=workflow_id, version=version, input={} if input is None else input)
    return Call("POST", f"{API}/workflow-runs", json=body, headers=_idem(idempotency_key), read=_key("run"))


def start_runs(items: list[Any]) -> Call[list[Any]]:
    return Call("POST", f"{API}/workflow-runs:batch", json={"runs": list(items)}, read=_key("results"))


def list_runs(workflow_id: str | None = None, status: str | list[str] | None = None, limit: int | None = None,
              cursor: str | None = None, parent_run_id: str | None = None) -> Call[Any]:
    if isinstance(status, list | tuple | set | frozenset):
        status = ",".join(status)
    return Call("GET", f"{API}/workflow-runs", {"workflowId": workflow_id, "status": status, "limit": limit,
                                               "cursor": cursor, "parentRunId": parent_run_id})


def get_run(run_id: str) -> Call[Any]:
    return Call("GET", f"{API}/workflow-runs/{_seg(run_id)}")


def run_steps(run_id: str) -> Call[list[Any]]:
    return Call("GET", f"{API}/workflow-runs/{_seg(run_id)}/steps", read=_key("steps"))


def run_events(run_id: str, after_seq: int = 0, limit: int | None = None) -> Call[Any]:
    return Call("GET", f"{API}/workflow-runs/{_seg(run_id)}/events", {"afterSeq": after_seq or None, "limit": limit})


def pause_run(run_id: str) -> Call[Any]:
    return Call("POST", f"{API}/workflow-runs/{_seg(run_id)}/pause")


def resume_run(run_id: str) -> Call[Any]:
    return Call("POST", f"{API}/workflow-runs/{_seg(run_id)}/resume")


def cancel_run(run_id: str, reason: str | None = None) -> Call[Any]:
    return Call("POST", f"{API}/workflow-runs/{_seg(run_id)}/cancel", json=_object(reason=reason))


def signal(run_id: str, name: str, payload: Any = None, idempotency_key: str | None = None) -> Call[Any]:
    return Call("POST", f"{API}/workflow-runs/{_seg(run_id)}/signals", json=_object(name=name, payload=payload),
                headers=_idem(idempotency_key), read=_key("signal"))


def rerun(run_id: str, version: int | str | None = None, input: Any = None) -> Call[Any]:
    return Call("POST", f"{API}/workflow-runs/{_seg(run_id)}/rerun", json=_object(version=version, input=input),
                read=_key("run"))


def redrive(run_id: str) -> Call[Any]:
    return Call("POST", f"{API}/workflow-runs/{_seg(run_id)}/redrive", json={}, read=_key("run"))


def children(run_id: str) -> Call[list[Any]]:
    return Call("GET", f"{API}/workflow-runs/{_seg(run_id)}/children", read=_key("runs"))


# approvals
def list_approvals(status: str | None = "pending", workflow_id: str | None = None) -> Call[list[Any]]:
    return Call("GET", f"{API}/workflow-approvals", {"status": status or "all", "workflowId": workflow_id},
                read=_key("approvals"))


def run_approvals(run_id: str) -> Call[list[Any]]:
    return Call("GET", f"{API}/workflow-runs/{_seg(run_id)}/approvals", read=_key("approvals"))


def get_approval(approval_id: str) -> Call[Any]:
    return Call("GET", f"{API}/workflow-approvals/{_seg(approval_id)}", read=_key("approval"))


def decide(approval_id: str, approve: bool, text: str | None = None, run_id: str | None = None,
           idempotency_key: str | None = None) -> Call[Any]:
    verb = "approve" if approve else "reject"
    body = _object(comment=text) if approve else _object(reason=text)
    base = f"{API}/workflow-runs/{_seg(run_id)}/approvals" if run_id else f"{API}/workflow-approvals"
    return Call("POST", f"{base}/{_seg(approval_id)}/{verb}", json=body, headers=_idem(idempotency_key),
                read=_key("approval"))


def approval_deliveries(approval_id: str) -> Call[list[Any]]:
    return Call("GET", f"{API}/workflow-approvals/{_seg(approval_id)}/deliveries", read=_key("deliveries"))


# schedules
def list_schedules(workflow_id: str | None = None) -> Call[list[Any]]:
    return Call("GET", f"{API}/workflow-schedules", {"workflowId": workflow_id}, read=_key("schedules"))


def set_schedule(schedule_id: str, enabled: bool) -> Call[Any]:
    verb = "enable" if enabled else "disable"
    return Call("POST", f"{API}/workflow-schedules/{_seg(schedule_id)}/{verb}")


# agents
def list_agents(environment: str | None = None) -> Call[Any]:
    return Call("GET", f"{API}/agents", {"environment": environment})


def get_agent(name: str, environment: str | None = None) -> Call[Any]:
    return Call("GET", f"{API}/agents/{_seg(name)}", {"environment": environment}, read=_key("agent"))
