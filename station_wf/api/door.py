"""What every request passes before a handler runs: request id, auth, body limit, SSE cap, and the
checks that make the no-auth loopback mode safe on a developer's laptop.

Why the no-auth checks: with no token, any web page the developer visits could otherwise drive the
daemon. A cross-site `fetch` with `Content-Type: text/plain` is a "simple" request (no preflight), so
mutating routes insist on JSON; a foreign `Origin` (any page but the dashboard the daemon serves
itself) is refused; and a `Host` that is not the bound address or a loopback name is refused, which
defeats DNS rebinding (the attacker's name resolving to 127.0.0.1). PUT/DELETE/PATCH always preflight,
and the daemon sends no CORS headers, so a browser never gets past that.
"""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import urlsplit

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from station_wf.api.auth import TokenTable
from station_wf.api.http import MAX_BODY_BYTES, SafeJSONResponse
from station_wf.principals import Principal

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
JSON_TYPES = frozenset({"application/json"})
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
YAML_ROUTES = frozenset({"/api/v1/workflows/validate"})
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
AUTH_PATHS = ("/api/", "/metrics", "/mcp")
"""`/mcp` is the daemon's MCP server (issue 20): the same tokens, the same principals.
`/healthz` and `/readyz` stay open: supervisors and load balancers probe them without a token, and
they tell only up/ready (no ids, no counts). `/metrics` lists workflow ids and counts: behind auth."""
OWN_AUTH_PATHS = ("/api/v1/hooks/",)
"""Incoming hooks verify their own signature or token (an outside system cannot send our bearer token);
a hook without one asks for the API token itself (`integrations/triggers.py`)."""
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
SSE_PATH = re.compile(r"^/api/v1/workflow-runs/(?:[^/]+/)?stream$")


def error_response(request_id: str, status: int, code: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> Response:
    """The one error shape; it cannot fail to render (surrogates, NaN, odd ids are all made safe)."""
    body = {"error": {"code": code, "message": message, "details": details, "request_id": request_id}}
    return SafeJSONResponse(body, status_code=status, headers={"X-Request-Id": request_id, **(headers or {})})


def _host_name(value: str) -> str:
    """`name[:port]` or `[v6]:port` -> the lower-case name."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class LoopbackPolicy:
    """The no-auth checks (see the module doc); `check` returns (status, code, message) or None."""

    def __init__(self, bound_host: str, port: int, extra_hosts: tuple[str, ...] = ()) -> None:
        self.port = port
        self.names = LOOPBACK_NAMES | {_host_name(bound_host)} | {h.strip().lower() for h in extra_hosts if h.strip()}

    def origin_allowed(self, origin: str) -> bool:
        try:
            parts = urlsplit(origin)
            port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        except ValueError:
            return False
        return parts.scheme in ("http", "https") and (parts.hostname or "") in self.names and port == self.port

    def check(self, method: str, path: str, headers: dict[str, str], has_body: bool) -> tuple[int, str, str] | None:
        host = headers.get("host")
        if host is not None and _host_name(host) not in self.names:
            return 421, "misdirected_request", (f"Host {host[:100]!r} is not this daemon's address; without a token the"
                                                " API answers loopback names only (see STATION_ALLOWED_HOSTS)")
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin):
            return 403, "forbidden_origin", f"Origin {origin[:100]!r} may not call this daemon (no-auth mode: same origin only)"
        if method in MUTATING and path.startswith(("/api/", "/mcp")):  # /mcp: issue 20, JSON-RPC over POST
            ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            allowed = JSON_TYPES | (YAML_TYPES if path in YAML_ROUTES else frozenset())
            untyped_ok = path in YAML_ROUTES  # stores nothing; an untyped body is read as YAML (the CLI's way)
            if (ctype or (has_body and not untyped_ok)) and ctype not in allowed:
                return 415, "unsupported_media_type", f"{method} {path} takes Content-Type: {' or '.join(sorted(allowed))}"
        return None


class RequestContext:
    """Pure ASGI middleware: request id, bearer auth, the no-auth policy, the 1 MiB body limit and the
    SSE connection cap, before any handler runs."""

    def __init__(self, app: ASGIApp, tokens: TokenTable, policy: LoopbackPolicy | None = None,
                 max_sse: int = 256) -> None:
        self.app = app
        self.tokens = tokens
        self.policy = policy
        self.max_sse = max_sse
        self.sse_open = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        supplied_id = headers.get("x-request-id") or ""
        request_id = supplied_id if _REQUEST_ID.match(supplied_id) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        path, method = scope["path"], scope["method"]

        async def refuse(status: int, code: str, message: str, details: Any = None, extra: dict[str, str] | None = None) -> None:
            await error_response(request_id, status, code, message, details, extra)(scope, receive, send)

        length = headers.get("content-length")
        has_body = (length is not None and length.strip() not in ("", "0")) or "transfer-encoding" in headers
        if self.tokens.enabled:
            principal = self.tokens.authenticate(headers.get("authorization"))
            scope["state"]["authenticated"] = principal is not None
            if principal is None and path.startswith(AUTH_PATHS) and not path.startswith(OWN_AUTH_PATHS):
                await refuse(401, "unauthorized", "missing or wrong bearer token")
                return
        else:  # loopback-only development: callers may name themselves
            if self.policy is not None:
                refused = self.policy.check(method, path, headers, has_body)
                if refused is not None:
                    await refuse(*refused)
                    return
            principal = Principal(headers.get("x-station-principal") or "anonymous", roles=("admin",))
        scope["state"]["principal"] = principal
        if length is not None and length.strip().isascii() and length.strip().isdigit() and int(length) > MAX_BODY_BYTES:
            await refuse(413, "payload_too_large", f"request body is over {MAX_BODY_BYTES} bytes", {"limit": MAX_BODY_BYTES})
            return

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                hdrs = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in hdrs):
                    hdrs.append((b"x-request-id", request_id.encode()))
                message["headers"] = hdrs
            await send(message)

        if method == "GET" and SSE_PATH.match(path):
            if self.sse_open >= self.max_sse:
                await refuse(503, "too_many_streams", f"{self.max_sse} event streams are open (STATION_MAX_SSE_CONNECTIONS);"
                             " try again later", {"limit": self.max_sse}, {"Retry-After": "5"})
                return
            self.sse_open += 1
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                self.sse_open -= 1
            return
        await self.app(scope, receive, send_with_id)
