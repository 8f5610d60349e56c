"""The NATS wire form, in one place and with no I/O: subjects, message ids, headers, the task envelope
and the event envelope.

Pure on purpose (the sans-IO idea of nats.py's `protocol/`): the store writes outbox rows with
`encode_task`, the reconciler re-publishes with it, the worker reads tasks with `decode_task`, and the
event relay publishes with `encode_event`, so a change of the wire form is one edit here, tested
without a server (`tests/test_protocol.py`). It imports nothing of the project but the JSON text
helper (`store/jsontext.py`, itself pure).

The relays publish precomputed header blocks (`header_block`): the NATS header section is built once
per message from its message id and stored headers, not by nats-py from a dict per publish.

Message ids are what JetStream de-duplicates on (`Nats-Msg-Id`): a task's id is derived from its
identity (`step:<idempotency key>`, `run:<run id>:start`), and a deliberate re-dispatch (resume, a
copy the broker forgot) appends `:<redispatch>` so the duplicate window does not swallow it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import msgspec

from station_wf.store.jsontext import dumps_bytes, loads

TASK_PREFIX = "wf.task."
EVENT_PREFIX = "wf.event."
TASK_SUBJECT_FILTER = TASK_PREFIX + ">"
EVENT_SUBJECT_FILTER = EVENT_PREFIX + ">"
TASK_SUBJECTS = [TASK_SUBJECT_FILTER]
EVENT_SUBJECTS = [EVENT_SUBJECT_FILTER]
_STEP_TASK = TASK_PREFIX + "step."
_RUN_TASK = TASK_PREFIX + "run."

MSG_ID_HEADER = "Nats-Msg-Id"
CONTROL_SUFFIX = "control"

# -- deployments: several on one NATS, each with its own streams, subjects and consumer -------------
DEFAULT_DEPLOYMENT = "default"
DEPLOYMENT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
# `wf.<name>.` must not fall inside the default deployment's `wf.task.>` / `wf.event.>` (JetStream
# refuses streams with overlapping subjects, and the default stream would capture the other's tasks).
RESERVED_DEPLOYMENTS = frozenset({"task", "event"})


@dataclass(frozen=True)
class Namespace:
    """Where one deployment lives on NATS. The outbox, the reconciler and `decode_task` speak the
    canonical subjects (`wf.task....`); the bus maps them onto the deployment's (`wf.<name>.task....`)
    at the wire, so the store and the core never know the deployment.

    `default` keeps the names of every release before deployments existed (`WORKFLOW_TASKS`,
    `wf.task.>`, `station-wf-worker`): an upgraded daemon finds the tasks it queued, and external
    subscribers to `wf.event.>` keep working."""

    deployment: str = DEFAULT_DEPLOYMENT
    # Derived once (the relays and the worker map every message): the default deployment maps nothing.
    is_default: bool = field(init=False, repr=False, compare=False)
    prefix: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.deployment, str) or not DEPLOYMENT_NAME.match(self.deployment):
            raise ValueError(f"STATION_DEPLOYMENT must be 1-32 letters, digits, '_' or '-', got {self.deployment!r}")
        if self.deployment in RESERVED_DEPLOYMENTS:
            raise ValueError(f"STATION_DEPLOYMENT may not be {self.deployment!r} (it would overlap the default "
                             f"deployment's wf.{self.deployment}.> subjects)")
        default = self.deployment == DEFAULT_DEPLOYMENT
        object.__setattr__(self, "is_default", default)
        object.__setattr__(self, "prefix", "wf." if default else f"wf.{self.deployment}.")

    def _named(self, base: str, sep: str) -> str:
        return base if self.is_default else f"{base}{sep}{self.deployment}"

    @property
    def tasks_stream(self) -> str:
        return self._named("WORKFLOW_TASKS", "_")

    @property
    def events_stream(self) -> str:
        return self._named("WORKFLOW_EVENTS", "_")

    @property
    def consumer(self) -> str:
        return self._named("station-wf-worker", "-")

    @property
    def control_subject(self) -> str:
        """Core NATS (not a stream): every replica of the deployment listens for cancels here."""
        return self.prefix + CONTROL_SUFFIX

    def wire(self, subject: str) -> str:
        """A canonical `wf.` subject as this deployment publishes it."""
        return subject if self.is_default else self.prefix + subject[3:]

    def local(self, subject: str) -> str:
        """The canonical subject of one received on this deployment's (anything else is left as is,
        and `decode_task` refuses it)."""
        if self.is_default or not subject.startswith(self.prefix):
            return subject
        return "wf." + subject[len(self.prefix):]
IDEMPOTENCY_HEADER = "idempotency-key"
TRACEPARENT_HEADER = "traceparent"

TaskKind = Literal["run", "step"]


class MalformedTask(ValueError):
    """A message on a task subject that no version of this engine wrote: it can never succeed."""


@dataclass(frozen=True)
class Task:
    """One unit of work on the task stream: start a run, or handle one attempt of one step."""

    kind: TaskKind
    run_id: str
    step_id: str = ""
    attempt: int = 0
    key: str | None = None          # the step attempt's idempotency key (step tasks)
    traceparent: str | None = None
    redispatch: str | None = None   # a fresh message id for a deliberate second publish

    @property
    def work_key(self) -> tuple[str, str, int]:
        """What the worker and the reconciler call one piece of live work."""
        return self.run_id, self.step_id, self.attempt

    def again(self, redispatch: str) -> Task:
        """The same task under a message id the broker has not seen."""
        return replace(self, redispatch=redispatch if self.redispatch is None else f"{self.redispatch}:{redispatch}")


@dataclass(frozen=True)
class Envelope:
    """What goes into the outbox and onto the wire for one message."""

    subject: str
    msg_id: str
    payload: dict[str, Any]
    headers: dict[str, str]

    @property
    def body(self) -> bytes:
        return dumps_bytes(self.payload)


def step_task(run_id: str, step_id: str, attempt: int, key: str, traceparent: str | None = None,
              redispatch: str | None = None) -> Task:
    return Task("step", run_id, step_id, attempt, key, traceparent, redispatch)


def run_task(run_id: str, traceparent: str | None = None, redispatch: str | None = None) -> Task:
    return Task("run", run_id, traceparent=traceparent, redispatch=redispatch)


def task_subject(task: Task) -> str:
    if task.kind == "step":
        return f"{_STEP_TASK}{task.run_id}.{task.step_id}"
    return f"{_RUN_TASK}{task.run_id}"


def task_msg_id(task: Task) -> str:
    base = f"step:{task.key}" if task.kind == "step" else f"run:{task.run_id}:start"
    return base if task.redispatch is None else f"{base}:{task.redispatch}"


def encode_task(task: Task) -> Envelope:
    """The task as subject, message id, JSON payload and headers (idempotency key, trace context)."""
    headers: dict[str, str] = {}
    if task.kind == "step":
        if task.key is None:
            raise ValueError("a step task needs its idempotency key")
        headers[IDEMPOTENCY_HEADER] = task.key
        payload: dict[str, Any] = {"runId": task.run_id, "stepId": task.step_id, "attempt": task.attempt}
    else:
        payload = {"runId": task.run_id}
    if task.traceparent:
        headers[TRACEPARENT_HEADER] = task.traceparent
    return Envelope(task_subject(task), task_msg_id(task), payload, headers)


def decode_task(subject: str, data: bytes | str, headers: Mapping[str, str] | None = None) -> Task:
    """The task a message carries; `MalformedTask` for anything else (the worker terminates those)."""
    try:
        body = loads(data)
        if not isinstance(body, dict):
            raise TypeError(f"payload is {type(body).__name__}, not an object")
        hdrs = headers or {}
        traceparent = hdrs.get(TRACEPARENT_HEADER) or None
        if subject.startswith(_STEP_TASK):
            return Task("step", str(body["runId"]), str(body["stepId"]), int(body["attempt"]),
                        hdrs.get(IDEMPOTENCY_HEADER), traceparent)
        if subject.startswith(_RUN_TASK):
            return Task("run", str(body["runId"]), traceparent=traceparent)
    except MalformedTask:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise MalformedTask(f"{type(exc).__name__}: {exc}") from exc
    raise MalformedTask(f"unknown task subject {subject}")


# -- events ---------------------------------------------------------------------------------------
def run_event_subject(run_id: str) -> str:
    return f"{EVENT_PREFIX}run.{run_id}"


def step_event_subject(run_id: str, step_id: str) -> str:
    return f"{EVENT_PREFIX}step.{run_id}.{step_id}"


def event_subject(run_id: str, step_id: str | None) -> str:
    return step_event_subject(run_id, step_id) if step_id else run_event_subject(run_id)


def event_msg_id(run_id: str, seq: int) -> str:
    return f"evt:{run_id}:{seq}"


def event_body(row: Mapping[str, Any]) -> dict[str, Any]:
    """The one event shape on the wire (`row` is an event-log row; `payload` is its JSON text)."""
    return {"runId": row["run_id"], "seq": row["seq"], "type": row["type"], "stepId": row["step_id"],
            "payload": loads(row["payload"]), "actor": row["actor"], "time": row["created_at"]}


def _event_head(row: Mapping[str, Any]) -> str:
    return (f'"runId":{json.dumps(row["run_id"])},"seq":{row["seq"]},"type":{json.dumps(row["type"])},'
            f'"stepId":{json.dumps(row["step_id"])}')


def _event_tail(row: Mapping[str, Any]) -> str:
    return f'"actor":{json.dumps(row["actor"])},"time":{json.dumps(row["created_at"])}'


_encode = msgspec.json.Encoder().encode


def encode_event(row: Mapping[str, Any]) -> tuple[str, bytes, str]:
    """(subject, body, message id) of an event-log row. The payload is already JSON text in SQLite: it is
    spliced in rather than parsed and re-encoded (the relay's hot path, one C call); the result equals
    `event_body`."""
    try:
        body = _encode({"runId": row["run_id"], "seq": row["seq"], "type": row["type"], "stepId": row["step_id"],
                        "payload": msgspec.Raw(row["payload"]), "actor": row["actor"], "time": row["created_at"]})
    except (TypeError, ValueError):  # not what SQLite hands back (a str subclass, a lone surrogate)
        body = f'{{{_event_head(row)},"payload":{row["payload"]},{_event_tail(row)}}}'.encode()
    return event_subject(row["run_id"], row["step_id"]), body, event_msg_id(row["run_id"], row["seq"])


def encode_event_stub(row: Mapping[str, Any], size: int) -> tuple[str, bytes, str]:
    """The stand-in for an event over the server's max_payload: `truncated: true` and its size."""
    body = f'{{{_event_head(row)},"truncated":true,"bytes":{size},{_event_tail(row)}}}'
    return event_subject(row["run_id"], row["step_id"]), body.encode(), event_msg_id(row["run_id"], row["seq"])


# -- control messages (core NATS, `Namespace.control_subject`) ------------------------------------
CONTROL_OPS = frozenset({"cancel"})


def encode_control(op: str, run_id: str) -> bytes:
    """`{"op": "cancel", "runId": ...}`: sent after the commit, a hint to interrupt in-flight work."""
    return dumps_bytes({"op": op, "runId": run_id})


def decode_control(data: bytes) -> tuple[str, str] | None:
    """(op, run id) of a control message, or None for anything this engine does not send."""
    try:
        body = loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    op, run_id = body.get("op"), body.get("runId")
    if op not in CONTROL_OPS or not isinstance(run_id, str) or not run_id or len(run_id) > 200:
        return None
    return op, run_id


# -- the NATS header section ----------------------------------------------------------------------
_HEADER_VALUE_BREAKS = str.maketrans({"\r": " ", "\n": " "})


def header_block(msg_id: str, headers: Mapping[str, str] | None = None) -> bytes:
    """The header section of an HPUB (`NATS/1.0`, `Nats-Msg-Id` first, then `headers`), built once per
    message. Values are stripped and line breaks become spaces, as nats-py does; keys are ours (constants)."""
    text = f"NATS/1.0\r\n{MSG_ID_HEADER}: {_header_value(msg_id)}\r\n"
    if headers:
        text += "".join(f"{key}: {_header_value(str(value))}\r\n" for key, value in headers.items())
    return (text + "\r\n").encode()


def _header_value(value: str) -> str:
    if "\r" in value or "\n" in value:
        value = value.translate(_HEADER_VALUE_BREAKS)
    return value.strip()
