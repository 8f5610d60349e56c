"""The API's routes as the fuzz sees them: bodies with the fields to fuzz, id routes, query parameters."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tests.fuzz.values import dump, odd_values

Path_ = tuple[Any, ...]
_DROP = object()
_counter = itertools.count(1)


def with_value(body: Any, path: Path_, value: Any) -> Any:
    """A copy of `body` with `value` at `path` (or the key removed when `value` is _DROP)."""
    out = copy.deepcopy(body)
    node = out
    for key in path[:-1]:
        node = node[key]
    if value is _DROP:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


def definition(data: Any = None) -> dict[str, Any]:
    """A small valid definition with a fresh id, so accepted ones never collide."""
    return {"id": f"fzb-{next(_counter)}", "start": "s",
            "states": [{"name": "s", "type": "inject", "data": {"k": 1} if data is None else data, "end": True}]}


@dataclass
class BodyRoute:
    method: str
    path: str           # with the fixture ids filled in at call time (`{gate}`, `{approval}`, `{plain}`)
    positions: list[Path_]
    stores_nothing: bool = False

    def base(self) -> dict[str, Any]:
        if self.path == "/api/v1/workflows" or self.path.endswith("/validate"):
            return definition()
        if self.path.startswith("/api/v1/workflows/"):
            return {k: v for k, v in definition({"v": 1}).items() if k != "id"}
        if self.path == "/api/v1/workflow-runs":
            return {"workflowId": "fz-sink", "input": {"a": 1}}
        if self.path.endswith("/signals"):
            return {"name": "ping", "payload": {"v": 1}}
        if self.path.endswith("/approve"):
            return {"comment": "ok"}
        if self.path.endswith("/reject"):
            return {"reason": "no"}
        return {"reason": "stop"}

    @property
    def route(self) -> str:
        return f"{self.method} {self.path}"

    def cases(self) -> Iterator[tuple[str, str]]:
        """(case label, JSON text): every odd value in every position, each field missing, extra fields,
        and the whole body replaced by each odd value."""
        values = odd_values()
        for pos in self.positions:
            for label, value in values:
                if label in BIG_VALUES and pos != self.positions[0]:
                    continue  # big values once per route (in its first field) keep the suite fast
                yield f"{'.'.join(map(str, pos))} = {label}", dump(with_value(self.base(), pos, value))
        for pos in self.positions:
            try:
                yield f"missing {'.'.join(map(str, pos))}", dump(with_value(self.base(), pos, _DROP))
            except (KeyError, IndexError, TypeError):
                continue
        for key in ("__proto__", "constructor", "x" * 10_000, "", "\u202e", "extra"):
            yield f"extra field {key[:20]!r}", dump({**self.base(), key: {"polluted": True}})
        for label, value in values:
            yield f"whole body = {label}", dump(value)


BIG_VALUES = ("10k ints", "100 KB string", "10 KB key")

BODY_ROUTES = [
    BodyRoute("POST", "/api/v1/workflows", [
        ("id",), ("start",), ("states", 0, "type"), ("states", 0, "data", "k"), ("inputSchema",), ("timeoutSeconds",)]),
    BodyRoute("PUT", "/api/v1/workflows/fz-put", [("states", 0, "name"), ("states", 0, "data", "v"), ("id",)]),
    BodyRoute("POST", "/api/v1/workflows/validate", [
        ("id",), ("states", 0, "data", "k")], stores_nothing=True),
    BodyRoute("POST", "/api/v1/workflow-runs", [("workflowId",), ("version",), ("input",), ("input", "a")]),
    BodyRoute("POST", "/api/v1/workflow-runs/{gate}/signals", [("name",), ("payload",), ("payload", "v")]),
    BodyRoute("POST", "/api/v1/workflow-runs/{gate}/approvals/{approval}/approve", [("comment",)]),
    BodyRoute("POST", "/api/v1/workflow-runs/{gate}/approvals/{approval}/reject", [("reason",), ("comment",)]),
    BodyRoute("POST", "/api/v1/workflow-runs/{plain}/cancel", [("reason",)]),
]

# (method, path with {id} slots, the body to send, which slots to fuzz)
ID_ROUTES: list[tuple[str, str, str | None]] = [
    ("GET", "/api/v1/workflows/{wf}", None),
    ("PUT", "/api/v1/workflows/{wf}", dump({"start": "s", "states": [{"name": "s", "type": "inject", "data": {}, "end": True}]})),
    ("DELETE", "/api/v1/workflows/{wf}", None),
    ("GET", "/api/v1/workflows/{wf}/versions", None),
    ("GET", "/api/v1/workflow-runs/{run}", None),
    ("GET", "/api/v1/workflow-runs/{run}/events", None),
    ("GET", "/api/v1/workflow-runs/{run}/stream", None),
    ("POST", "/api/v1/workflow-runs/{run}/pause", None),
    ("POST", "/api/v1/workflow-runs/{run}/resume", None),
    ("POST", "/api/v1/workflow-runs/{run}/cancel", "{}"),
    ("POST", "/api/v1/workflow-runs/{run}/signals", dump({"name": "ping", "payload": 1})),
    ("GET", "/api/v1/workflow-runs/{run}/approvals", None),
    ("POST", "/api/v1/workflow-runs/{run}/approvals/{approval}/approve", "{}"),
    ("POST", "/api/v1/workflow-runs/{run}/approvals/{approval}/reject", "{}"),
    ("POST", "/api/v1/workflow-schedules/{schedule}/enable", None),
    ("POST", "/api/v1/workflow-schedules/{schedule}/disable", None),
    ("GET", "/api/v1/agents/{agent}", None),
]

# (method, path, parameter): every query parameter the API reads.
QUERY_PARAMS: list[tuple[str, str, str]] = [
    ("GET", "/api/v1/workflows", "status"), ("GET", "/api/v1/workflows", "q"),
    ("GET", "/api/v1/workflows/fz-put", "version"),
    ("GET", "/api/v1/workflow-runs", "limit"), ("GET", "/api/v1/workflow-runs", "cursor"),
    ("GET", "/api/v1/workflow-runs", "status"), ("GET", "/api/v1/workflow-runs", "workflowId"),
    ("HEAD", "/api/v1/workflow-runs", "limit"), ("HEAD", "/api/v1/workflow-runs", "cursor"),
    ("GET", "/api/v1/workflow-runs/{plain}/events", "afterSeq"), ("GET", "/api/v1/workflow-runs/{plain}/events", "limit"),
    ("GET", "/api/v1/workflow-approvals", "status"), ("GET", "/api/v1/workflow-approvals", "workflowId"),
    ("GET", "/api/v1/workflow-schedules", "workflowId"),
    ("GET", "/api/v1/agents", "environment"), ("GET", "/api/v1/agents/echo", "environment"),
]
