"""Following one run live over its SSE stream: `run --wait`, `runs watch ID`, `runs events ID --follow`.

One line per step as it starts and as it ends (with its duration, from the events' own times), a
notice with the exact command to decide when the run waits on an approval, and an exit code that
says how the run ended (EXIT_CODES), so a script can branch on it without parsing anything.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import Any

from rich.console import Console
from rich.text import Text

from station_wf.cli_api import Event, StreamTimeout, api_call, follow_run
from station_wf.cli_output import (
    clock,
    dump,
    event_type_text,
    human,
    output_format,
    parse_time,
    seconds,
    status_text,
)

EXIT_CODES = {"COMPLETED": 0, "FAILED": 3, "CANCELLED": 4, "TIMED_OUT": 5}
EXIT_STILL_WAITING = 6
EXIT_HELP = """exit codes (run --wait, runs watch):
  0  the run COMPLETED
  1  an error (the API's code and message on stderr), e.g. unknown workflow or run, bad input
  2  bad command line or settings
  3  the run FAILED
  4  the run was CANCELLED
  5  the run TIMED_OUT
  6  the run had not ended when --timeout ran out (it goes on; `station-wf runs watch RUN` follows it)"""


def _stamp(event: Event) -> str:
    at = parse_time(event.data.get("time"))
    return at.strftime("%H:%M:%S") if at else "--:--:--"


class RunFollower:
    """Turns a run's events into progress lines (step started / ended with duration, approval hints)."""

    def __init__(self, args: argparse.Namespace, run_id: str, out: Console) -> None:
        self.args = args
        self.run_id = run_id
        self.out = out
        self.steps: dict[str, dict[str, Any]] = {}  # stepId -> {"name", "type", "started"}

    def _name(self, step_id: str | None) -> str:
        step = self.steps.get(step_id or "", {})
        return step.get("name") or (step_id or "?")

    def _command(self, verb: str, approval_id: str) -> str:
        parts = ["station-wf", "approvals", verb, self.run_id, approval_id]
        if getattr(self.args, "url", None):
            parts += ["--url", self.args.url]
        return shlex.join(parts)

    def line(self, event: Event, text: Text | str) -> None:
        row = Text(_stamp(event) + "  ", style="dim")
        row.append(text if isinstance(text, Text) else Text(text))
        self.out.print(row, soft_wrap=True)

    def handle(self, event: Event) -> None:
        p = event.data.get("payload") or {}
        sid = event.data.get("stepId")
        kind = event.type
        if kind == "step.scheduled":
            label = p.get("stateName") or "?"
            if p.get("foreachIndex") is not None:
                label += f"[{p['foreachIndex']}]"
            self.steps[sid] = {"name": label, "type": p.get("stateType")}
        elif kind == "step.started":
            step = self.steps.setdefault(sid, {"name": sid})
            step["started"] = parse_time(event.data.get("time"))
            attempt = f" attempt {p['attempt']}" if (p.get("attempt") or 1) > 1 else ""
            self.line(event, Text.assemble(("▶ ", "cyan"), (self._name(sid), "bold"), f" started ({p.get('executor') or step.get('type')}){attempt}"))
        elif kind in ("step.succeeded", "step.failed", "step.cancelled"):
            step = self.steps.get(sid, {})
            ended = parse_time(event.data.get("time"))
            took = seconds((ended - step["started"]).total_seconds()) if ended and step.get("started") else "?"
            if kind == "step.succeeded":
                self.line(event, Text.assemble(("✓ ", "green"), (self._name(sid), "bold"), f" succeeded in {took}"))
            elif kind == "step.cancelled":
                self.line(event, Text.assemble(("■ ", "bright_black"), (self._name(sid), "bold"), f" cancelled after {took}"))
            else:
                err = p.get("error") or {}
                retry = " (will retry)" if p.get("willRetry") else ""
                self.line(event, Text.assemble(("✗ ", "red"), (self._name(sid), "bold"), f" failed in {took}{retry}: ",
                                               (f"{err.get('type', 'error')}: {err.get('message', '')}", "red")))
        elif kind == "approval.requested":
            aid = p.get("approvalId", "?")
            who = ", ".join(p.get("approvers") or []) or "anyone"
            self.line(event, Text.assemble(("⏸ ", "yellow"), (self._name(sid), "bold"),
                                           (f" waits for an approval ({who}): {p.get('message') or ''}", "yellow")))
            self.out.print(Text(f"          approve: {self._command('approve', aid)}", style="yellow"), soft_wrap=True)
            self.out.print(Text(f"          reject:  {self._command('reject', aid)}", style="yellow"), soft_wrap=True)
        elif kind == "approval.decided":
            verdict = "approved" if p.get("approved") else "rejected"
            self.line(event, Text.assemble(("• ", "yellow"), f"{self._name(sid)} {verdict} by {event.data.get('actor') or '?'}"))
        elif kind == "approval.timed_out":
            self.line(event, Text.assemble(("• ", "red"), f"{self._name(sid)}: the approval timed out"))
        elif kind == "signal.waiting":
            self.line(event, Text.assemble(("⏸ ", "yellow"), (self._name(sid), "bold"), f" waits for signal {p.get('signal') or p.get('name') or ''!s}"))
            self.out.print(Text(f"          send it: station-wf runs signal {self.run_id} --name {p.get('signal') or p.get('name') or 'NAME'}", style="yellow"), soft_wrap=True)
        elif kind == "run.continued_as_new":
            self.line(event, Text.assemble(("↻ ", "blue"), f"continues as run {p.get('runId', '?')} (v{p.get('version', '?')})"))
        elif kind == "child.started":
            self.line(event, Text.assemble(("↳ ", "blue"), (self._name(sid), "bold"), f" started child run {p.get('runId', '?')}"
                                           + (f" of {p['workflowId']}" if p.get("workflowId") else "")))
        elif kind in ("run.paused", "run.resumed", "run.redriven"):
            self.line(event, f"run {kind.split('.')[1]}" + (f" by {event.data['actor']}" if event.data.get("actor") else ""))
        elif kind.startswith("run.") and kind not in ("run.created", "run.started"):
            status = kind.split(".", 1)[1].upper()
            text = Text.assemble("run ", status_text(status))
            if isinstance(p.get("error"), dict):
                text.append(f": {p['error'].get('message', '')}")
            self.line(event, text)


MAX_REFOLLOWS = 100
"""A run's stream followed again after it closed with the run still going, at most this many times."""
MAX_CONTINUATIONS = 1000
"""`run --wait` follows a run that continued as new into its continuation, at most this many times."""


def follow(args: argparse.Namespace, run: dict[str, Any], timeout: float | None) -> int:
    """Follow `run` (and what it continues as) until it ends or `timeout` seconds pass; print the run at
    the end; the exit code says how it ended."""
    to_stdout = human(args)
    out = Console(highlight=False, stderr=not to_stdout)  # a script's stdout keeps only the document
    deadline = None if timeout is None else time.monotonic() + timeout
    for _ in range(MAX_CONTINUATIONS):
        run_id = run["id"]
        if to_stdout:
            out.print(Text.assemble("following run ", (run_id, "bold"), f" of {run['workflowId']} v{run['workflowVersion']}"
                                    " (Ctrl-C stops watching; the run goes on)", style="dim"), soft_wrap=True)
        follower = RunFollower(args, run_id, out)
        ended, last = True, 0
        for _ in range(MAX_REFOLLOWS):  # a stream closed while the run goes on (a daemon stopping): follow again
            try:
                for event in follow_run(args, run_id, last, deadline):
                    last = event.id or last
                    follower.handle(event)
            except StreamTimeout:
                ended = False
            except KeyboardInterrupt:
                out.print(Text(f"stopped watching; run {run_id} goes on", style="dim"))
                return 130
            final = api_call(args, "GET", f"/api/v1/workflow-runs/{run_id}")
            if not ended or final["status"] in EXIT_CODES or final.get("continuedAs"):
                break
            time.sleep(0.2)
        if not final.get("continuedAs"):  # a run that continued as new ended COMPLETED and names its successor
            break
        out.print(Text(f"run {run_id} continued as new: {final['continuedAs']}", style="dim"), soft_wrap=True)
        run = api_call(args, "GET", f"/api/v1/workflow-runs/{final['continuedAs']}")
    status = final["status"]
    if not ended and status not in EXIT_CODES:
        hint = f"station-wf runs watch {run_id}" + (f" --url {args.url}" if getattr(args, "url", None) else "")
        print(f"station-wf: run {run_id} still {status} after {timeout:g}s; follow it with: {hint}", file=sys.stderr)
    if to_stdout:
        began, done = parse_time(final.get("startedAt") or final.get("createdAt")), parse_time(final.get("completedAt"))
        took = f" in {seconds((done - began).total_seconds())}" if began and done else ""
        out.print(Text.assemble("run ", (run_id, "bold"), " ", status_text(status), took))
    else:
        print(dump(final, output_format(args)), flush=True)
    return EXIT_CODES.get(status, EXIT_STILL_WAITING)


def follow_events(args: argparse.Namespace, run_id: str) -> int:
    """`runs events ID --follow`: every event (the backlog, then live) until the run ends."""
    fmt = output_format(args)
    out = Console(highlight=False)
    try:
        for event in follow_run(args, run_id, getattr(args, "after_seq", 0) or 0, None):
            if fmt == "table":
                d = event.data
                out.print(Text.assemble(f"{d.get('seq', event.id):>5}  ", (clock(d.get("time")), "dim"), "  ",
                                        event_type_text(event.type), f"  {d.get('stepId') or ''}"), soft_wrap=True)
            elif fmt == "yaml":
                print(dump(event.data, "yaml") + "\n---", flush=True)
            else:
                import json

                print(json.dumps(event.data), flush=True)  # one event per line (NDJSON)
    except KeyboardInterrupt:
        return 130
    return 0
