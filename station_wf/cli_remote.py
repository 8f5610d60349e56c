"""The CLI commands that talk to a daemon: run, runs, approvals, workflows, schedules.

Each prints a table on a terminal and the API's own document in a pipe (or with `-o json|yaml`);
errors are one line with the API's code and message.
"""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import quote

from rich.text import Text

from station_wf.cli_api import TERMINAL, CliError, api_call
from station_wf.cli_output import (
    add_output_flags,
    approvals_table,
    console,
    current_step,
    emit,
    events_table,
    human,
    run_table,
    runs_table,
    schedules_table,
    status_text,
    watch,
    workflow_table,
    workflows_table,
)
from station_wf.cli_watch import EXIT_HELP, follow, follow_events

CURRENT_STEP_LOOKUPS = 50
"""`runs list` on a terminal looks up the open steps of at most this many unfinished runs."""


def _json_arg(text: str | None, flag: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError as exc:
        raise CliError(f"{flag} is not valid JSON: {exc}") from None


def _seg(value: str) -> str:
    return quote(value, safe="")


def _said(args: argparse.Namespace, value: Any, text: Text | str) -> int:
    """A command that changed something: one line for a person, the answer's document for a script."""
    if human(args):
        console().print(text, soft_wrap=True)
    else:
        emit(args, value)
    return 0


# -- run -----------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    run_input = _json_arg(args.input, "--input")
    body: dict[str, Any] = {"workflowId": args.workflow, "input": {} if run_input is None else run_input}
    if args.version:
        body["version"] = args.version
    run = api_call(args, "POST", "/api/v1/workflow-runs", body)["run"]
    if args.wait:
        return follow(args, run, args.timeout)
    return _said(args, run, Text.assemble("started run ", (run["id"], "bold"), f" of {run['workflowId']} v{run['workflowVersion']} ",
                                          status_text(run["status"]), f"\nfollow it: station-wf runs watch {run['id']}"))


# -- runs ----------------------------------------------------------------------------------------
def _runs_page(args: argparse.Namespace) -> dict[str, Any]:
    return api_call(args, "GET", "/api/v1/workflow-runs",
                    params={"workflowId": args.workflow, "status": args.status, "limit": args.limit})


def _runs_view(args: argparse.Namespace, page: dict[str, Any]) -> Any:
    current: dict[str, str] = {}
    for run in [r for r in page["runs"] if r["status"] not in TERMINAL][:CURRENT_STEP_LOOKUPS]:
        try:
            current[run["id"]] = current_step(api_call(args, "GET", f"/api/v1/workflow-runs/{run['id']}"))
        except CliError:
            continue  # deleted meanwhile: the row shows no step
    return runs_table(page, current)


def cmd_runs(args: argparse.Namespace) -> int:
    action = args.action
    if action == "list":
        if args.watch:
            return watch(args, lambda: _runs_page(args), lambda page: _runs_view(args, page))
        page = _runs_page(args)
        emit(args, page, lambda p: _runs_view(args, p))
        return 0
    if not args.run_id:
        raise CliError(f"runs {action} needs a RUN_ID")
    path = f"/api/v1/workflow-runs/{_seg(args.run_id)}"
    if action == "show":
        emit(args, api_call(args, "GET", path), run_table)
    elif action == "watch":
        return follow(args, api_call(args, "GET", path), args.timeout)
    elif action == "events":
        if args.follow:
            return follow_events(args, args.run_id)
        events = _all_events(args, path)
        emit(args, {"runId": args.run_id, "events": events}, lambda doc: events_table(doc["events"]))
    elif action in ("pause", "resume"):
        run = api_call(args, "POST", f"{path}/{action}", {})
        return _said(args, run, Text.assemble(f"run {args.run_id} ", status_text(run["status"])))
    elif action == "cancel":
        run = api_call(args, "POST", f"{path}/cancel", {"reason": args.reason} if args.reason else {})
        return _said(args, run, Text.assemble(f"run {args.run_id} ", status_text(run["status"])))
    elif action in ("rerun", "redrive"):
        body: dict[str, Any] = {}
        if action == "rerun" and args.input:
            body["input"] = _json_arg(args.input, "--input")
        run = api_call(args, "POST", f"{path}/{action}", body)["run"]
        return _said(args, run, Text.assemble(f"{action}: run ", (run["id"], "bold"), " ", status_text(run["status"]),
                                              f"\nfollow it: station-wf runs watch {run['id']}"))
    elif action == "signal":
        if not args.name:
            raise CliError("runs signal needs --name")
        sent = api_call(args, "POST", f"{path}/signals", {"name": args.name, "payload": _json_arg(args.payload, "--payload")})
        return _said(args, sent, f"signal {args.name} sent to run {args.run_id}"
                     + (" (consumed)" if (sent.get("signal") or {}).get("consumed") else " (buffered)"))
    return 0


def _all_events(args: argparse.Namespace, path: str, max_pages: int = 1000) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = args.after_seq or 0
    for _ in range(max_pages):
        page = api_call(args, "GET", f"{path}/events", params={"afterSeq": after, "limit": 1000})
        out.extend(page["events"])
        if page["nextAfterSeq"] is None:
            break
        after = page["nextAfterSeq"]
    return out


# -- approvals -----------------------------------------------------------------------------------
def cmd_approvals(args: argparse.Namespace) -> int:
    if args.action == "list":
        fetch = lambda: api_call(args, "GET", "/api/v1/workflow-approvals",  # noqa: E731
                                 params={"status": args.status, "workflowId": args.workflow})
        if args.watch:
            return watch(args, fetch, approvals_table)
        emit(args, fetch(), approvals_table)
        return 0
    ids = args.ids
    if len(ids) == 2:  # approve RUN APPROVAL, as `run --wait` prints it
        run_id, approval_id = ids
    elif len(ids) == 1:
        run_id, approval_id = args.run, ids[0]
    else:
        raise CliError(f"approvals {args.action} needs APPROVAL_ID (or RUN_ID APPROVAL_ID)")
    if not run_id:  # find the run from the inbox
        found = [a for a in api_call(args, "GET", "/api/v1/workflow-approvals", params={"status": "all"})["approvals"]
                 if a["id"] == approval_id]
        if not found:
            raise CliError(f"approval {approval_id!r} not found")
        run_id = found[0]["runId"]
    field = "comment" if args.action == "approve" else "reason"
    body = {field: args.comment} if args.comment else {}
    answer = api_call(args, "POST", f"/api/v1/workflow-runs/{_seg(run_id)}/approvals/{_seg(approval_id)}/{args.action}", body)
    status = (answer.get("approval") or {}).get("status", args.action + "d")
    return _said(args, answer, Text.assemble(f"approval {approval_id} of run {run_id}: ", status_text(status)))


# -- workflows -----------------------------------------------------------------------------------
WORKFLOW_ACTIONS = ("list", "show", "enable", "disable", "sync", "rollback", "versions")


def cmd_workflows(args: argparse.Namespace) -> int:
    words = list(args.words)
    action = words.pop(0) if words and words[0] in WORKFLOW_ACTIONS else ("show" if words else "list")
    if action == "list":
        fetch = lambda: api_call(args, "GET", "/api/v1/workflows", params={"status": args.status})  # noqa: E731
        if args.watch:
            return watch(args, fetch, workflows_table)
        emit(args, fetch(), workflows_table)
        return 0
    if len(words) != 1:
        raise CliError(f"workflows {action} needs one WORKFLOW_ID")
    path = f"/api/v1/workflows/{_seg(words[0])}"
    if action == "show":
        emit(args, api_call(args, "GET", path, params={"version": args.version}), workflow_table)
    elif action == "versions":
        emit(args, api_call(args, "GET", f"{path}/versions"), lambda doc: workflows_table({"workflows": doc["versions"]}))
    elif action == "disable":
        wf = api_call(args, "DELETE", path)
        return _said(args, wf, Text.assemble(f"workflow {wf['id']} ", status_text(wf["status"])))
    elif action == "enable":
        wf = api_call(args, "POST", f"{path}/enable", {})
        return _said(args, wf, Text.assemble(f"workflow {wf['id']} ", status_text(wf["status"])))
    elif action == "sync":
        doc = api_call(args, "POST", f"{path}/sync", {})
        return _said(args, doc, Text.assemble(f"workflow {words[0]}: {doc['sync']['state']}", f" (v{doc['workflow']['version']})"))
    elif action == "rollback":
        if not args.version:
            raise CliError("workflows rollback needs --version N (the version to make current again)")
        wf = api_call(args, "POST", f"{path}/rollback", {"version": args.version})
        return _said(args, wf, f"workflow {wf['id']}: v{wf['version']} made from v{args.version}")
    return 0


# -- schedules -----------------------------------------------------------------------------------
def cmd_schedules(args: argparse.Namespace) -> int:
    if args.action == "list":
        fetch = lambda: api_call(args, "GET", "/api/v1/workflow-schedules", params={"workflowId": args.workflow})  # noqa: E731
        if args.watch:
            return watch(args, fetch, schedules_table)
        emit(args, fetch(), schedules_table)
        return 0
    if not args.schedule_id:
        raise CliError(f"schedules {args.action} needs a SCHEDULE_ID")
    doc = api_call(args, "POST", f"/api/v1/workflow-schedules/{_seg(args.schedule_id)}/{args.action}", {})
    return _said(args, doc, f"schedule {args.schedule_id} {args.action}d")


# -- the parsers ---------------------------------------------------------------------------------
def _client(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="API base URL (default: http://$STATION_HTTP_ADDR)")
    p.add_argument("--token", help="API token (default: $STATION_API_TOKEN)")


def add_remote_commands(sub: Any) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    run = sub.add_parser("run", help="start a run through the API (--wait follows it live)", epilog=EXIT_HELP, formatter_class=raw)
    run.add_argument("workflow")
    run.add_argument("--input", help="JSON object")
    run.add_argument("--version", type=int)
    run.add_argument("--wait", action="store_true", help="follow the run live until it ends; the exit code says how")
    run.add_argument("--timeout", type=float, default=300.0, help="--wait: seconds to follow (default 300); exit 6 if still going")
    add_output_flags(run)
    _client(run)
    run.set_defaults(func=cmd_run)

    runs = sub.add_parser("runs", help="list, show, watch, events, pause, resume, cancel, signal, rerun or redrive runs",
                          epilog=EXIT_HELP, formatter_class=raw)
    runs.add_argument("action", choices=["list", "show", "watch", "events", "pause", "resume", "cancel", "signal", "rerun", "redrive"])
    runs.add_argument("run_id", nargs="?")
    runs.add_argument("--workflow", help="list: only this workflow's runs")
    runs.add_argument("--status", help="list: e.g. RUNNING or FAILED,TIMED_OUT")
    runs.add_argument("--limit", type=int, help="list: at most this many (newest first)")
    runs.add_argument("--reason", help="cancel: why")
    runs.add_argument("--name", help="signal: its name")
    runs.add_argument("--payload", help="signal: a JSON payload")
    runs.add_argument("--input", help="rerun: a new input (JSON object; default: the old run's)")
    runs.add_argument("--follow", "-f", action="store_true", help="events: keep printing live events until the run ends")
    runs.add_argument("--after-seq", type=int, default=0, help="events: only events after this seq")
    runs.add_argument("--timeout", type=float, default=None, help="watch: stop following after this many seconds (exit 6)")
    add_output_flags(runs, watch=True)
    _client(runs)
    runs.set_defaults(func=cmd_runs)

    approvals = sub.add_parser("approvals", help="list pending approvals, approve or reject one")
    approvals.add_argument("action", choices=["list", "approve", "reject"])
    approvals.add_argument("ids", nargs="*", metavar="[RUN_ID] APPROVAL_ID")
    approvals.add_argument("--run", help="the approval's run (looked up when omitted)")
    approvals.add_argument("--comment", help="approve: comment; reject: reason")
    approvals.add_argument("--status", help="list: pending (default), approved, rejected, timed_out or all")
    approvals.add_argument("--workflow")
    add_output_flags(approvals, watch=True)
    _client(approvals)
    approvals.set_defaults(func=cmd_approvals)

    workflows = sub.add_parser("workflows", help="list workflows; show, versions, enable, disable, sync or rollback one",
                               description="workflows [list] | [show] ID | versions ID | enable ID | disable ID | sync ID | rollback ID --version N")
    workflows.add_argument("words", nargs="*", metavar="[ACTION] [WORKFLOW_ID]")
    workflows.add_argument("--version", type=int, help="show: that version; rollback: the version to make current again")
    workflows.add_argument("--status", help="list: active or disabled")
    add_output_flags(workflows, watch=True)
    _client(workflows)
    workflows.set_defaults(func=cmd_workflows)

    schedules = sub.add_parser("schedules", help="list schedules, enable or disable one")
    schedules.add_argument("action", choices=["list", "enable", "disable"])
    schedules.add_argument("schedule_id", nargs="?")
    schedules.add_argument("--workflow")
    add_output_flags(schedules, watch=True)
    _client(schedules)
    schedules.set_defaults(func=cmd_schedules)
