"""`station-wf`: serve, sync, validate, and a thin client over the REST API (run, runs, workflows)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from station_wf.cli_agents import add_agents_commands
from station_wf.config import Settings, add_settings_flags, settings_from_args, settings_from_env

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
"""The run statuses the API reports for an ended run. Written out: the client commands speak only HTTP
and must start fast, so they import nothing of the engine (importing its vocabulary costs ~0.5 s)."""


class CliError(Exception):
    """Printed as one line, exit code 1."""


# -- local commands ---------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from station_wf.api.auth import TokenTableError
    from station_wf.daemon import DataDirLocked, serve
    from station_wf.governance.policies import PolicyFileError
    from station_wf.telemetry.logs import configure_logging

    settings = settings_from_args(args)
    configure_logging(settings.log_level.upper(), settings.log_format)
    try:
        run_event_loop(serve(settings), settings.event_loop)
    except (DataDirLocked, TokenTableError, PolicyFileError) as exc:
        raise CliError(str(exc)) from None
    return 0


def run_event_loop(main: Any, kind: str) -> None:
    """Run the daemon on uvloop (libuv: cheaper socket writes, callbacks and cross-thread wake-ups,
    measured in issue 14) or, with STATION_EVENT_LOOP=asyncio, on the standard loop."""
    if kind == "asyncio":
        asyncio.run(main)
        return
    if kind != "uvloop":
        raise CliError(f"STATION_EVENT_LOOP must be uvloop or asyncio, got {kind!r}")
    import uvloop

    uvloop.run(main)


def cmd_validate(args: argparse.Namespace) -> int:
    from station_wf.dsl.loader import load_definition_file
    from station_wf.dsl.problems import DefinitionError

    failed = 0
    for file in args.files:
        try:
            defn = load_definition_file(file)
        except DefinitionError as exc:
            failed += 1
            print(str(exc), file=sys.stderr)
        except OSError as exc:
            failed += 1
            print(f"{file}: {exc.strerror}", file=sys.stderr)
        else:
            errors, warnings = agent_problems(Path(file), defn)
            for warning in warnings:
                print(f"{file}: warning: {warning}", file=sys.stderr)
            if errors:
                failed += 1
                for err in errors:
                    print(f"{file}: {err}", file=sys.stderr)
                continue
            for warning in getattr(defn, "warnings", ()):
                print(str(warning), file=sys.stderr)
            dialect = f"; dialect {defn.dialect}: {defn.dialect_reason}" if hasattr(defn, "dialect") else ""
            print(f"{file}: ok ({defn['id']}, {len(defn['states'])} states){dialect}")
    return 1 if failed else 0


def agent_problems(file: Path, defn: dict) -> tuple[list[str], list[str]]:
    """For a file inside environments/<env>/workflows/, check its agents against environments/<env>/agents/."""
    from station_wf.agents.catalog import AgentCatalog
    from station_wf.agents.flow_check import check_definition_agents

    env_dir = file.resolve().parent.parent
    if file.resolve().parent.name != "workflows" or not (env_dir / "agents").is_dir():
        return [], []
    return check_definition_agents(defn, AgentCatalog(env_dir.parent, env_dir.name))


def cmd_sync(args: argparse.Namespace) -> int:
    from station_wf.services.definitions import sync_database

    settings = settings_from_args(args)
    report = sync_database(settings.database_target, Path(settings.environments_dir), args.env or settings.environment)
    for item in report.registered:
        print(f"registered {item['workflowId']} v{item['version']} ({item['file']})")
    for wf in report.unchanged:
        print(f"unchanged  {wf}")
    for wf in report.disabled:
        print(f"disabled   {wf} (file removed)")
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for err in report.errors:
        print(err, file=sys.stderr)
    return 1 if report.errors else 0


def cmd_migrate_store(args: argparse.Namespace) -> int:
    """Copy a stopped daemon's SQLite database into an empty Postgres one (logic: store/migrate_store.py)."""
    from station_wf.daemon import DataDirLock, DataDirLocked
    from station_wf.store.migrate_store import MigrateStoreError, migrate

    source = Path(args.source)
    if args.to.split(":", 1)[0] not in ("postgres", "postgresql"):
        raise CliError(f"--to must be a postgresql:// URL, got {args.to.split(':', 1)[0]}:...")
    if not source.is_file():
        raise CliError(f"no SQLite database at {source}")
    lock = DataDirLock(Path(args.data_dir) if args.data_dir else source.parent)
    try:
        lock.acquire()  # held while copying: no daemon may start on the file meanwhile
    except DataDirLocked as exc:
        raise CliError(f"{exc}: stop it first (migrate-store copies a stopped daemon's database)") from None
    try:
        copied = migrate(source, args.to)
    except MigrateStoreError as exc:
        raise CliError(str(exc)) from None
    finally:
        lock.release()
    if copied.migrations_applied:
        print(f"target migrated: {', '.join(copied.migrations_applied)}")
    width = max(map(len, copied.rows), default=0)
    for table, count in copied.rows.items():
        print(f"{table:<{width}}  {count:>10,} rows")
    print(f"copied {sum(copied.rows.values()):,} rows in {len(copied.rows)} tables in one transaction;"
          f" identity sequences reset past the copied ids")
    return 0


# -- REST client commands -----------------------------------------------------------------------
def _api_base(args: argparse.Namespace) -> str:
    if args.url:
        return args.url.rstrip("/")
    return "http://" + settings_from_env().http_addr


def api_call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(_api_base(args) + path, data=data, method=method)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    token = getattr(args, "token", None) or os.environ.get("STATION_API_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            err = json.loads(exc.read())["error"]
            detail = f" {json.dumps(err['details'])}" if err.get("details") else ""
            raise CliError(f"{exc.code} {err['code']}: {err['message']}{detail}") from None
        except (ValueError, KeyError, TypeError):
            raise CliError(f"HTTP {exc.code} from {req.full_url}") from None
    except urllib.error.URLError as exc:
        raise CliError(f"cannot reach the daemon at {_api_base(args)}: {exc.reason}") from None


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2))


def cmd_run(args: argparse.Namespace) -> int:
    try:
        run_input = json.loads(args.input) if args.input else {}
    except ValueError as exc:
        raise CliError(f"--input is not valid JSON: {exc}") from None
    body: dict[str, Any] = {"workflowId": args.workflow, "input": run_input}
    if args.version:
        body["version"] = args.version
    run = api_call(args, "POST", "/api/v1/workflow-runs", body)["run"]
    if not args.wait:
        _print(run)
        return 0
    deadline = time.monotonic() + args.timeout
    while run["status"] not in TERMINAL:
        if time.monotonic() > deadline:
            raise CliError(f"run {run['id']} still {run['status']} after {args.timeout}s")
        time.sleep(0.2)
        run = api_call(args, "GET", f"/api/v1/workflow-runs/{run['id']}")
    _print(run)
    return 0 if run["status"] == "COMPLETED" else 1


def cmd_runs(args: argparse.Namespace) -> int:
    action = args.action
    if action == "list":
        query = "&".join(f"{k}={v}" for k, v in (("workflowId", args.workflow), ("status", args.status), ("limit", args.limit)) if v)
        _print(api_call(args, "GET", "/api/v1/workflow-runs" + (f"?{query}" if query else "")))
        return 0
    if not args.run_id:
        raise CliError(f"runs {action} needs a RUN_ID")
    path = f"/api/v1/workflow-runs/{args.run_id}"
    if action == "show":
        _print(api_call(args, "GET", path))
    elif action in ("pause", "resume"):
        _print(api_call(args, "POST", f"{path}/{action}", {}))
    elif action == "cancel":
        _print(api_call(args, "POST", f"{path}/cancel", {"reason": args.reason} if args.reason else {}))
    elif action == "signal":
        if not args.name:
            raise CliError("runs signal needs --name")
        try:
            payload = json.loads(args.payload) if args.payload else None
        except ValueError as exc:
            raise CliError(f"--payload is not valid JSON: {exc}") from None
        _print(api_call(args, "POST", f"{path}/signals", {"name": args.name, "payload": payload}))
    return 0


def cmd_approvals(args: argparse.Namespace) -> int:
    if args.action == "list":
        query = "&".join(f"{k}={v}" for k, v in (("status", args.status), ("workflowId", args.workflow)) if v)
        _print(api_call(args, "GET", "/api/v1/workflow-approvals" + (f"?{query}" if query else "")))
        return 0
    if not args.approval_id:
        raise CliError(f"approvals {args.action} needs an APPROVAL_ID")
    run_id = args.run
    if not run_id:  # find the run from the inbox
        found = [a for a in api_call(args, "GET", "/api/v1/workflow-approvals?status=all")["approvals"] if a["id"] == args.approval_id]
        if not found:
            raise CliError(f"approval {args.approval_id!r} not found")
        run_id = found[0]["runId"]
    field = "comment" if args.action == "approve" else "reason"
    body = {field: args.comment} if args.comment else {}
    _print(api_call(args, "POST", f"/api/v1/workflow-runs/{run_id}/approvals/{args.approval_id}/{args.action}", body))
    return 0


def cmd_workflows(args: argparse.Namespace) -> int:
    path = f"/api/v1/workflows/{args.workflow_id}" if args.workflow_id else "/api/v1/workflows"
    _print(api_call(args, "GET", path))
    return 0


def cmd_demo_agent(args: argparse.Namespace) -> int:
    from station_wf.demo_agent import serve

    print(f"demo agent on http://{args.host}:{args.port}/agents/greeter", flush=True)
    serve(args.host, args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="station-wf", description="Durable workflow orchestrator daemon.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon (API, worker, embedded NATS)")
    add_settings_flags(serve)
    serve.set_defaults(func=cmd_serve)

    sync = sub.add_parser("sync", help="register environments/<env>/workflows/* as new versions")
    add_settings_flags(sync)
    sync.add_argument("--env", help="environment to sync (default: STATION_ENVIRONMENT or 'default')")
    sync.set_defaults(func=cmd_sync)

    validate = sub.add_parser("validate", help="check workflow files without storing them")
    validate.add_argument("files", nargs="+")
    validate.set_defaults(func=cmd_validate)

    migrate_store = sub.add_parser("migrate-store", help="copy a stopped daemon's SQLite database into an empty Postgres database")
    migrate_store.add_argument("--from", dest="source", required=True, metavar="PATH.sqlite", help="the SQLite file")
    migrate_store.add_argument("--to", required=True, metavar="postgresql://...", help="the empty target database")
    migrate_store.add_argument("--data-dir", help="the source daemon's data directory, whose lock is checked (default: the file's directory)")
    migrate_store.set_defaults(func=cmd_migrate_store)

    def client(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help="API base URL (default: http://$STATION_HTTP_ADDR)")
        p.add_argument("--token", help="API token (default: $STATION_API_TOKEN)")

    run = sub.add_parser("run", help="start a run through the API")
    run.add_argument("workflow")
    run.add_argument("--input", help="JSON object")
    run.add_argument("--version", type=int)
    run.add_argument("--wait", action="store_true", help="wait until the run ends; exit 1 unless COMPLETED")
    run.add_argument("--timeout", type=float, default=300.0)
    client(run)
    run.set_defaults(func=cmd_run)

    runs = sub.add_parser("runs", help="list, show, pause, resume, cancel or signal runs")
    runs.add_argument("action", choices=["list", "show", "pause", "resume", "cancel", "signal"])
    runs.add_argument("run_id", nargs="?")
    runs.add_argument("--workflow")
    runs.add_argument("--status")
    runs.add_argument("--limit", type=int)
    runs.add_argument("--reason", help="cancel: why")
    runs.add_argument("--name", help="signal: its name")
    runs.add_argument("--payload", help="signal: a JSON payload")
    client(runs)
    runs.set_defaults(func=cmd_runs)

    approvals = sub.add_parser("approvals", help="list pending approvals, approve or reject one")
    approvals.add_argument("action", choices=["list", "approve", "reject"])
    approvals.add_argument("approval_id", nargs="?")
    approvals.add_argument("--run", help="the approval's run (looked up when omitted)")
    approvals.add_argument("--comment", help="approve: comment; reject: reason")
    approvals.add_argument("--status", help="list: pending (default), approved, rejected, timed_out or all")
    approvals.add_argument("--workflow")
    client(approvals)
    approvals.set_defaults(func=cmd_approvals)

    workflows = sub.add_parser("workflows", help="list workflows, or show one")
    workflows.add_argument("workflow_id", nargs="?")
    client(workflows)
    workflows.set_defaults(func=cmd_workflows)

    add_agents_commands(sub)

    demo = sub.add_parser("demo-agent", help="serve the example environment's HTTP agent (greeter)")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8588)
    demo.set_defaults(func=cmd_demo_agent)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"station-wf: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # bad settings
        print(f"station-wf: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Settings", "main"]
