"""The one check every request passes after routing (called from `api/app.py`'s endpoint wrapper):
the route's permission against the caller's roles; and the headers an error of ours carries
(`Retry-After` on a 429)."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.requests import Request

from station_wf.errors import ServiceError
from station_wf.governance.permissions import permission_for, require


def route_permissions(path: str, methods: Iterable[str]) -> dict[str, str]:
    """Per method, what the route needs; resolved when the app is built (a missing entry fails there)."""
    return {m: permission_for(m, path) for m in methods if m != "HEAD"}


def check(request: Request, needs: dict[str, str]) -> None:
    """Raise 403 unless the principal's roles grant what this route and method need."""
    method = "GET" if request.method == "HEAD" else request.method
    permission = needs.get(method)
    if permission is None:
        return  # Starlette answers 405 for a method the route does not take
    require(request.scope.get("state", {}).get("principal"), permission)


def error_headers(exc: ServiceError) -> dict[str, str] | None:
    """`Retry-After` (whole seconds, at least 1) on a 429 whose details say when."""
    if exc.status == 429 and isinstance(exc.details, dict) and "retryAfterSeconds" in exc.details:
        return {"Retry-After": str(max(1, int(exc.details["retryAfterSeconds"])))}
    return None
