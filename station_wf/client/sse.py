"""Server-sent events for both clients, with no I/O: a line parser, the event type, and the reconnect
policy (`Follow`), so `Client` and `AsyncClient` follow a stream the same way.

How a stream is followed: connect with `Last-Event-ID` = the last id seen; each event moves it on. A
run's stream ends after the run's terminal event (or at once, with no event, when the run has ended
and nothing is left to replay). A connection that drops, times out or is closed early by the daemon
(it cuts off a subscriber that falls behind) is opened again from the last id: no gap, no duplicate.
Failures in a row are bounded (`max_reconnects`), with a growing pause between tries; any event
received resets the count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from station_wf.client.errors import ApiError
from station_wf.client.types import TERMINAL_STATUSES

TERMINAL_EVENTS = frozenset(f"run.{s.lower()}" for s in TERMINAL_STATUSES)


@dataclass(frozen=True)
class StreamEvent:
    """One event of a stream: `id` is the run's seq on a run stream, the global event id on the global one;
    `type` is the event's type (`step.started`, `run.completed`, ...); `data` its JSON document
    (`runId`, `seq`, `type`, `stepId`, `payload`, `actor`, `time`)."""

    id: int
    type: str
    data: dict[str, Any]

    @property
    def run_id(self) -> str | None:
        return self.data.get("runId")

    @property
    def seq(self) -> int | None:
        return self.data.get("seq")

    @property
    def step_id(self) -> str | None:
        return self.data.get("stepId")

    @property
    def payload(self) -> Any:
        return self.data.get("payload")

    @property
    def terminal(self) -> bool:
        """The run's last event (its stream ends after it)."""
        return self.type in TERMINAL_EVENTS


class LineParser:
    """Feed the stream's lines; `feed` returns a finished event at each blank line (comments, such as the
    daemon's `: ping`, and `retry:` are skipped)."""

    def __init__(self) -> None:
        self._id: str | None = None
        self._type = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> StreamEvent | None:
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            self._id = value
        elif name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        return None

    def _dispatch(self) -> StreamEvent | None:
        ident, etype, data = self._id, self._type, self._data
        self._id, self._type, self._data = None, "message", []
        if not data:
            return None
        text = "\n".join(data)
        try:
            body = json.loads(text)
        except ValueError:
            body = {"text": text}
        if not isinstance(body, dict):
            body = {"value": body}
        try:
            number = int(ident) if ident is not None else 0
        except ValueError:
            number = 0
        return StreamEvent(number, etype, body)


@dataclass
class Follow:
    """The state of one followed stream across its connections (see the module doc)."""

    run_stream: bool
    last_id: int = 0
    max_reconnects: int = 8
    backoff: float = 0.25
    max_backoff: float = 5.0
    failures: int = 0
    done: bool = False
    _seen_this_connection: int = field(default=0, repr=False)

    def headers(self) -> dict[str, str]:
        self._seen_this_connection = 0
        out = {"Accept": "text/event-stream"}
        if self.last_id > 0:
            out["Last-Event-ID"] = str(self.last_id)
        return out

    def seen(self, event: StreamEvent) -> bool:
        """Record an event; False when it is a copy already seen (never handed on)."""
        if event.id and event.id <= self.last_id:
            return False
        self.last_id = event.id or self.last_id
        self.failures = 0
        self._seen_this_connection += 1
        if self.run_stream and event.terminal:
            self.done = True
        return True

    def closed(self) -> None:
        """The daemon ended the response. A run stream that gave nothing has nothing more to give."""
        if self.run_stream and self._seen_this_connection == 0:
            self.done = True

    def failed(self, error: ApiError) -> float:
        """A connection failed: the pause before the next try, or raise when retrying is pointless."""
        if not error.retryable:
            raise error
        self.failures += 1
        if self.failures > self.max_reconnects:
            raise error
        return min(self.max_backoff, self.backoff * (2 ** (self.failures - 1)))
