"""Webhook subscriptions: what one is (checked field by field), the environment's `webhooks:` section
(`environments/<env>/integrations.yaml`), and the service behind the API and CLI.

A subscription names a URL, the event types it wants (`run.completed`, or a pattern `run.*`, `*`),
optionally the workflows it is about, a secret to sign with, and its own bounds (attempts before a
delivery is dead, the timeout of one POST, how many POSTs to it may be open at once). Subscriptions
from the environment file have ids `env:<name>`, are replaced at every start as the file says, and
cannot be changed over the API (edit the file).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from station_wf.errors import ServiceError, invalid, not_found
from station_wf.store import hook_deliveries as store
from station_wf.store.db import Readers, Writer

EVENT_FAMILIES = ("run.", "step.", "approval.", "signal.")
_PATTERN = re.compile(r"^(\*|(run|step|approval|signal)\.[a-z_*]{1,40})$")
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
FIELDS = frozenset({"id", "url", "events", "workflows", "secret", "enabled", "maxAttempts", "timeoutSeconds", "maxConcurrency"})
ENV_FIELDS = (FIELDS - {"id", "secret"}) | {"name", "secret", "secretEnv"}
DEFAULT_EVENTS = ("run.*", "approval.*")
MIN_SECRET = 16
INTEGRATIONS_FILES = ("integrations.yaml", "integrations.yml")
DELIVERY_STATUSES = frozenset({"pending", "delivered", "dead"})


@dataclass(frozen=True)
class Defaults:
    """The settings' defaults for a subscription that does not say (STATION_WEBHOOK_*)."""
    max_attempts: int = 8
    timeout_seconds: float = 10.0
    max_concurrency: int = 4


def wants(events: list[str], workflows: list[str], event_type: str, workflow_id: str) -> bool:
    """Does a subscription with these filters want this event?"""
    if workflows and workflow_id not in workflows:
        return False
    return any(fnmatchcase(event_type, pattern) for pattern in events)


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float, integer: bool) -> Any:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise invalid(f"{key} must be {kind} from {low:g} to {high:g}", {"field": key, "value": value})
    return value


def checked(body: Any, defaults: Defaults, source: str = "api") -> dict[str, Any]:
    """A subscription body as it is stored; 400 naming the field for anything wrong."""
    if not isinstance(body, dict):
        raise invalid("a subscription is a JSON object {url, events, workflows?, secret?, ...}")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(unknown)}", {"fields": unknown, "allowed": sorted(FIELDS)})
    sub_id = body.get("id") or f"whsub_{secrets.token_hex(8)}"
    if not isinstance(sub_id, str) or not _ID.match(sub_id) or (source == "api" and sub_id.startswith("env:")):
        raise invalid("id must be 1-100 of [A-Za-z0-9_.:-] (and not start with env:)", {"field": "id"})
    url = body.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2048:
        raise invalid("url must be an http(s) URL", {"field": "url", "value": url if isinstance(url, str) else None})
    events = body.get("events", list(DEFAULT_EVENTS))
    if not isinstance(events, list) or not events or not all(isinstance(e, str) and _PATTERN.match(e) for e in events):
        raise invalid("events must be a non-empty list of event types or patterns (run.*, step.failed, approval.*, *)",
                      {"field": "events", "value": events})
    workflows = body.get("workflows", [])
    if not isinstance(workflows, list) or not all(isinstance(w, str) and 0 < len(w) <= 200 for w in workflows):
        raise invalid("workflows must be a list of workflow ids", {"field": "workflows"})
    secret = body.get("secret")
    if secret is not None and (not isinstance(secret, str) or len(secret) < MIN_SECRET or len(secret) > 512):
        raise invalid(f"secret must be a string of {MIN_SECRET}-512 characters", {"field": "secret"})
    enabled = body.get("enabled", True)
    if not isinstance(enabled, bool):
        raise invalid("enabled must be true or false", {"field": "enabled"})
    return {
        "id": sub_id, "url": url, "events": json.dumps(sorted(set(events))), "workflows": json.dumps(sorted(set(workflows))),
        "secret": secret, "source": source, "enabled": enabled,
        "maxAttempts": _number(body, "maxAttempts", defaults.max_attempts, 1, 100, True),
        "timeoutSeconds": float(_number(body, "timeoutSeconds", defaults.timeout_seconds, 0.1, 300, False)),
        "maxConcurrency": _number(body, "maxConcurrency", defaults.max_concurrency, 1, 64, True),
    }


def integrations_file(environments_dir: Path, environment: str) -> Path | None:
    for name in INTEGRATIONS_FILES:
        path = environments_dir / environment / name
        if path.is_file():
            return path
    return None


def read_integrations(path: Path | None) -> dict[str, Any]:
    """The environment's integrations file as data ({} when there is none); a broken file raises
    ValueError naming the file."""
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or set(data) - {"webhooks", "hooks"}:
        raise ValueError(f"{path}: the file holds a mapping with `webhooks:` and/or `hooks:` lists")
    return data


def env_subscriptions(path: Path | None, defaults: Defaults, environ: dict[str, str] | None = None
                      ) -> tuple[list[dict[str, Any]], list[str]]:
    """The `webhooks:` section as stored subscriptions, and a `FILE: webhooks[i].field: message` per bad entry
    (a bad entry is skipped, the others load)."""
    environ = os.environ if environ is None else environ
    try:
        entries = read_integrations(path).get("webhooks") or []
    except ValueError as exc:
        return [], [str(exc)]
    if not isinstance(entries, list):
        return [], [f"{path}: webhooks: must be a list"]
    subs, errors = [], []
    for i, entry in enumerate(entries):
        where = f"{path}: webhooks[{i}]"
        try:
            if not isinstance(entry, dict):
                raise invalid("must be a mapping")
            unknown = sorted(set(entry) - ENV_FIELDS)
            if unknown:
                raise invalid(f"unknown key(s): {', '.join(unknown)}", {"field": unknown[0]})
            name = entry.get("name")
            if not isinstance(name, str) or not _ID.match(name):
                raise invalid("name is required: 1-100 of [A-Za-z0-9_.:-]", {"field": "name"})
            body = {k: v for k, v in entry.items() if k not in ("name", "secretEnv")}
            if entry.get("secretEnv") is not None:
                if entry["secretEnv"] not in environ:
                    raise invalid(f"secretEnv names {entry['secretEnv']!r}, which is not set", {"field": "secretEnv"})
                body["secret"] = environ[entry["secretEnv"]]
            body["id"] = f"env:{name}"
            subs.append(checked(body, defaults, source="env"))
        except ServiceError as exc:
            field = (exc.details or {}).get("field") if isinstance(exc.details, dict) else None
            errors.append(f"{where}{'.' + str(field) if field else ''}: {exc.message}")
    return subs, errors


def subscription_to_api(row: Any) -> dict[str, Any]:
    return {"id": row["subscription_id"], "url": row["url"], "events": json.loads(row["events"]),
            "workflows": json.loads(row["workflows"]), "signed": row["secret"] is not None, "source": row["source"],
            "enabled": bool(row["enabled"]), "maxAttempts": row["max_attempts"], "timeoutSeconds": row["timeout_seconds"],
            "maxConcurrency": row["max_concurrency"], "createdAt": row["created_at"], "updatedAt": row["updated_at"]}


def delivery_to_api(row: Any, attempts: list[Any] | None = None) -> dict[str, Any]:
    out = {"id": row["delivery_id"], "subscriptionId": row["subscription_id"], "eventId": row["event_id"],
           "event": row["event"], "runId": row["run_id"], "workflowId": row["workflow_id"], "status": row["status"],
           "attempts": row["attempts"], "lastStatus": row["last_status"], "lastError": row["last_error"],
           "nextAttemptAt": row["next_at"] if row["status"] == "pending" else None,
           "createdAt": row["created_at"], "updatedAt": row["updated_at"]}
    if attempts is not None:
        out["payload"] = json.loads(row["payload"])
        out["attemptLog"] = [{"attempt": a["attempt"], "responseStatus": a["response_status"],
                              "responseBody": a["response_body"], "error": a["error"], "durationMs": a["duration_ms"],
                              "at": a["at"]} for a in attempts]
    return out


class SubscriptionService:
    """Create, list, delete subscriptions; read the delivery log; redeliver. Writes go through the writer."""

    def __init__(self, writer: Writer, readers: Readers, defaults: Defaults, on_change: Any = None) -> None:
        self.writer = writer
        self.readers = readers
        self.defaults = defaults
        self.on_change = on_change  # wakes the delivery loop

    def _kick(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def create(self, body: Any) -> dict[str, Any]:
        sub = checked(body, self.defaults)
        existing = await store.get_subscription(self.readers, sub["id"])
        if existing is not None:
            raise ServiceError(409, "already_exists", f"subscription {sub['id']!r} exists", {"id": sub["id"]})
        await self.writer.run(lambda c: store.upsert_subscription(c, sub))
        return await self.get(sub["id"])

    async def sync_env(self, subs: list[dict[str, Any]]) -> int:
        """Start-up: the environment file's subscriptions replace the stored `env` ones."""
        return await self.writer.run(lambda c: store.replace_env_subscriptions(c, subs))

    async def list(self) -> list[dict[str, Any]]:
        return [subscription_to_api(r) for r in await store.list_subscriptions(self.readers)]

    async def get(self, subscription_id: str) -> dict[str, Any]:
        row = await store.get_subscription(self.readers, subscription_id)
        if row is None:
            raise not_found("webhook subscription", subscription_id)
        return subscription_to_api(row)

    async def delete(self, subscription_id: str) -> None:
        row = await store.get_subscription(self.readers, subscription_id)
        if row is None:
            raise not_found("webhook subscription", subscription_id)
        if row["source"] == "env":
            raise ServiceError(409, "managed_by_environment", f"subscription {subscription_id!r} comes from the environment's"
                               " integrations file: edit the file", {"id": subscription_id})
        await self.writer.run(lambda c: store.delete_subscription(c, subscription_id))

    async def deliveries(self, subscription_id: str | None, status: str | None, run_id: str | None,
                         before: int | None, limit: int) -> dict[str, Any]:
        if status is not None and status not in DELIVERY_STATUSES:
            raise invalid(f"status must be one of {', '.join(sorted(DELIVERY_STATUSES))}", {"status": status[:40]})
        if not 1 <= limit <= 1000:
            raise invalid("limit must be between 1 and 1000", {"limit": limit})
        rows = await store.deliveries(self.readers, subscription_id, status, run_id, before, limit)
        return {"deliveries": [delivery_to_api(r) for r in rows],
                "nextBefore": rows[-1]["event_id"] if len(rows) == limit else None}

    async def delivery(self, delivery_id: str) -> dict[str, Any]:
        row = await store.delivery(self.readers, delivery_id)
        if row is None:
            raise not_found("webhook delivery", delivery_id)
        return delivery_to_api(row, await store.attempts_for(self.readers, [delivery_id]))

    async def redeliver(self, delivery_id: str) -> dict[str, Any]:
        """Queue the delivery again now, with a fresh round of attempts; same delivery id (receivers de-duplicate)."""
        row = await store.delivery(self.readers, delivery_id)
        if row is None:
            raise not_found("webhook delivery", delivery_id)
        if await store.get_subscription(self.readers, row["subscription_id"]) is None:
            raise ServiceError(409, "subscription_deleted", f"the subscription of {delivery_id!r} was deleted",
                               {"subscriptionId": row["subscription_id"]})
        await self.writer.run(lambda c: store.redeliver(c, delivery_id, time.time()))
        self._kick()
        return await self.delivery(delivery_id)
