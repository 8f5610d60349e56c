"""What the CLI prints: tables with coloured statuses for a person at a terminal, JSON or YAML for scripts.

`-o table|json|yaml`; the default is a table when stdout is a terminal and JSON otherwise (so a pipe
gets the API's documents unchanged, as before). Terminal output goes through `rich` (colours only
where the terminal takes them; NO_COLOR is honoured), never hand-made escape codes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

STATUS_STYLE = {
    "COMPLETED": "green", "SUCCEEDED": "green", "active": "green", "approved": "green", "enabled": "green",
    "FAILED": "bold red", "rejected": "red", "TIMED_OUT": "red", "timed_out": "red",
    "CANCELLED": "bright_black", "disabled": "bright_black",
    "RUNNING": "cyan", "CONTINUED_AS_NEW": "blue", "PENDING": "blue", "SCHEDULED": "blue",
    "WAITING_APPROVAL": "yellow", "WAITING_SIGNAL": "yellow", "PAUSED": "magenta", "pending": "yellow",
}
FORMATS = ("table", "json", "yaml")
WAIT_LABEL = {"WAITING_APPROVAL": " (approval)", "WAITING_SIGNAL": " (signal)", "SCHEDULED": " (scheduled)", "PENDING": " (queued)"}
WATCH_MIN_S = 0.5
WATCH_MAX_ROUNDS = 100_000
"""A list's `--watch` refreshes at most every WATCH_MIN_S seconds and for at most this many rounds."""

_console: Console | None = None


def console() -> Console:
    global _console
    if _console is None:
        _console = Console(highlight=False, soft_wrap=False)
    return _console


def add_output_flags(p: argparse.ArgumentParser, watch: bool = False) -> None:
    p.add_argument("-o", "--output", choices=FORMATS, help="table (default on a terminal), json (default in a pipe) or yaml")
    if watch:
        p.add_argument("-w", "--watch", action="store_true", help="refresh the list until Ctrl-C (or --watch-for)")
        p.add_argument("--interval", type=float, default=2.0, help=f"--watch: seconds between refreshes (at least {WATCH_MIN_S})")
        p.add_argument("--watch-for", type=float, default=None, metavar="SECONDS", help="--watch: stop after this long")


def output_format(args: argparse.Namespace) -> str:
    chosen = getattr(args, "output", None)
    if chosen:
        return chosen
    return "table" if sys.stdout.isatty() else "json"


def human(args: argparse.Namespace) -> bool:
    return output_format(args) == "table"


def dump(value: Any, fmt: str) -> str:
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(value, sort_keys=False, allow_unicode=True).rstrip("\n")
    return json.dumps(value, indent=2)


def emit(args: argparse.Namespace, value: Any, table: Callable[[Any], Any] | None = None) -> None:
    """Print `value` as the chosen format; `table(value)` renders it for a person (JSON without one)."""
    fmt = output_format(args)
    if fmt == "table" and table is not None:
        console().print(table(value))
    else:
        print(dump(value, "yaml" if fmt == "yaml" else "json"), flush=True)


def watch(args: argparse.Namespace, fetch: Callable[[], Any], table: Callable[[Any], Any]) -> int:
    """`--watch`: re-fetch and redraw in place on a terminal; one document per refresh in a pipe."""
    interval = max(WATCH_MIN_S, args.interval)
    end = None if args.watch_for is None else time.monotonic() + args.watch_for
    fmt = output_format(args)
    if fmt != "table":
        for _ in range(WATCH_MAX_ROUNDS):
            value = fetch()
            print(json.dumps(value) if fmt == "json" else dump(value, "yaml") + "\n---", flush=True)
            if end is not None and time.monotonic() + interval > end:
                return 0
            time.sleep(interval)
        return 0
    from rich.live import Live

    try:
        with Live(table(fetch()), console=console(), auto_refresh=False) as live:
            for _ in range(WATCH_MAX_ROUNDS):
                if end is not None and time.monotonic() + interval > end:
                    break
                time.sleep(interval)
                live.update(table(fetch()), refresh=True)
    except KeyboardInterrupt:
        pass
    return 0


# -- pieces ------------------------------------------------------------------------------------------
def status_text(status: str | None) -> Text:
    status = status or "—"
    return Text(status, style=STATUS_STYLE.get(status, ""))


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def age(value: str | None, now: datetime | None = None) -> str:
    """`5s`, `3m`, `2h`, `4d` since an ISO time (kubectl's AGE column)."""
    at = parse_time(value)
    if at is None:
        return "—"
    secs = max(0, int(((now or datetime.now(UTC)) - at).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def clock(value: str | None) -> str:
    """`18:24:17.073` (UTC) of an ISO time: a run's events happen within a day, the date is noise."""
    at = parse_time(value)
    return at.strftime("%H:%M:%S.%f")[:12] if at else "—"


def duration(start: str | None, end: str | None) -> str:
    a, b = parse_time(start), parse_time(end)
    if a is None or b is None:
        return "—"
    return seconds((b - a).total_seconds())


def seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 60:
        return f"{value:.1f}s"
    return f"{int(value // 60)}m{int(value % 60):02d}s"


def _table(title: str | None, columns: Iterable[str]) -> Table:
    table = Table(title=title, box=None, header_style="bold", pad_edge=False, title_justify="left")
    for i, col in enumerate(columns):
        # The id and status columns stay whole (an id gets copied); the others fold when space is short.
        table.add_column(col, overflow="fold", no_wrap=i == 0 or col == "STATUS")
    return table


# -- the tables --------------------------------------------------------------------------------------
def runs_table(page: dict[str, Any], current: dict[str, str] | None = None) -> Table:
    """`runs list`: id, status, age, workflow, current step (the open steps of a run still going)."""
    current = current or {}
    table = _table(None, ("RUN", "STATUS", "AGE", "WORKFLOW", "CURRENT STEP"))
    for run in page.get("runs", []):
        table.add_row(run["id"], status_text(run["status"]), age(run.get("createdAt")),
                      f"{run['workflowId']} v{run['workflowVersion']}", current.get(run["id"], ""))
    if not page.get("runs"):
        table.add_row(Text("no runs", style="dim"), "", "", "", "")
    return table


def current_step(run: dict[str, Any]) -> str:
    names = []
    for step in run.get("currentSteps") or []:
        label = step["stateName"] + (f"[{step['foreachIndex']}]" if step.get("foreachIndex") is not None else "")
        label += WAIT_LABEL.get(step["status"], "")
        names.append(label)
    return ", ".join(dict.fromkeys(names))


def run_table(run: dict[str, Any]) -> Table:
    """`runs show`: the run's head, then one row per step attempt."""
    head = f"run {run['id']}  {run['workflowId']} v{run['workflowVersion']}"
    table = _table(head, ("STEP", "STATUS", "ATTEMPT", "EXECUTOR", "STARTED", "DURATION"))
    for step in run.get("steps") or []:
        name = step["stateName"] + (f"[{step['foreachIndex']}]" if step.get("foreachIndex") is not None else "")
        table.add_row(name, status_text(step["status"]), str(step.get("attempt") or ""), step.get("executor") or "",
                      age(step.get("startedAt")) + (" ago" if step.get("startedAt") else ""),
                      duration(step.get("startedAt"), step.get("completedAt")))
    table.caption = f"status {run['status']} · age {age(run.get('createdAt'))} · duration " \
                    f"{duration(run.get('startedAt') or run.get('createdAt'), run.get('completedAt'))}" + \
                    (f" · error: {run['error'].get('message')}" if isinstance(run.get("error"), dict) else "")
    table.caption_justify = "left"
    return table


def approvals_table(doc: dict[str, Any]) -> Table:
    table = _table(None, ("APPROVAL", "STATUS", "AGE", "WORKFLOW", "STEP", "RUN", "MESSAGE"))
    for a in doc.get("approvals", []):
        table.add_row(a["id"], status_text(a["status"]), age(a.get("createdAt")), a.get("workflowId") or "",
                      a.get("stateName") or "", a["runId"], (a.get("message") or "")[:80])
    if not doc.get("approvals"):
        table.add_row(Text("nothing waits for a decision", style="dim"), "", "", "", "", "", "")
    return table


def workflows_table(doc: dict[str, Any]) -> Table:
    table = _table(None, ("WORKFLOW", "STATUS", "VERSION", "SOURCE", "LAST RUN", "NAME"))
    for w in doc.get("workflows", []):
        table.add_row(w["id"], status_text(w["status"]), f"v{w['version']}", w.get("source") or "",
                      age(w.get("lastRunAt")) + (" ago" if w.get("lastRunAt") else ""), w.get("name") or "")
    if not doc.get("workflows"):
        table.add_row(Text("no workflows", style="dim"), "", "", "", "", "")
    return table


def workflow_table(w: dict[str, Any]) -> Table:
    table = _table(f"workflow {w['id']}", ("FIELD", "VALUE"))
    for key in ("name", "description", "status", "version", "versionLabel", "source", "sourceFile", "environment",
                "contentHash", "createdAt"):
        value = w.get(key)
        if value is not None:
            table.add_row(key, status_text(value) if key == "status" else str(value))
    states = (w.get("definition") or {}).get("states") or []
    table.add_row("states", ", ".join(s.get("name", "?") for s in states))
    return table


def schedules_table(doc: dict[str, Any]) -> Table:
    table = _table(None, ("SCHEDULE", "STATUS", "WORKFLOW", "CRON", "NEXT", "LAST RUN"))
    for s in doc.get("schedules", []):
        state = "enabled" if s.get("enabled") else "disabled"
        if not s.get("defined", True):
            state = "removed"
        table.add_row(s["id"], status_text(state), s["workflowId"], f"{s['cron']} ({s.get('timezone') or 'UTC'})",
                      s.get("nextFireAt") or "—", s.get("lastRunId") or "—")
    if not doc.get("schedules"):
        table.add_row(Text("no schedules", style="dim"), "", "", "", "", "")
    return table


def events_table(events: list[dict[str, Any]]) -> Table:
    table = _table(None, ("SEQ", "TIME", "TYPE", "STEP", "ACTOR"))
    for e in events:
        table.add_row(str(e["seq"]), clock(e.get("time")), event_type_text(e["type"]), e.get("stepId") or "", e.get("actor") or "")
    return table


def event_type_text(kind: str) -> Text:
    style = "red" if kind.endswith((".failed", ".timed_out", ".rejected")) else \
        "green" if kind.endswith((".succeeded", ".completed")) else "yellow" if kind.startswith(("approval.", "signal.")) else ""
    return Text(kind, style=style)


def agents_table(agents: list[dict[str, Any]]) -> Table:
    table = _table(None, ("AGENT", "TARGET", "HASH", "FILE"))
    for a in agents:
        table.add_row(a["name"], a.get("endpoint") or a.get("model") or "", (a.get("contentHash") or "").removeprefix("sha256:")[:12], a.get("sourceFile") or "")
    if not agents:
        table.add_row(Text("no agents", style="dim"), "", "", "")
    return table
