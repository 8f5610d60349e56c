"""Roles and the permissions they grant: the one place that says what `viewer`, `operator`, `author`
and `admin` may do. Routes name a permission (`permissions.py`), never a role, so a role can grow
without touching a route.
"""

from __future__ import annotations

from collections.abc import Iterable

ROLES = ("viewer", "operator", "author", "admin")

PUBLIC = "public"
"""Needs no role: liveness/readiness probes, the API's own 404."""
APPROVALS_DECIDE = "approvals:decide"
"""Any role: who may decide a gate is the gate's approver list (`principals.may_decide`), unchanged."""

PERMISSIONS: dict[str, str] = {
    PUBLIC: "anyone (probes)",
    "workflows:read": "list and show workflows, their versions and schema; validate a file",
    "runs:read": "list and show runs, their events, steps and approvals; follow their streams",
    "agents:read": "list and show agent files",
    "schedules:read": "list schedules",
    APPROVALS_DECIDE: "approve or reject a gate the principal is named on",
    "runs:start": "start runs (one, a batch, Station's nested start)",
    "runs:control": "pause, resume, cancel and signal runs",
    "schedules:write": "enable and disable schedules",
    "system:read": "metrics and the leases table",
    "workflows:write": "create, update and disable workflows",
    "integrations:read": "list webhook subscriptions and their delivery log",
    "integrations:write": "create and delete webhook subscriptions, redeliver (they send run data to any URL)",
}

_VIEWER = frozenset({"workflows:read", "runs:read", "agents:read", "schedules:read", APPROVALS_DECIDE})
_OPERATOR = _VIEWER | {"runs:start", "runs:control", "schedules:write", "system:read", "integrations:read"}
_AUTHOR = _OPERATOR | {"workflows:write"}
GRANTS: dict[str, frozenset[str]] = {
    "viewer": _VIEWER,
    "operator": frozenset(_OPERATOR),
    "author": frozenset(_AUTHOR),
    "admin": frozenset(PERMISSIONS),
}


def role_problem(roles: object) -> str | None:
    """Why a tokens-file `roles` value is unusable, or None."""
    if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
        return f"'roles' must be a non-empty list of: {', '.join(ROLES)}"
    unknown = [r for r in roles if r not in GRANTS]
    if unknown:
        return f"unknown role {unknown[0][:40]!r} (roles are: {', '.join(ROLES)})"
    return None


def grants(roles: Iterable[str], permission: str) -> bool:
    if permission == PUBLIC:
        return True
    return any(permission in GRANTS.get(role, frozenset()) for role in roles)


def roles_with(permission: str) -> list[str]:
    """The roles that grant a permission, weakest first (for the 403's message)."""
    return [role for role in ROLES if permission in GRANTS[role]]
