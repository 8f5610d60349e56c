"""Incoming triggers: `POST /api/v1/hooks/{name}` starts a run from an external system's payload.

A hook is named in the environment's `integrations.yaml` (`hooks:`), or is a workflow id itself. It is
verified before anything is parsed or stored:

- `hmac` with `format: station` (default): `X-Station-Signature: sha256=HMAC(secret, "<ts>.<body>")` and
  `X-Station-Timestamp: <ts>` within the replay window (what our own webhooks send);
- `format: github`: `X-Hub-Signature-256: sha256=HMAC(secret, body)` (GitHub signs no timestamp: its
  `X-GitHub-Delivery` id is the idempotency key by default, so a replay starts nothing new);
- `format: stripe`: `Stripe-Signature: t=<ts>,v1=<HMAC(secret, "<ts>.<body>")>`, `t` within the window;
- `bearer`: `Authorization: Bearer <token>` (the hook's own token);
- no `verify`: the caller needs the API's bearer token when the daemon has tokens (loopback mode: open).

`input:` maps the payload into the run's input: `$.`-paths, strings with `{{ path }}` placeholders
(paths only: nothing is evaluated on the request path), and literals; without it the payload is the
input. The run starts through `RunService.start_keyed` like `POST /workflow-runs`, keyed by
`idempotencyKey: {header: NAME}` or `{path: $.field}` (default: the signature itself, so an exact
replay inside the window gets the first answer), so a retried delivery never starts a second run.
"""

from __future__ import annotations

import hmac
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from station_wf.errors import ServiceError, invalid
from station_wf.expr.paths import PathError, get_path
from station_wf.governance.admission import RunMeta
from station_wf.governance.permissions import require
from station_wf.integrations.signing import hex_digest, matches
from station_wf.integrations.subscriptions import read_integrations
from station_wf.principals import Principal
from station_wf.services import idempotency as idem
from station_wf.services.runs import RunService

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_PURE_PATH = re.compile(r"^(\$\.)?[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+|\[\d+\])*$")
FORMATS = {"station": ("X-Station-Signature", "X-Station-Timestamp"),
           "github": ("X-Hub-Signature-256", None), "stripe": ("Stripe-Signature", None)}
HOOK_FIELDS = frozenset({"name", "workflow", "version", "verify", "input", "idempotencyKey"})
VERIFY_FIELDS = frozenset({"type", "format", "secret", "secretEnv", "token", "tokenEnv", "header", "timestampHeader"})


@dataclass(frozen=True)
class Hook:
    name: str
    workflow: str
    version: int | None = None
    verify: str = "none"                 # hmac | bearer | none
    fmt: str = "station"
    secret: str | None = None            # the HMAC key or the bearer token
    header: str = "X-Station-Signature"
    timestamp_header: str | None = "X-Station-Timestamp"
    input: Any = None                    # the mapping (None: the payload as it is)
    key_header: str | None = None
    key_path: str | None = None
    declared: bool = field(default=True)  # False: the workflow id used as a hook (no entry in the file)


def _secret(spec: dict[str, Any], key: str, environ: dict[str, str]) -> str | None:
    if spec.get(f"{key}Env") is not None:
        name = spec[f"{key}Env"]
        if name not in environ:
            raise invalid(f"{key}Env names {name!r}, which is not set", {"field": f"verify.{key}Env"})
        return environ[name]
    value = spec.get(key)
    if value is not None and (not isinstance(value, str) or len(value) < 16):
        raise invalid(f"{key} must be a string of 16+ characters", {"field": f"verify.{key}"})
    return value


def _check_mapping(value: Any, where: str) -> None:
    """Input templates take paths only (checked at load: a request never evaluates an expression)."""
    if isinstance(value, str):
        for inner in _PLACEHOLDER.findall(value):
            if not _PURE_PATH.match(inner):
                raise invalid(f"{{{{ {inner} }}}}: hook input templates take paths only (a.b, $.a[0])", {"field": where})
        if value.startswith("$.") and not _PURE_PATH.match(value):
            raise invalid(f"{value!r} is not a path", {"field": where})
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_mapping(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_mapping(v, f"{where}[{i}]")


def hook_from_entry(entry: Any, environ: dict[str, str]) -> Hook:
    if not isinstance(entry, dict):
        raise invalid("must be a mapping")
    unknown = sorted(set(entry) - HOOK_FIELDS)
    if unknown:
        raise invalid(f"unknown key(s): {', '.join(unknown)}", {"field": unknown[0]})
    name, workflow = entry.get("name"), entry.get("workflow")
    if not isinstance(name, str) or not _NAME.match(name):
        raise invalid("name is required: 1-200 of [A-Za-z0-9_.-]", {"field": "name"})
    if not isinstance(workflow, str) or not workflow:
        raise invalid("workflow (the workflow id to start) is required", {"field": "workflow"})
    version = entry.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise invalid("version must be a positive integer", {"field": "version"})
    spec = entry.get("verify") or {"type": "none"}
    if not isinstance(spec, dict) or set(spec) - VERIFY_FIELDS:
        raise invalid(f"verify takes {', '.join(sorted(VERIFY_FIELDS))}", {"field": "verify"})
    kind = spec.get("type", "hmac")
    fmt = spec.get("format", "station")
    if kind not in ("hmac", "bearer", "none") or fmt not in FORMATS:
        raise invalid("verify.type is hmac, bearer or none; verify.format is station, github or stripe", {"field": "verify"})
    secret = _secret(spec, "token" if kind == "bearer" else "secret", environ) if kind != "none" else None
    if kind != "none" and secret is None:
        raise invalid(f"verify.type {kind} needs a {'token' if kind == 'bearer' else 'secret'} (or its *Env)", {"field": "verify"})
    header, stamp = FORMATS[fmt]
    _check_mapping(entry.get("input"), "input")
    key = entry.get("idempotencyKey") or {}
    if not isinstance(key, dict) or set(key) - {"header", "path"} or len(key) > 1:
        raise invalid("idempotencyKey is {header: NAME} or {path: $.field}", {"field": "idempotencyKey"})
    if key.get("path") is not None and not _PURE_PATH.match(str(key["path"])):
        raise invalid("idempotencyKey.path must be a path", {"field": "idempotencyKey.path"})
    key_header = key.get("header") or ("X-GitHub-Delivery" if fmt == "github" and not key else None)
    return Hook(name, workflow, version, kind, fmt, secret, spec.get("header") or header,
                spec.get("timestampHeader", stamp), entry.get("input"), key_header, key.get("path"))


def load_hooks(path: Path | None, environ: dict[str, str] | None = None) -> tuple[dict[str, Hook], list[str]]:
    """The `hooks:` section; a bad entry is skipped with `FILE: hooks[i].field: message`."""
    environ = os.environ if environ is None else environ
    try:
        entries = read_integrations(path).get("hooks") or []
    except ValueError as exc:
        return {}, [str(exc)]
    if not isinstance(entries, list):
        return {}, [f"{path}: hooks: must be a list"]
    hooks: dict[str, Hook] = {}
    errors: list[str] = []
    for i, entry in enumerate(entries):
        try:
            hook = hook_from_entry(entry, environ)
            if hook.name in hooks:
                raise invalid(f"hook {hook.name!r} is named twice", {"field": "name"})
            hooks[hook.name] = hook
        except ServiceError as exc:
            where = (exc.details or {}).get("field") if isinstance(exc.details, dict) else None
            errors.append(f"{path}: hooks[{i}]{'.' + where if where else ''}: {exc.message}")
    return hooks, errors


def _unauthorized(message: str) -> ServiceError:
    return ServiceError(401, "invalid_signature", message)


def verify(hook: Hook, headers: dict[str, str], body: bytes, window_s: float, now: float) -> str | None:
    """Refuse (401) a request the hook does not accept; the signature (the default idempotency key) or None."""
    if hook.verify == "none":
        return None
    if hook.verify == "bearer":
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), (hook.secret or "").encode()):
            raise _unauthorized("missing or wrong bearer token for this hook")
        return None
    assert hook.secret is not None
    supplied = headers.get(hook.header.lower())
    if not supplied:
        raise _unauthorized(f"missing {hook.header} header")
    if hook.fmt == "stripe":
        parts = dict(p.split("=", 1) for p in supplied.split(",") if "=" in p)
        stamp, signatures = parts.get("t", ""), [p.split("=", 1)[1] for p in supplied.split(",") if p.startswith("v1=")]
        _in_window(stamp, window_s, now)
        expected = hex_digest(hook.secret, stamp.encode() + b"." + body)
        if not any(matches(expected, s) for s in signatures):
            raise _unauthorized("Stripe-Signature does not match")
        return supplied
    if hook.fmt == "github":
        if not matches("sha256=" + hex_digest(hook.secret, body), supplied):
            raise _unauthorized(f"{hook.header} does not match")
        return supplied
    stamp = headers.get((hook.timestamp_header or "").lower(), "")
    _in_window(stamp, window_s, now)
    if not matches("sha256=" + hex_digest(hook.secret, stamp.encode() + b"." + body), supplied):
        raise _unauthorized(f"{hook.header} does not match")
    return supplied


def _in_window(stamp: str, window_s: float, now: float) -> None:
    if not stamp.isdigit() or len(stamp) > 12:
        raise _unauthorized("missing or malformed signed timestamp")
    if abs(now - int(stamp)) > window_s:
        raise _unauthorized(f"the signed timestamp is outside the {window_s:g} s replay window")


def map_input(mapping: Any, payload: Any) -> Any:
    """The run's input from the payload: `$.`-paths and `{{ path }}` placeholders resolved (400 naming a
    missing one), literals as they are."""
    if mapping is None:
        return payload
    if isinstance(mapping, dict):
        return {k: map_input(v, payload) for k, v in mapping.items()}
    if isinstance(mapping, list):
        return [map_input(v, payload) for v in mapping]
    if not isinstance(mapping, str):
        return mapping
    if mapping.startswith("$.") and _PURE_PATH.match(mapping):
        return _lookup(payload, mapping)
    whole = _PLACEHOLDER.fullmatch(mapping.strip())
    if whole:
        return _lookup(payload, whole.group(1))
    return _PLACEHOLDER.sub(lambda m: _text(_lookup(payload, m.group(1))), mapping)


def _lookup(payload: Any, path: str) -> Any:
    try:
        return get_path(payload, path[2:] if path.startswith("$.") else path)
    except PathError as exc:
        raise invalid(f"the payload has no {path}: {exc}", {"path": path}, code="invalid_payload") from None


def _text(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)


class TriggerService:
    """Verify, map, and start through the run service (the one way a run starts)."""

    def __init__(self, runs: RunService, hooks: dict[str, Hook], window_s: float, api_tokens: bool) -> None:
        self.runs = runs
        self.hooks = hooks
        self.window_s = window_s
        self.api_tokens = api_tokens

    def hook(self, name: str) -> Hook:
        if not _NAME.match(name):
            raise invalid("hook name must be 1-200 of [A-Za-z0-9_.-]", {"name": name[:200]})
        return self.hooks.get(name) or Hook(name, name, declared=False)

    async def fire(self, name: str, headers: dict[str, str], body: bytes, authenticated: bool,
                   parse: Any, traceparent: str | None, principal: Principal | None = None) -> idem.Answer:
        hook = self.hook(name)
        if hook.verify == "none" and self.api_tokens:
            if not authenticated:
                raise ServiceError(401, "unauthorized", f"hook {name!r} has no verify: of its own; send the API's bearer token")
            require(principal, "runs:start")  # the API's token: its roles as for POST /workflow-runs
        # Who starts the run, for the policies: the API caller, or the verified outside system.
        meta = RunMeta(principal=principal if hook.verify == "none" else Principal(f"hook:{hook.name}", (), ("system",)))
        signature = verify(hook, headers, body, self.window_s, time.time())
        payload = parse(body)
        run_input = map_input(hook.input, payload)
        key = self._key(hook, headers, payload, signature)
        scope = f"hook {hook.name}"
        if key is None:
            run = await self.runs.start(hook.workflow, run_input, hook.version, traceparent=traceparent, meta=meta)
            return idem.Answer(201, {"run": run})
        keyed = idem.Keyed(scope, key, idem.request_hash("POST", scope, body))
        return await self.runs.start_keyed(keyed, hook.workflow, run_input, hook.version, traceparent=traceparent, meta=meta)

    @staticmethod
    def _key(hook: Hook, headers: dict[str, str], payload: Any, signature: str | None) -> str | None:
        if hook.key_header:
            value = headers.get(hook.key_header.lower())
            if not value:
                raise invalid(f"the idempotency key header {hook.key_header} is missing", {"header": hook.key_header})
            key = value
        elif hook.key_path:
            value = _lookup(payload, hook.key_path)
            if value is None or isinstance(value, (dict, list)):
                raise invalid(f"the idempotency key at {hook.key_path} must be a string or number", {"path": hook.key_path})
            key = str(value)
        elif signature is not None:
            key = "sig:" + hex_digest("station-wf", signature.encode())
        else:
            return None
        idem.check_key(key)
        return key
