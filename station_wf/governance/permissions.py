"""What each route needs: ONE table keyed by (method, path template), checked once per request in the
app's endpoint wrapper (`api/app.py`). A route missing here makes `build_app` fail at start-up (and
`tests/test_roles.py` fail), so a new route cannot slip in unguarded: add one line below.
"""

from __future__ import annotations

from collections.abc import Iterable

from station_wf.errors import ServiceError
from station_wf.governance.roles import PERMISSIONS, PUBLIC, grants, roles_with
from station_wf.principals import Principal

_RUN = "/api/v1/workflow-runs/{run_id}"
_WF = "/api/v1/workflows/{workflow_id}"
_APPROVAL = "/api/v1/workflow-approvals/{approval_id}"

ROUTE_PERMISSIONS: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): "system:read",
    ("GET", "/api/v1/leases"): "system:read",
    ("GET", "/api/v1/openapi.json"): PUBLIC,   # the contract: any authenticated caller (the door still asks a token)
    ("GET", "/docs/vendor/{name}"): PUBLIC,    # the docs page's packaged Swagger UI files
    # /mcp (issue 20): the workflows as MCP tools start and follow runs; the door authenticates the caller
    ("GET", "/mcp"): "runs:start",
    ("POST", "/mcp"): "runs:start",
    ("DELETE", "/mcp"): "runs:start",
    # workflows
    ("GET", "/api/v1/workflows"): "workflows:read",
    ("POST", "/api/v1/workflows"): "workflows:write",
    ("GET", "/api/v1/workflows/schema"): "workflows:read",
    ("POST", "/api/v1/workflows/validate"): "workflows:read",
    ("GET", _WF): "workflows:read",
    ("PUT", _WF): "workflows:write",
    ("DELETE", _WF): "workflows:write",
    ("GET", f"{_WF}/versions"): "workflows:read",
    ("POST", f"{_WF}/enable"): "workflows:write",
    ("GET", f"{_WF}/sync"): "workflows:read",
    ("POST", f"{_WF}/sync"): "workflows:write",
    ("POST", f"{_WF}/rollback"): "workflows:write",
    ("POST", f"{_WF}/runs"): "runs:start",
    # runs
    ("POST", "/api/v1/workflow-runs"): "runs:start",
    ("POST", "/api/v1/workflow-runs:batch"): "runs:start",
    ("GET", "/api/v1/workflow-runs"): "runs:read",
    ("GET", "/api/v1/workflow-runs/stream"): "runs:read",
    ("GET", _RUN): "runs:read",
    ("GET", f"{_RUN}/events"): "runs:read",
    ("GET", f"{_RUN}/stream"): "runs:read",
    ("GET", f"{_RUN}/steps"): "runs:read",
    ("GET", f"{_RUN}/children"): "runs:read",
    ("POST", f"{_RUN}/pause"): "runs:control",
    ("POST", f"{_RUN}/resume"): "runs:control",
    ("POST", f"{_RUN}/cancel"): "runs:control",
    ("POST", f"{_RUN}/signals"): "runs:control",
    ("POST", f"{_RUN}/signal"): "runs:control",
    ("POST", f"{_RUN}/rerun"): "runs:start",
    ("POST", f"{_RUN}/redrive"): "runs:control",
    # approvals: any role; the gate's approver list decides (principals.may_decide)
    ("GET", f"{_RUN}/approvals"): "runs:read",
    ("POST", f"{_RUN}/approvals/{{approval_id}}/approve"): "approvals:decide",
    ("POST", f"{_RUN}/approvals/{{approval_id}}/reject"): "approvals:decide",
    ("GET", "/api/v1/workflow-approvals"): "runs:read",
    ("GET", _APPROVAL): "runs:read",
    ("GET", f"{_APPROVAL}/deliveries"): "runs:read",
    ("GET", f"{_APPROVAL}/audit"): "runs:read",
    ("POST", f"{_APPROVAL}/approve"): "approvals:decide",
    ("POST", f"{_APPROVAL}/reject"): "approvals:decide",
    # schedules, agents
    ("GET", "/api/v1/workflow-schedules"): "schedules:read",
    ("POST", "/api/v1/workflow-schedules/{schedule_id}/enable"): "schedules:write",
    ("POST", "/api/v1/workflow-schedules/{schedule_id}/disable"): "schedules:write",
    ("GET", "/api/v1/agents"): "agents:read",
    ("GET", "/api/v1/agents/{name}"): "agents:read",
    ("GET", "/api/v1/governance/denials"): "system:read",
    ("GET", "/api/v1/governance/policies"): "system:read",
    # integrations (issue 19): a hook verifies its caller itself (a hook without `verify:` asks for the
    # API token and `runs:start`: integrations/triggers.py); subscriptions send run data to any URL: admin
    ("POST", "/api/v1/hooks/{name}"): PUBLIC,
    ("GET", "/api/v1/webhook-subscriptions"): "integrations:read",
    ("POST", "/api/v1/webhook-subscriptions"): "integrations:write",
    ("GET", "/api/v1/webhook-subscriptions/{sid}"): "integrations:read",
    ("DELETE", "/api/v1/webhook-subscriptions/{sid}"): "integrations:write",
    ("GET", "/api/v1/webhook-deliveries"): "integrations:read",
    ("GET", "/api/v1/webhook-deliveries/{did}"): "integrations:read",
    ("POST", "/api/v1/webhook-deliveries/{did}/redeliver"): "integrations:write",
    ("GET", "/api/v1/bundles"): "workflows:read",
    ("GET", "/api/v1/bundles/{name}"): "workflows:read",
}
CATCH_ALL = "/api/{rest:path}"
"""The API's 404 route answers every method: public (it only says 'not found')."""


class MissingPermission(RuntimeError):
    """A route of the app has no entry in ROUTE_PERMISSIONS (a programming error: fail at start-up)."""


def permission_for(method: str, path: str) -> str:
    """The permission a route needs; raises MissingPermission for a route nobody declared."""
    if path == CATCH_ALL:
        return PUBLIC
    try:
        return ROUTE_PERMISSIONS[(method.upper(), path)]
    except KeyError:
        raise MissingPermission(f"route {method} {path} declares no permission: add it to "
                                "station_wf/governance/permissions.py ROUTE_PERMISSIONS") from None


def check_declared(routes: Iterable[tuple[str, Iterable[str]]]) -> None:
    """Every (path, methods) of the app is in the table (HEAD rides on GET)."""
    for path, methods in routes:
        for method in methods:
            if method != "HEAD":
                permission_for(method, path)
    for permission in ROUTE_PERMISSIONS.values():
        if permission not in PERMISSIONS:
            raise MissingPermission(f"unknown permission {permission!r} in ROUTE_PERMISSIONS")


def require(principal: Principal | None, permission: str) -> None:
    """403 naming the missing permission, the roles that grant it, and the principal's roles."""
    if permission == PUBLIC:
        return
    roles = principal.roles if principal is not None else ()
    if grants(roles, permission):
        return
    who = principal.name if principal is not None else "anonymous"
    needed = roles_with(permission)
    raise ServiceError(403, "forbidden",
                       f"{who!r} lacks permission {permission!r} (granted by role {', '.join(needed)}; "
                       f"{who!r} has {', '.join(roles) or 'no role'})",
                       {"permission": permission, "roles": list(roles), "grantedBy": needed})
