"""`station-wf bundle create|install|list` and `station-wf webhooks ...` (issue 19).

`bundle create` and `bundle install` work on files and the database directly, like `sync` (install
checks everything first and writes nothing unless all of it is valid: `integrations/bundles.py`);
`bundle list` and the webhook commands are thin clients of the REST API.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from station_wf.config import add_settings_flags, settings_from_args


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _problems(exc: Any) -> int:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    print(f"station-wf: the bundle was not installed ({len(exc.problems)} problem(s)); nothing was written",
          file=sys.stderr)
    return 1


def cmd_bundle_create(args: argparse.Namespace) -> int:
    from station_wf.integrations.bundles import BundleError, create

    out = Path(args.output)
    try:
        bundle = create(Path(args.dir), out)
    except BundleError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    for rel in bundle.ignored:
        print(f"warning: {rel}: not part of the bundle layout; left out", file=sys.stderr)
    print(f"created {out} ({bundle.name} {bundle.version}, {len(bundle.files)} files, {bundle.content_hash[:19]})")
    return 0


def cmd_bundle_install(args: argparse.Namespace) -> int:
    from station_wf.integrations.bundles import BundleError, install

    settings = settings_from_args(args)
    env = args.env or settings.environment
    try:
        done = install(Path(args.source), Path(settings.environments_dir), env, settings.database_target)
    except BundleError as exc:
        return _problems(exc)
    b = done.bundle
    for rel in b.ignored:
        print(f"warning: {rel}: not part of the bundle layout; not installed", file=sys.stderr)
    for rel in done.written:
        print(f"wrote      {rel}")
    for rel in done.removed:
        print(f"removed    {rel} (not in this version of the bundle)")
    for wf in done.workflows:
        print(f"workflow   {wf['id']} v{wf['version']}")
    for warning in done.report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for err in done.report.errors:  # other files of the environment (the bundle's own were checked first)
        print(err, file=sys.stderr)
    state = "installed" if done.written or done.removed else "unchanged"
    print(f"{state} bundle {b.name} {b.version} into environment {env}")
    return 0


def _client(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    from station_wf.cli import api_call

    return api_call(args, method, path, body)


def cmd_bundle_list(args: argparse.Namespace) -> int:
    query = f"?{urlencode({'workflowId': args.workflow})}" if args.workflow else ""
    _print(_client(args, "GET", f"/api/v1/bundles{query}"))
    return 0


def cmd_webhooks(args: argparse.Namespace) -> int:
    from station_wf.cli import CliError

    action = args.action
    if action == "list":
        _print(_client(args, "GET", "/api/v1/webhook-subscriptions"))
    elif action == "create":
        if not args.to:
            raise CliError("webhooks create needs --to URL (the receiver)")
        body: dict[str, Any] = {"url": args.to}
        for key, value in (("id", args.id), ("secret", args.secret), ("maxAttempts", args.max_attempts),
                           ("timeoutSeconds", args.timeout)):
            if value is not None:
                body[key] = value
        if args.events:
            body["events"] = [e.strip() for e in args.events.split(",") if e.strip()]
        if args.workflows:
            body["workflows"] = [w.strip() for w in args.workflows.split(",") if w.strip()]
        _print(_client(args, "POST", "/api/v1/webhook-subscriptions", body))
    elif action == "delete":
        if not args.target:
            raise CliError("webhooks delete needs a SUBSCRIPTION_ID")
        _client(args, "DELETE", f"/api/v1/webhook-subscriptions/{quote(args.target, safe='')}")
        print(f"deleted {args.target}")
    elif action == "deliveries":
        if args.target and ":" in args.target:  # one delivery, with its body and attempts
            _print(_client(args, "GET", f"/api/v1/webhook-deliveries/{quote(args.target, safe='')}"))
        else:
            q = {k: v for k, v in (("subscriptionId", args.target), ("status", args.status)) if v}
            _print(_client(args, "GET", "/api/v1/webhook-deliveries" + (f"?{urlencode(q)}" if q else "")))
    elif action == "redeliver":
        if not args.target:
            raise CliError("webhooks redeliver needs a DELIVERY_ID")
        _print(_client(args, "POST", f"/api/v1/webhook-deliveries/{quote(args.target, safe='')}/redeliver", {}))
    return 0


def add_bundle_commands(subparsers: Any) -> None:
    """Add `bundle create|install|list` and `webhooks list|create|delete|deliveries|redeliver`."""
    def client(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help="API base URL (default: http://$STATION_HTTP_ADDR)")
        p.add_argument("--token", help="API token (default: $STATION_API_TOKEN)")

    bundle = subparsers.add_parser("bundle", help="create a bundle archive, install one into an environment, list them")
    sub = bundle.add_subparsers(dest="bundle_command", required=True)
    create = sub.add_parser("create", help="check a bundle folder and write it as a .tar.gz")
    create.add_argument("dir", help="the folder (template.json, agents/, mcp-servers/, workflows/, variables.yml)")
    create.add_argument("-o", "--output", required=True, help="NAME.tar.gz")
    create.set_defaults(func=cmd_bundle_create)
    inst = sub.add_parser("install", help="check everything, then install a bundle (FILE.tar.gz or DIR) into an environment")
    inst.add_argument("source", metavar="FILE|DIR")
    inst.add_argument("--env", help="environment (default: STATION_ENVIRONMENT or 'default')")
    add_settings_flags(inst)
    inst.set_defaults(func=cmd_bundle_install)
    ls = sub.add_parser("list", help="the installed bundles (through the API)")
    ls.add_argument("--workflow", help="only the bundle holding this workflow")
    client(ls)
    ls.set_defaults(func=cmd_bundle_list)

    hooks = subparsers.add_parser("webhooks", help="webhook subscriptions and their delivery log (through the API)")
    hooks.add_argument("action", choices=["list", "create", "delete", "deliveries", "redeliver"])
    hooks.add_argument("target", nargs="?", help="a subscription id (delete, deliveries) or a delivery id")
    hooks.add_argument("--id", help="create: the subscription's id (default: generated)")
    hooks.add_argument("--to", help="create: the receiver's URL")
    hooks.add_argument("--events", help="create: comma-separated event types or patterns (default run.*,approval.*)")
    hooks.add_argument("--workflows", help="create: comma-separated workflow ids (default: all)")
    hooks.add_argument("--secret", help="create: HMAC key (16+ characters)")
    hooks.add_argument("--max-attempts", type=int)
    hooks.add_argument("--timeout", type=float, help="create: seconds per POST")
    hooks.add_argument("--status", help="deliveries: pending, delivered or dead")
    client(hooks)
    hooks.set_defaults(func=cmd_webhooks)
