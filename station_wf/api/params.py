"""Query parameters and headers that carry numbers: bounded, so SQLite never sees an int it cannot bind
(an OverflowError was a 500, or a dropped SSE connection) and a negative or absurd value is a clear 400."""

from __future__ import annotations

from starlette.requests import Request

from station_wf.errors import invalid

INT64_MAX = (1 << 63) - 1


def bounded_int(name: str, raw: str, low: int = 0, high: int = INT64_MAX) -> int:
    text = raw.strip()
    if len(text) > 20 or not text.isascii() or not text.lstrip("-").isdigit():  # '²'.isdigit() is True
        raise invalid(f"{name} must be an integer between {low} and {high}", {name: raw[:40]})
    value = int(text)
    if not low <= value <= high:
        raise invalid(f"{name} must be an integer between {low} and {high}", {name: raw[:40]})
    return value


def int_param(request: Request, name: str, default: int, low: int = 0, high: int = INT64_MAX) -> int:
    """`?name=` as an int in [low, high]; the default when absent or empty. (`limit` ranges are checked by
    the services, which know their own maximum.)"""
    value = request.query_params.get(name)
    if value is None or value == "":
        return default
    return bounded_int(name, value, -INT64_MAX if name == "limit" else low, high)


def last_event_id(request: Request) -> int:
    """`Last-Event-ID` (header) or `?lastEventId=`: a non-negative event id."""
    raw = request.headers.get("last-event-id") or request.query_params.get("lastEventId") or "0"
    return bounded_int("Last-Event-ID", raw)
