"""The CLI's HTTP layer: one JSON call, and a run's event stream followed over SSE with a deadline.

Kept apart from the commands so the commands never see HTTP: an error answer becomes one `CliError`
line (`404 not_found: ...`), a daemon that cannot be reached another, and a stream that drops is
opened again from the last event id (no gap, no duplicate), a bounded number of times in a row.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from station_wf.config import settings_from_env

MAX_RECONNECTS = 5
"""Failed stream connections in a row before the CLI gives up (any event received resets the count)."""
MAX_READ_S = 20.0
"""Longest silent wait on one stream connection: past it the stream is opened again (the daemon pings
every 15 s by default, so a healthy stream never hits this)."""


class CliError(Exception):
    """Printed as one line (`station-wf: ...`), exit code 1."""


def api_base(args: argparse.Namespace) -> str:
    if getattr(args, "url", None):
        return args.url.rstrip("/")
    return "http://" + settings_from_env().http_addr


def _headers(args: argparse.Namespace) -> dict[str, str]:
    out = {"Accept": "application/json"}
    token = getattr(args, "token", None) or os.environ.get("STATION_API_TOKEN")
    if token:
        out["Authorization"] = f"Bearer {token}"
    return out


def error_line(resp: httpx.Response) -> str:
    """The API's error document as one line: `STATUS code: message {details}`."""
    try:
        err = resp.json()["error"]
        detail = f" {json.dumps(err['details'])}" if err.get("details") else ""
        return f"{resp.status_code} {err['code']}: {err['message']}{detail}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {resp.status_code} from {resp.request.url}"


def api_call(args: argparse.Namespace, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
    """One request; the decoded JSON answer, or `CliError` with the API's code and message."""
    query = {k: v for k, v in (params or {}).items() if v not in (None, "")}
    try:
        resp = httpx.request(method, api_base(args) + path, params=query, headers=_headers(args),
                             json=body, timeout=30)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the daemon at {api_base(args)}: {exc}") from None
    if resp.status_code >= 400:
        raise CliError(error_line(resp))
    return resp.json() if resp.content else None


@dataclass(frozen=True)
class Event:
    """One SSE event of a run's stream (`data` is the event document: runId, seq, type, stepId, payload, time)."""

    id: int
    type: str
    data: dict[str, Any]


class StreamTimeout(Exception):
    """The deadline passed while the stream was still open: the run has not ended."""


def _parse(lines: Iterator[str]) -> Iterator[Event]:
    ident, kind, data = None, None, []
    for line in lines:
        if line == "":
            if data:
                doc = json.loads("\n".join(data))
                yield Event(int(ident) if ident else doc.get("seq", 0), kind or doc.get("type", ""), doc)
            ident, kind, data = None, None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "id":
            ident = value
        elif field == "event":
            kind = value
        elif field == "data":
            data.append(value)


def follow_run(args: argparse.Namespace, run_id: str, after: int = 0, deadline: float | None = None) -> Iterator[Event]:
    """The run's events after seq `after`, live, until its terminal event (the stream ends there).

    Raises `StreamTimeout` at `deadline` (a `time.monotonic()` value) and `CliError` when the run is
    unknown or the daemon stays unreachable."""
    last = after
    failures = 0
    url = f"{api_base(args)}/api/v1/workflow-runs/{run_id}/stream"
    for _ in range(1 << 30):  # reconnects are bounded by `failures` and by the deadline
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise StreamTimeout()
        read = MAX_READ_S if left is None else max(0.05, min(left, MAX_READ_S))
        headers = {**_headers(args), "Accept": "text/event-stream", "Last-Event-ID": str(last)}
        try:
            with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(10.0, read=read)) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise CliError(error_line(resp))
                for event in _parse(resp.iter_lines()):
                    if event.id <= last:
                        continue
                    last, failures = event.id, 0
                    yield event
                    if event.type in TERMINAL_EVENTS:
                        return
            # The stream ended without a terminal event: the run had ended before (nothing to replay)
            # or the daemon cut us off; a run that ended returns its status on the next look.
            run = api_call(args, "GET", f"/api/v1/workflow-runs/{run_id}")
            if run["status"] in TERMINAL:
                return
        except httpx.ReadTimeout:
            continue  # silence: check the deadline, open again from `last`
        except httpx.HTTPError as exc:
            failures += 1
            if failures > MAX_RECONNECTS:
                raise CliError(f"lost the stream of run {run_id} at {api_base(args)}: {exc}") from None
            time.sleep(min(2.0, 0.1 * 2 ** failures))
    raise CliError("stream reconnect bound reached")  # pragma: no cover - 2**30 reconnects


TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
"""The run statuses the API reports for an ended run. Written out: the client commands speak only HTTP
and must start fast, so they import nothing of the engine (importing its vocabulary costs ~0.5 s)."""
TERMINAL_EVENTS = frozenset(f"run.{s.lower()}" for s in TERMINAL)
