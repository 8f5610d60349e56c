"""The CLI's way to the daemon: `station_wf.client` (one HTTP layer for the CLI and for Python callers),
with its errors turned into one line each.

An error answer becomes `404 not_found: run 'x' not found {"id": "x"}` (the API's status, code,
message and details), a daemon that cannot be reached `cannot reach the daemon at URL: why`. A run's
stream is the client's: it resumes from the last event id after a drop (no gap, no duplicate) and
gives up after a bounded number of failures in a row.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from functools import cache
from typing import Any

from station_wf.client import ApiError, Call, Client, StreamEvent
from station_wf.client.types import TERMINAL_STATUSES
from station_wf.config import settings_from_env

Event = StreamEvent
TERMINAL = tuple(sorted(TERMINAL_STATUSES))
"""The run statuses the API reports for an ended run (the client's list: no engine import, a fast start)."""


class CliError(Exception):
    """Printed as one line (`station-wf: ...`), exit code 1."""


class StreamTimeout(Exception):
    """The deadline passed while the stream was still open: the run has not ended."""


def api_base(args: argparse.Namespace) -> str:
    if getattr(args, "url", None):
        return args.url.rstrip("/")
    return "http://" + settings_from_env().http_addr


@cache
def _client(base: str, token: str | None) -> Client:
    return Client(base, token=token)


def client(args: argparse.Namespace) -> Client:
    """One client per daemon and token for the whole command (its connections are reused)."""
    return _client(api_base(args), getattr(args, "token", None) or None)


def one_line(exc: ApiError) -> CliError:
    if exc.status == 0:  # unreachable, or no answer in time: the client's message says where
        return CliError(exc.message)
    detail = f" {json.dumps(exc.details)}" if exc.details else ""
    return CliError(f"{exc.status} {exc.code}: {exc.message}{detail}")


def api_call(args: argparse.Namespace, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
    """One request; the decoded JSON answer, or `CliError` with the API's code and message."""
    query = {k: v for k, v in (params or {}).items() if v not in (None, "")}
    try:
        return client(args).call(Call(method, path, params=query, json=body))
    except ApiError as exc:
        raise one_line(exc) from None


def follow_run(args: argparse.Namespace, run_id: str, after: int = 0, deadline: float | None = None) -> Iterator[StreamEvent]:
    """The run's events after seq `after`, live, until its terminal event (or the run had already ended).

    Raises `StreamTimeout` at `deadline` (a `time.monotonic()` value) and `CliError` when the run is
    unknown or the daemon stays unreachable."""
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    ended = False
    try:
        for event in client(args).stream_run(run_id, last_event_id=after, timeout=timeout):
            ended = event.terminal
            yield event
    except ApiError as exc:
        raise one_line(exc) from None
    if not ended and deadline is not None and time.monotonic() >= deadline:
        raise StreamTimeout()
